"""The models behind the app: one pipeline per CF backend, all sharing one LLM.

The base pipeline (LLM + LoRA + the configured CF backend) loads once, in a background
thread (``start_loading``), so the page can be built from the dataset alone while the LLM
loads; ``pipeline()`` waits for it. Checkpoints that are refused (any :class:`CoLLMError`, or
any other error while loading them) do not stop the app: it runs the plain LLM
(``pipeline.zero_shot``), says why in ``notice`` (the file and the reason) and serves nothing
from that folder: no CF backend is offered (``backends()`` is empty) and asking for one is
refused. What can be checked without loading the LLM is checked when the hub is made, before
the page is built, so the CF-model selector already offers nothing then: the manifest's shape,
every file a readable safetensors, the LLM and data it records, every backend's CF file and
projector read in full (shapes, dtype, finite values; ~1 MB each) and the LoRA adapter against
the shapes in the LLM's files (``checkpoints.check_backends`` / ``check_llm_files``). What only
the loaded LLM tells (its hidden size; its shapes when its files are not on disk yet) is checked
by the loader, and the page-load event then replaces the selector. Each refusal, and a model that
cannot be loaded at all, is also one line in the log. Other backends' pipelines are made
on first use (``with_backend``: same LLM, their own CF file and projector) under this hub's
lock. Scoring needs no lock here: every model call takes the engine's own (``CoLLM.lock``,
shared by the pipelines of one LLM).
"""

from __future__ import annotations

import atexit
import sys
import threading
import traceback

from ..cf import backend
from ..checkpoints import (
    TRAIN_HINT,
    available_backends,
    check_backends,
    check_folder,
    check_llm_files,
    check_llm_name,
    read_manifest,
)
from ..config import AppConfig
from ..data import Dataset
from ..device import Runtime
from ..errors import AssetError, CoLLMError, InputError
from ..llm import load_llm, resolve_llm_name
from ..pipeline import Pipeline, check_data, check_protocol, load_pipeline, with_backend, zero_shot

# The CF-model selector's one entry when the checkpoints were refused: "" is the default
# pipeline, i.e. the plain-LLM fallback, which holds nothing from the folder.
REFUSED_CHOICE = ("none: the checkpoints were refused (see the banner)", "")


