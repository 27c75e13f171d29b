"""Generated blocks in Markdown files: the text between ``<!-- name:start -->`` and ``<!-- name:end -->``.

The results table (``evaluate``), the settings table (``config.settings_table``) and the
performance table (``benchmarks/``) are written by code, never copied by hand.
"""

from __future__ import annotations

import re
from pathlib import Path


def block_pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {re.escape(name)}:start -->\n(.*?)\n?<!-- {re.escape(name)}:end -->", re.S)


def read_block(path: str | Path, name: str) -> str | None:
    """The current body of block ``name`` in ``path`` (None when the file or the block is missing)."""
    path = Path(path)
    if not path.exists():
        return None
    found = block_pattern(name).search(path.read_text())
    return found.group(1) if found else None


def replace_block(path: str | Path, name: str, body: str) -> bool:
    """Put ``body`` between the markers of block ``name`` in ``path``; False if there is no such block."""
    path = Path(path)
    if not path.exists():
        return False
    text = path.read_text()
    block = f"<!-- {name}:start -->\n{body}\n<!-- {name}:end -->"
    new, count = block_pattern(name).subn(lambda _: block, text)
    if count and new != text:
        path.write_text(new)
    return bool(count)
