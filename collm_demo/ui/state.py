"""Shared state of the app: configuration, the one pipeline, and dataset look-ups.

Nothing here builds widgets. The pipeline (LLM + LoRA + CF model + projector) is loaded
once per process, in a background thread started by :func:`get_state`, so that the page
can be built from the dataset alone (about 1 s) while the LLM loads; every handler that
needs the model waits for it through :meth:`AppState.pipeline`.

Configuration comes from the environment (defaults in brackets):

- ``COLLM_CHECKPOINTS``: checkpoint folder: CF model, lora/, projector [``checkpoints/``]
- ``COLLM_LLM``: causal-LM id or folder [the embedded SmolLM2-135M-Instruct]
- ``COLLM_DATA``: MovieLens / CSV folder [the embedded ML-100K]
- ``COLLM_CF``: the CF backend selected when the page opens [``mf``]; the app offers every
  backend with a CF file and a projector in the checkpoint folder (``cf_<name>`` + ``projector_<name>``)
- ``COLLM_RESULTS``: evaluation results for the Warm vs cold tab [``assets/results.json``]
- ``COLLM_LAYOUT``: embedding-map layout for the Embedding space tab [``assets/embedding_map.json``;
  other backends: ``embedding_map_<name>.json`` next to it]
- ``COLLM_BF16``: ``1`` = bf16 autocast as in the evaluation (faster, coarser) [float32]
- ``COLLM_THREADS``: torch CPU threads [torch's default]

The app scores in float32 by default: with bf16 autocast the final logits are rounded to
bf16, so P(Yes) moves in visible steps (about 0.015 near 0.5) and many candidates tie,
which hides exactly the small with/without-CF differences the app is about.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import CHECKPOINT_DIR, RESULTS_PATH
from ..embedding_map import LAYOUT_PATH as LAYOUT_DEFAULT

MAX_CANDIDATES = 50  # per scoring call, in the UI and the API
BACKEND_LABELS = {"mf": "MF (matrix factorisation)", "lightgcn": "LightGCN (graph)",
                  "sasrec": "SASRec (sequential)"}


@dataclass
class AppConfig:
    checkpoint_dir: Path = CHECKPOINT_DIR
    llm: str | None = None
    data: str | None = None
    results_path: Path = RESULTS_PATH
    layout_path: Path = LAYOUT_DEFAULT
    cf_name: str = "mf"
    bf16: bool = False
    threads: int | None = None

    @classmethod
    def from_env(cls) -> "AppConfig":
        env = os.environ
        return cls(checkpoint_dir=Path(env.get("COLLM_CHECKPOINTS") or CHECKPOINT_DIR),
                   llm=env.get("COLLM_LLM") or None,
                   data=env.get("COLLM_DATA") or None,
                   results_path=Path(env.get("COLLM_RESULTS") or RESULTS_PATH),
                   layout_path=Path(env.get("COLLM_LAYOUT") or LAYOUT_DEFAULT),
                   cf_name=env.get("COLLM_CF") or "mf",
                   bf16=env.get("COLLM_BF16", "0").strip().lower() in ("1", "true", "yes"),
                   threads=int(env["COLLM_THREADS"]) if env.get("COLLM_THREADS", "").strip() else None)


@dataclass
class UserInfo:
    user: str
    n_train: int  # training interactions (what the CF model saw)
    n_pretest: int  # interactions before the test period (train + valid)
    n_test: int  # interactions in the test period (honest candidates)
    n_test_pos: int

    @property
    def warm(self) -> bool:
        return self.n_train >= 3

    def label(self) -> str:
        status = "warm" if self.warm else "cold"
        return (f"user {self.user} · {status} · {self.n_train} train interactions · "
                f"{self.n_test} test items")


class AppState:
    """Everything the handlers share. Create with :func:`get_state` (one per process)."""

    def __init__(self, config: AppConfig | None = None, pipeline=None, dataset=None):
        from ..data import load_dataset

        self.config = config or AppConfig.from_env()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.model_lock = threading.RLock()  # the LoRA switch is global state: one model call at a time
        self._pipeline = pipeline
        self._pipeline_error: BaseException | None = None
        self._fallback_note = ""
        self.dataset = pipeline.dataset if pipeline is not None else (dataset or load_dataset(self.config.data))
        self._index_dataset()
        self._loader: threading.Thread | None = None
        self._caches: dict[str, OrderedDict] = {}
        self._word_unit: np.ndarray | None = None
        self._variants: dict = {}  # other CF backends' pipelines, sharing the one LLM
        self._layouts: dict[str, dict | None] = {}
        self._backends: list[str] | None = None  # looked up once: every scoring call validates against it

    # ------------------------------------------------------------------ pipeline
    def start_loading(self) -> None:
        if self._pipeline is not None or self._loader is not None:
            return
        self._loader = threading.Thread(target=self._load, name="collm-pipeline-loader", daemon=True)
        self._loader.start()
        # Never let the interpreter finalise while the loader is inside torch (that aborts the process).
        atexit.register(self._loader.join, 120)

    def _load(self) -> None:
        from ..pipeline import CheckpointMismatch, load_pipeline

        cfg = self.config
        started = time.time()
        try:
            try:
                self._pipeline = load_pipeline(cfg.checkpoint_dir, cfg.llm, cfg.data, cf_name=cfg.cf_name,
                                               bf16=cfg.bf16, dataset=self.dataset)
            except CheckpointMismatch as err:
                # Refuse the checkpoints, not the app: run zero-shot and say why.
                empty = Path("/nonexistent-collm-checkpoints")
                self._pipeline = load_pipeline(empty, cfg.llm, cfg.data, cf_name=cfg.cf_name, bf16=cfg.bf16,
                                               dataset=self.dataset)
                self._fallback_note = (f"The checkpoints in {cfg.checkpoint_dir} were refused: {err}. "
                                       "Running the plain LLM (zero-shot) instead.")
        except BaseException as err:  # noqa: BLE001 - reported to the user by pipeline()
            self._pipeline_error = err
        self.load_seconds = round(time.time() - started, 1)

    def pipeline(self, cf: str | None = None):
        """The loaded pipeline (waits for the loader thread on first use); with ``cf``, the one
        whose CF tokens come from that backend (same LLM and LoRA, its own CF file and projector)."""
        if self._pipeline is None:
            self.start_loading()
            self._loader.join()
        if self._pipeline is None:
            raise RuntimeError(f"the model could not be loaded: {self._pipeline_error}")
        if not cf or cf == self._pipeline.cf_name:
            return self._pipeline
        with self.model_lock:
            if cf not in self._variants:
                from ..pipeline import with_backend

                if cf not in self.backends():
                    raise ValueError(f"unknown CF model {cf!r}; this app has: {', '.join(self.backends())}")
                self._variants[cf] = with_backend(self._pipeline, self.config.checkpoint_dir, cf)
            return self._variants[cf]

    def backends(self) -> list[str]:
        """CF backends the app can switch between: the configured one first, then every other
        backend with a CF file and a projector (found once, from file names; nothing is loaded)."""
        if self._backends is None:
            from ..pipeline import available_backends

            found = available_backends(self.config.checkpoint_dir)
            first = [self.config.cf_name]
            self._backends = first + [name for name in found if name not in first]
        return list(self._backends)

    def backend_choices(self) -> list[tuple[str, str]]:
        """(label, name) for the CF-model selector."""
        from ..pipeline import read_manifest

        try:
            info = read_manifest(self.config.checkpoint_dir).get("cf", {})
        except ValueError:
            info = {}
        out = []
        for name in self.backends():
            label = BACKEND_LABELS.get(name, name)
            kind = str(info.get(name, {}).get("kind", ""))
            if kind.startswith("imported"):
                label = f"{name} (imported vectors)"
            dim = info.get(name, {}).get("vector_dim")
            out.append((f"{label}{f' · {dim}-dim' if dim else ''}", name))
        return out

    @property
    def notice(self) -> str:
        pipe = self.pipeline()
        return " ".join(n for n in (self._fallback_note, pipe.notice) if n)

    # --------------------------------------------------------------- dataset indexes
    def _index_dataset(self) -> None:
        ds = self.dataset
        inter = ds.interactions
        self.test_start = int(inter.loc[inter["split"] == "test", "timestamp"].min())
        train = inter[inter["split"] == "train"]
        self.item_train = train["item"].value_counts().to_dict()
        self.user_train = train["user"].value_counts().to_dict()
        self.warm_min = ds.protocol.warm_min
        pre = inter[inter["timestamp"] < self.test_start]
        test = inter[inter["split"] == "test"]
        self._pretest = {u: g for u, g in pre.groupby("user", sort=False)}
        self._test = {u: g for u, g in test.groupby("user", sort=False)}
        self.users: dict[str, UserInfo] = {}
        for user in sorted(inter["user"].unique(), key=lambda u: (len(u), u)):
            t = self._test.get(user)
            self.users[user] = UserInfo(
                user=user, n_train=int(self.user_train.get(user, 0)),
                n_pretest=0 if user not in self._pretest else len(self._pretest[user]),
                n_test=0 if t is None else len(t), n_test_pos=0 if t is None else int(t["label"].sum()))
        items = ds.items
        self.item_ids = [str(i) for i in sorted(items.index, key=lambda i: (len(str(i)), str(i)))]
        self.item_title = {i: ds.title(i) for i in self.item_ids}

    def item_warm(self, item: str) -> bool:
        return self.item_train.get(item, 0) >= self.warm_min

    def item_label(self, item: str) -> str:
        """'Toy Story (1995) · #1' for dropdowns."""
        year = self.dataset.items.at[item, "year"] if item in self.dataset.items.index else pd.NA
        year = "" if pd.isna(year) else f" ({int(year)})"
        return f"{self.item_title.get(item, item)}{year} · #{item}"

    def item_choices(self) -> list[tuple[str, str]]:
        out = []
        for item in self.item_ids:
            n = self.item_train.get(item, 0)
            status = "warm" if n >= self.warm_min else "cold"
            out.append((f"{self.item_label(item)} · {status}, {n} train", item))
        return out

    def user_choices(self) -> list[tuple[str, str]]:
        """Users that have a history before the test period; those with test items first."""
        usable = [u for u in self.users.values() if u.n_pretest > 0]
        usable.sort(key=lambda u: (u.n_test == 0, -u.n_test, len(u.user), u.user))
        return [(u.label(), u.user) for u in usable]

    def default_user(self) -> str:
        """A good first example: a warm user whose test items (the honest candidates) include
        liked and disliked, warm and cold movies, and not too many of them."""
        def score(u: UserInfo) -> tuple:
            items = self.test_items(u.user)["item"]
            cold = sum(not self.item_warm(i) for i in items)
            return (min(cold, len(items) - cold), min(u.n_test_pos, u.n_test - u.n_test_pos), u.user)

        candidates = [u for u in self.users.values()
                      if u.warm and 10 <= u.n_test <= 20 and 0 < u.n_test_pos < u.n_test and u.n_pretest >= 10]
        if candidates:
            return max(candidates, key=score).user
        usable = [u for u in self.users.values() if u.n_pretest > 0] or list(self.users.values())
        return max(usable, key=lambda u: (u.warm, u.n_test > 0, -abs(u.n_test - 20), u.user)).user

    def real_history(self, user: str, k: int | None = None) -> pd.DataFrame:
        """The user's last <= k interactions before the test period (train + valid), oldest first."""
        k = k or self.dataset.protocol.history_len
        frame = self._pretest.get(user)
        if frame is None:
            return pd.DataFrame(columns=["item", "label", "timestamp", "rating"])
        return frame.sort_values("timestamp", kind="stable").tail(k)[["item", "label", "timestamp", "rating"]]

    def test_items(self, user: str) -> pd.DataFrame:
        frame = self._test.get(user)
        if frame is None:
            return pd.DataFrame(columns=["item", "label", "timestamp", "rating"])
        return frame[["item", "label", "timestamp", "rating"]]

    def true_labels(self, user: str | None) -> dict[str, int]:
        """Known labels of the user's test-period interactions (the honest ones)."""
        if not user:
            return {}
        frame = self._test.get(user)
        if frame is None:
            return {}
        return {str(i): int(y) for i, y in zip(frame["item"], frame["label"])}

    # ------------------------------------------------------------------ caches
    def cache(self, name: str, size: int = 64) -> "LRU":
        cache = self._caches.get(name)
        return cache if cache is not None else self._caches.setdefault(name, LRU(size))

    # ------------------------------------------------------------------ assets
    def layout_path(self, cf: str | None = None) -> Path:
        from ..embedding_map import layout_path_for

        return layout_path_for(cf or self.config.cf_name, Path(self.config.layout_path))

    def layout(self, cf: str | None = None) -> dict | None:
        """The embedding-map layout of a CF backend (each backend's tokens land elsewhere)."""
        key = cf or self.config.cf_name
        if key not in self._layouts:
            from ..embedding_map import load_layout

            try:
                self._layouts[key] = load_layout(self.layout_path(cf))
            except (OSError, json.JSONDecodeError):
                self._layouts[key] = None
        return self._layouts[key]

    def results(self) -> dict | None:
        path = Path(self.config.results_path)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def word_unit(self) -> np.ndarray:
        """Unit-normalised input word embeddings (cached; 49k x hidden)."""
        if self._word_unit is None:
            words = self.pipeline().model.llm.get_input_embeddings().weight.detach().float().numpy()
            self._word_unit = words / np.maximum(np.linalg.norm(words, axis=1, keepdims=True), 1e-12)
            self.word_norm_mean = float(np.linalg.norm(words, axis=1).mean())
        return self._word_unit

    @torch.no_grad()
    def project(self, vectors: torch.Tensor, cf: str | None = None) -> np.ndarray:
        """CF vectors -> mapped tokens (the vectors that overwrite the slots)."""
        projector = self.pipeline(cf).model.projector
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        return projector(torch.atleast_2d(vectors)).numpy()


class LRU(OrderedDict):
    """A small least-recently-used cache; safe to share between Gradio's worker threads
    (the computation itself runs outside the lock, so two threads may compute one key)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def get_or(self, key, make):
        with self._lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self._lock:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value


_STATE: AppState | None = None
_STATE_LOCK = threading.Lock()


def get_state() -> AppState:
    """The process-wide state; starts loading the model in the background."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            _STATE = AppState()
            _STATE.start_loading()
    return _STATE


def set_state(state: AppState) -> AppState:
    """Install a state (tests build one around an already loaded pipeline)."""
    global _STATE
    with _STATE_LOCK:
        _STATE = state
    return state