def log(message: str) -> None:
    """One line in the app's log (stderr): what the banner or a request's error also says."""
    print(f"[collm app] {' '.join(message.split())}", file=sys.stderr, flush=True)


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
        # Why the checkpoint folder was refused (None: not refused, or not known yet). Set before
        # the fallback pipeline is published, so whoever sees that pipeline sees the refusal.
        self.refusal: str | None = None
        if pipeline is None:
            self.refusal = self._precheck()
            if self.refusal is not None:
                log(f"the checkpoints in {config.checkpoint_dir} were refused: {self.refusal}")

    def _precheck(self) -> str | None:
        """The checks that need no loaded LLM (under a second): the folder's files and
        manifest, the LLM and the data it records, every backend's CF file and projector, the
        adapter against the LLM's files. Never raises: the page is built next."""
        cfg = self.config
        try:
            check_folder(cfg.checkpoint_dir)
            manifest = read_manifest(cfg.checkpoint_dir)
            check_protocol(manifest, self.dataset)
            check_data(manifest, self.dataset)
            check_llm_name(manifest, resolve_llm_name(cfg.llm))
            check_llm_files(manifest, cfg.llm, cfg.checkpoint_dir)  # depth, LoRA shapes; hidden size: once loaded
            check_backends(cfg.checkpoint_dir, manifest)  # all of them: the page offers every one
        except CoLLMError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001 - an unforeseen bad file must not stop the page build
            traceback.print_exc(file=sys.stderr)
            return f"unexpected {type(err).__name__} while checking {cfg.checkpoint_dir}: {str(err)[:300]}"
        return None

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
            refusal = self.refusal
            if refusal is None:
                try:
                    base = load_pipeline(cfg.checkpoint_dir, cfg.llm, cfg.data, cf_name=cfg.cf_name,
                                         dataset=self.dataset, runtime=runtime, allow_other_data=False)
                    if "hidden_size" not in base.manifest.get("llm", {}):
                        # the pre-check compared each projector with its own record only: now with the LLM
                        check_backends(cfg.checkpoint_dir, base.manifest, hidden_size=base.llm.hidden_size)
                    self._base = base
                    return
                except AssetError:
                    raise  # the LLM itself cannot be loaded: no fault of the checkpoints
                except CoLLMError as err:
                    refusal = str(err)
                except Exception as err:  # noqa: BLE001 - a file no check foresaw: refuse it, keep the app
                    traceback.print_exc(file=sys.stderr)
                    refusal = f"unexpected {type(err).__name__} while loading them: {str(err)[:300]}"
                log(f"the checkpoints in {cfg.checkpoint_dir} were refused: {refusal}")  # (a pre-check's was, when found)
            # Refuse the checkpoints, not the app: run the plain LLM (from COLLM_LLM or the default,
            # loaded afresh: a failed adapter load may have changed the first one) and say why.
            self.refusal = refusal
            note = (f"The checkpoints in {cfg.checkpoint_dir} were refused: {refusal.rstrip('.')}. Running the "
                    f"plain LLM (zero-shot) instead, with nothing from that folder; {TRAIN_HINT}.")
            self._base = zero_shot(load_llm(cfg.llm), self.dataset, notice=note, runtime=runtime)
        except BaseException as err:  # noqa: BLE001 - reported to each request by pipeline(), and logged
            self._error = err
            log(f"the model could not be loaded: {type(err).__name__}: {str(err)[:600]}")

    # ------------------------------------------------------------------ pipelines
    def pipeline(self, cf: str | None = None) -> Pipeline:
        """The loaded pipeline (waits for the loader thread on first use); with ``cf``, the one
        whose CF tokens come from that backend (same LLM and LoRA, its own CF file and projector)."""
        if self._base is None:
            self.start_loading()
            self._loader.join()
        if self._base is None:  # not even the plain LLM loads (COLLM_LLM, the embedded asset): said, not a bug
            raise AssetError(f"the model could not be loaded: {type(self._error).__name__}: "
                             f"{str(self._error)[:300]}")
        if not cf or cf == self._base.cf_name:  # after a refusal: the plain LLM, nothing from the folder
            return self._base
        if self.refusal is not None:  # nothing of a refused folder is served, whichever backend is asked for
            raise InputError(f"CF model {str(cf)[:40]!r} is not served: the checkpoints in "
                             f"{self.config.checkpoint_dir} were refused ({self.refusal[:300]})")
        with self._lock:
            if cf not in self._variants:
                if cf not in self.backends():
                    raise InputError(f"unknown CF model {cf!r}; this app has: {', '.join(self.backends())}")
                self._variants[cf] = with_backend(self._base, self.config.checkpoint_dir, cf)
            return self._variants[cf]

    def backends(self) -> list[str]:
        """CF backends the app can switch between: the configured one first, then every other
        backend with a CF file and a projector (found once, from file names; nothing is loaded).
        None once the checkpoints are refused."""
        if self.refusal is not None:
            return []
        if self._backends is None:
            first = [self.config.cf_name]
            self._backends = first + [n for n in available_backends(self.config.checkpoint_dir) if n not in first]
        return list(self._backends)

    def backend_choices(self) -> list[tuple[str, str]]:
        """(label, name) for the CF-model selector; one entry that says so when the checkpoints
        are refused."""
        if self.refusal is not None:
            return [REFUSED_CHOICE]
        try:
            info = read_manifest(self.config.checkpoint_dir).get("cf", {})
        except CoLLMError:
            info = {}
        info = info if isinstance(info, dict) else {}
        out = []
        for name in self.backends():
            entry = info.get(name, {}) if isinstance(info.get(name), dict) else {}
            label = backend(name).display_name(entry.get("kind", ""))
            dim = entry.get("vector_dim")
            out.append((f"{label}{f' · {dim}-dim' if dim else ''}", name))
        return out

    @property
    def notice(self) -> str:
        """What is missing or was refused, and how to fix it; empty when all is loaded."""
        return self.pipeline().notice

