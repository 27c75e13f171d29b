"""Every knob of the pipeline, in dataclasses with commented fields."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = PROJECT_ROOT / "checkpoints"
ASSETS_DIR = PROJECT_ROOT / "assets"
RESULTS_PATH = ASSETS_DIR / "results.json"


def cache_dir() -> Path:
    """Where fetched assets and converted models live (never committed).

    Overridable with ``COLLM_CACHE`` so CI and users can put the ~700 MB elsewhere.
    """
    return Path(os.environ.get("COLLM_CACHE", Path.home() / ".cache" / "collm_demo"))


@dataclass
class ProtocolConfig:
    positive_rating: float = 4.0  # label = 1 iff rating >= this (CoLLM's choice for MovieLens)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # global time split train/valid/test
    history_len: int = 10  # at most this many interactions strictly before a row are shown
    warm_min: int = 3  # warm = user AND item each have >= this many train interactions


@dataclass
class TrainConfig:
    seed: int = 0
    # --- CF model (matrix factorisation) ---
    cf_dim: int = 64  # MF latent dimension (paper searched 64/128/256)
    cf_epochs: int = 40  # upper bound; early stopping on valid AUC decides
    cf_lr: float = 1e-2
    cf_weight_decay: float = 1e-2  # L2 on touched embeddings; sweep 1e-4..1e-1 on valid, see manifest
    cf_patience: int = 3
    # --- stage 1: LoRA on text-only prompts (TALLRec) ---
    lora_rows: int = 2400  # training rows for stage 1 (~23 min on 2 cores, 1.8 rows/s)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_lr: float = 3e-3  # 1e-3 plateaued at early-stop AUC 0.613; 3e-3 reaches 0.724 (manifest, README)
    # --- stage 2: projector on CF prompts ---
    projector_rows: int = 3200  # training rows for stage 2 (drawn from the valid split, see train.py)
    projector_lr: float = 1e-3
    projector_weight_decay: float = 1e-3
    # Fold-in strength of the user vectors stage 2 trains on (and CoLLM is then fed); None = the
    # CF model's own, tuned for scoring alone (MF: 5.0). 1.0 has the better early-stop AUC:
    # 0.7854 vs 0.7780 (README, Results).
    projector_foldin_l2: float | None = 1.0
    # --- shared ---
    batch_size: int = 8
    grad_accum: int = 2  # effective batch 16 as in the paper
    warmup_frac: float = 0.05
    eval_every: int = 30  # optimiser steps between early-stopping checks
    eval_rows: int = 400  # fixed early-stopping subset of valid rows (never trained on)
    patience: int = 4  # early-stopping checks without improvement before stopping
    bf16: bool = True  # CPU autocast: 2.5x faster, AUC within 0.001 (measured)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuickConfig(TrainConfig):
    """Same code on a tiny slice: all stages in well under 2 minutes on 2 CPU cores."""

    cf_epochs: int = 5
    lora_rows: int = 32
    projector_rows: int = 32
    eval_every: int = 2
    eval_rows: int = 32
    patience: int = 2
