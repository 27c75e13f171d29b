"""The models behind the app: one pipeline per CF backend, all sharing one LLM.

The base pipeline (LLM + LoRA + the configured CF backend) loads once, in a background
thread (``start_loading``), so the page can be built from the dataset alone while the LLM
loads; ``pipeline()`` waits for it. Checkpoints that are refused (any :class:`CoLLMError`)
do not stop the app: it runs the plain LLM (``pipeline.zero_shot``) and says why in
``notice``. Other backends' pipelines are made on first use (``with_backend``: same LLM,
their own CF file and projector) under this hub's lock. Scoring needs no lock here: every
model call takes the engine's own (``CoLLM.lock``, shared by the pipelines of one LLM).
"""

from __future__ import annotations

import atexit
import threading

from ..cf import backend
from ..checkpoints import TRAIN_HINT, available_backends, read_manifest
from ..config import AppConfig
from ..data import Dataset
from ..device import Runtime
from ..errors import CoLLMError, InputError
from ..llm import load_llm
from ..pipeline import Pipeline, load_pipeline, with_backend, zero_shot


class ModelHub:
    def __init__(self, config: AppConfig, dataset: Dataset, pipeline: Pipeline | None = None):
        self.config = config
        self.dataset = dataset
        self._base = pipeline
        self._error: BaseException | None = None
        self._loader: threading.Thread | None = None
        self._variants: dict[str, Pipeline] = {}  # other CF backends' pipelines, sharing the one LLM
        self._lock = threading.Lock()  # guards the loader start and the variants
        self._backends: list[str] | None = None

    # ------------------------------------------------------------------ loading
    def start_loading(self) -> None:
        with self._lock:
            if self._base is not None or self._loader is not None:
                return
            self._loader = threading.Thread(target=self._load, name="collm-pipeline-loader", daemon=True)
            self._loader.start()
        # Never let the interpreter finalise while the loader is inside torch (that aborts the process).
        atexit.register(self._loader.join, 120)

    def _load(self) -> None:
        cfg = self.config
        try:
            runtime = Runtime.choose(cfg.device, cfg.precision)
            try:
                self._base = load_pipeline(cfg.checkpoint_dir, cfg.llm, cfg.data, cf_name=cfg.cf_name,
                                           dataset=self.dataset, runtime=runtime)
            except CoLLMError as err:
                # Refuse the checkpoints, not the app: run the plain LLM and say why.
                note = (f"The checkpoints in {cfg.checkpoint_dir} were refused: {err}. Running the plain LLM "
                        f"(zero-shot) instead; {TRAIN_HINT}.")
                self._base = zero_shot(load_llm(cfg.llm), self.dataset, notice=note, runtime=runtime)
        except BaseException as err:  # noqa: BLE001 - reported to the user by pipeline()
            self._error = err

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, cf: str | None = None) -> Pipeline:
        """The loaded pipeline (waits for the loader thread on first use); with ``cf``, the one
        whose CF tokens come from that backend (same LLM and LoRA, its own CF file and projector)."""
        if self._base is None:
            self.start_loading()
            self._loader.join()
        if self._base is None:
            raise RuntimeError(f"the model could not be loaded: {self._error}")
        if not cf or cf == self._base.cf_name:
            return self._base
        with self._lock:
            if cf not in self._variants:
                if cf not in self.backends():
                    raise InputError(f"unknown CF model {cf!r}; this app has: {', '.join(self.backends())}")
                self._variants[cf] = with_backend(self._base, self.config.checkpoint_dir, cf)
            return self._variants[cf]

    def backends(self) -> list[str]:
        """CF backends the app can switch between: the configured one first, then every other
        backend with a CF file and a projector (found once, from file names; nothing is loaded)."""
        if self._backends is None:
            first = [self.config.cf_name]
            self._backends = first + [n for n in available_backends(self.config.checkpoint_dir) if n not in first]
        return list(self._backends)

    def backend_choices(self) -> list[tuple[str, str]]:
        """(label, name) for the CF-model selector."""
        try:
            info = read_manifest(self.config.checkpoint_dir).get("cf", {})
        except CoLLMError:
            info = {}
        info = info if isinstance(info, dict) else {}
        out = []
        for name in self.backends():
            entry = info.get(name, {}) if isinstance(info.get(name), dict) else {}
            spec = backend(name)
            imported = str(entry.get("kind", "")).startswith("imported") and not spec.imported
            label = f"{name} (imported)" if imported else spec.label
            dim = entry.get("vector_dim")
            out.append((f"{label}{f' · {dim}-dim' if dim else ''}", name))
        return out

    @property
    def notice(self) -> str:
        """What is missing or was refused, and how to fix it; empty when all is loaded."""
        return self.pipeline().notice
