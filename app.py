"""CoLLM demo web app.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME to change)

Configuration by environment: the table in collm_demo/config.py (``SETTINGS``, printed in the
README), read once by ``AppConfig.from_env``: COLLM_CHECKPOINTS, COLLM_LLM, COLLM_DATA, COLLM_CF,
COLLM_RESULTS, COLLM_LAYOUT, COLLM_BF16, COLLM_THREADS, COLLM_MAX_QUEUE, COLLM_CACHE, COLLM_OFFLINE.

``from app import demo`` gives the Blocks without launching it. The model loads once per
process, in the background, while the page is being built.
"""

from __future__ import annotations

from collm_demo.ui import build_demo, launch_kwargs

demo = build_demo()


def main() -> None:
    demo.launch(**launch_kwargs())  # gradio reads GRADIO_SERVER_PORT / GRADIO_SERVER_NAME itself


if __name__ == "__main__":
    main()
