"""CoLLM demo web app.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME to change)

Configuration by environment (see collm_demo/ui/state.py): COLLM_CHECKPOINTS (default
checkpoints/), COLLM_LLM, COLLM_DATA, COLLM_RESULTS (default assets/results.json),
COLLM_LAYOUT (default assets/embedding_map.json), COLLM_BF16, COLLM_THREADS.

``from app import demo`` gives the Blocks without launching it. The model loads once per
process, in the background, while the page is being built.
"""

from __future__ import annotations

import os

from collm_demo.ui import build_demo, launch_kwargs

demo = build_demo()


def main() -> None:
    demo.launch(server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), **launch_kwargs())


if __name__ == "__main__":
    main()
