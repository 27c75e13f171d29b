"""What the handlers share, as one thin composition: the configuration (``collm_demo.config.AppConfig``,
read from the environment there), the models (``hub.ModelHub``), the users and items
(``catalog.Catalog``) and the shipped files (``assets.Assets``).

Device and precision come from the configuration too (``AppConfig.device`` / ``precision``,
``collm_demo.device.Runtime``); whatever the precision, the answer head runs in float32, so the
small with/without-CF differences the app is about are not rounded away.
"""

from __future__ import annotations

import threading

import torch

from ..config import AppConfig
from ..data import load_dataset
from ..pipeline import Pipeline
from .assets import Assets
from .catalog import Catalog
from .hub import ModelHub


class AppState:
    """Create with :func:`get_state` (one per process), or around a loaded pipeline in tests."""

    def __init__(self, config: AppConfig | None = None, pipeline: Pipeline | None = None, dataset=None):
        self.config = config or AppConfig.from_env()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        dataset = pipeline.dataset if pipeline is not None else (dataset or load_dataset(self.config.data))
        self.catalog = Catalog(dataset)
        self.hub = ModelHub(self.config, dataset, pipeline)
        self.assets = Assets(self.config)

    @property
    def dataset(self):
        return self.catalog.dataset

    def pipeline(self, cf: str | None = None) -> Pipeline:
        """``hub.pipeline``: the pipeline of CF backend ``cf`` (None = the configured one)."""
        return self.hub.pipeline(cf)


_STATE: AppState | None = None
_STATE_LOCK = threading.Lock()


def get_state() -> AppState:
    """The process-wide state; starts loading the model in the background."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            _STATE = AppState()
            _STATE.hub.start_loading()
    return _STATE


def set_state(state: AppState) -> AppState:
    """Install a state (tests build one around an already loaded pipeline)."""
    global _STATE
    with _STATE_LOCK:
        _STATE = state
    return state
