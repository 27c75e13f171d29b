"""The files the app shows besides the models: embedding-map layouts (one per CF backend), the
evaluation results, and the vocabulary's mean word-embedding norm (for the token reports)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ..cf import backend
from ..config import INSIDE_PATH, AppConfig
from ..embedding_map import load_layout


class Assets:
    def __init__(self, config: AppConfig):
        self.config = config
        self._layouts: dict[str, dict | None] = {}
        self._word_norm_mean: float | None = None
        self._lock = threading.Lock()

    def layout_path(self, cf: str | None = None) -> Path:
        """Where the layout of backend ``cf`` (None = the configured one) lives."""
        return backend(cf or self.config.cf_name).layout_path(Path(self.config.layout_path))

    def layout(self, cf: str | None = None) -> dict | None:
        """The embedding-map layout of a CF backend (each backend's tokens land elsewhere); None if absent."""
        name = cf or self.config.cf_name
        if name not in self._layouts:
            try:
                layout = load_layout(self.layout_path(name))
            except (OSError, json.JSONDecodeError):
                layout = None
            with self._lock:
                self._layouts.setdefault(name, layout)
        return self._layouts[name]

    def results(self) -> dict | None:
        path = Path(self.config.results_path)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def inside(self) -> dict | None:
        """The warm-vs-cold measurement of ``python -m collm_demo inside``; None if absent or unreadable."""
        try:
            return json.loads(Path(INSIDE_PATH).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def word_norm_mean(self, pipe) -> float:
        """Mean norm of the LLM's input word embeddings (all pipelines share one LLM)."""
        if self._word_norm_mean is None:
            words = pipe.word_embeddings().numpy()
            self._word_norm_mean = float(np.linalg.norm(words, axis=1).mean())
        return self._word_norm_mean
