"""Every knob of the project in one place: paths, protocol, model shapes, training, the app.

Library code takes these as explicit arguments. The environment is read here and only here
(:meth:`AppConfig.from_env`, :func:`cache_dir`, :func:`offline`); entry points (the CLI, the
app) call those and pass the values down. ``SETTINGS`` is the one table of environment
variables, printed in the README by ``python -m collm_demo settings --readme``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = PROJECT_ROOT / "checkpoints"
ASSETS_DIR = PROJECT_ROOT / "assets"
RESULTS_PATH = ASSETS_DIR / "results.json"
LAYOUT_PATH = ASSETS_DIR / "embedding_map.json"  # MF's; other backends: embedding_map_<name>.json
DEFAULT_LLM = "embedded:SmolLM2-135M-Instruct"
DEFAULT_CF = "mf"

# --- the model (CoLLM's design; changing these changes the checkpoints' shapes)
PROJECTOR_EXPAND = 10  # projector: Linear(d -> 10 d) -> ReLU -> Linear(10 d -> hidden), as in the paper
LORA_TARGETS = ("q_proj", "v_proj")  # stage-1 LoRA on the attention query/value projections (TALLRec, CoLLM)

# --- the app
MAX_CANDIDATES = 50  # candidates per scoring call, in the UI and the API
QUICK_ROWS = 48  # evaluate / ceiling --quick: rows scored
CEILING_ROWS = 1600  # ceiling: held-out valid rows scored by default


# Environment variables: (name, default shown to people, meaning). The README's table is this list.
SETTINGS = (
    ("COLLM_CHECKPOINTS", "`checkpoints/`", "checkpoint folder the app loads: CF files, `lora/`, projectors, manifest"),
    ("COLLM_LLM", "embedded SmolLM2-135M-Instruct", "causal LM for the app: a Hugging Face id or a local folder "
                                                     "(the CLI's `--llm`)"),
    ("COLLM_DATA", "embedded MovieLens-100K", "MovieLens folder or CSV pair for the app (the CLI's `--data`)"),
    ("COLLM_CF", "`mf`", "CF backend selected when the page opens; every backend with a CF file and a "
                         "projector is offered"),
    ("COLLM_RESULTS", "`assets/results.json`", "evaluation results shown on the Warm vs cold tab"),
    ("COLLM_LAYOUT", "`assets/embedding_map.json`", "embedding-map layout (other backends: "
                                                   "`embedding_map_<name>.json` beside it)"),
    ("COLLM_BF16", "`0` (float32)", "`1`: score with bf16 autocast in the app (coarser P(Yes); slower on CPUs "
                                    "without bf16 units)"),
    ("COLLM_THREADS", "torch's default", "CPU threads for torch in the app"),
    ("COLLM_MAX_QUEUE", "`64`", "requests that may wait in the app's queue before new ones are refused"),
    ("COLLM_CACHE", "`~/.cache/collm_demo`", "where fetched assets and the converted LLM live (~700 MB)"),
    ("COLLM_OFFLINE", "`0`", "`1`: never download; a missing asset is an error that names the fetch command"),
    ("GRADIO_SERVER_PORT", "`7860`", "port of `python app.py`"),
    ("GRADIO_SERVER_NAME", "`127.0.0.1`", "interface of `python app.py` (`0.0.0.0` on a Space)"),
)


def cache_dir() -> Path:
    """Where fetched assets and converted models live (never committed)."""
    return Path(os.environ.get("COLLM_CACHE") or Path.home() / ".cache" / "collm_demo")


def offline() -> bool:
    """``COLLM_OFFLINE=1``: assets must already be in the cache."""
    return os.environ.get("COLLM_OFFLINE", "").strip() == "1"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


@dataclass
class AppConfig:
    """The app's settings (see ``SETTINGS``); ``from_env`` is the one place that reads them."""

    checkpoint_dir: Path = CHECKPOINT_DIR
    llm: str | None = None  # None: the embedded default
    data: str | None = None  # None: the embedded ML-100K
    results_path: Path = RESULTS_PATH
    layout_path: Path = LAYOUT_PATH
    cf_name: str = DEFAULT_CF
    bf16: bool = False  # float32 by default: bf16 logits would make P(Yes) move in ~0.015 steps
    threads: int | None = None
    max_queue: int = 64

    @classmethod
    def from_env(cls) -> AppConfig:
        env = os.environ
        return cls(checkpoint_dir=Path(env.get("COLLM_CHECKPOINTS") or CHECKPOINT_DIR),
                   llm=env.get("COLLM_LLM") or None,
                   data=env.get("COLLM_DATA") or None,
                   results_path=Path(env.get("COLLM_RESULTS") or RESULTS_PATH),
                   layout_path=Path(env.get("COLLM_LAYOUT") or LAYOUT_PATH),
                   cf_name=env.get("COLLM_CF") or DEFAULT_CF,
                   bf16=_flag(env.get("COLLM_BF16")),
                   threads=int(env["COLLM_THREADS"]) if env.get("COLLM_THREADS", "").strip() else None,
                   max_queue=int(env.get("COLLM_MAX_QUEUE") or 64))


def settings_table() -> str:
    """The README's settings table (Markdown)."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    lines += [f"| `{name}` | {default} | {meaning} |" for name, default, meaning in SETTINGS]
    return "\n".join(lines)


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
    sasrec_lr: float = 1e-3  # Adam on a transformer: the MF learning rate is too high
    # --- stage 1: LoRA on text-only prompts (TALLRec) ---
    lora_rows: int = 2400  # training rows for stage 1 (~23 min on 2 cores, 1.8 rows/s)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_lr: float = 3e-3  # 1e-3 plateaued at early-stop AUC 0.613; 3e-3 reaches 0.724 (docs/experiments.md)
    # --- stage 2: projector on CF prompts ---
    projector_rows: int = 3200  # training rows for stage 2 (drawn from the valid split, see data.py)
    projector_lr: float = 1e-3
    projector_weight_decay: float = 1e-3
    # Fold-in strength of the user vectors stage 2 trains on (and CoLLM is then fed); None = the
    # CF model's own, tuned for scoring alone (MF: 5.0). 1.0 has the better early-stop AUC:
    # 0.7854 vs 0.7780 (docs/experiments.md).
    projector_foldin_l2: float | None = 1.0
    # --- shared ---
    batch_size: int = 8
    grad_accum: int = 2  # effective batch 16 as in the paper
    warmup_frac: float = 0.05
    eval_every: int = 30  # optimiser steps between early-stopping checks
    eval_rows: int = 400  # fixed early-stopping subset of valid rows (never trained on)
    patience: int = 4  # early-stopping checks without improvement before stopping
    bf16: bool = True  # CPU autocast: 2.5x faster on a CPU with bf16 units, AUC within 0.001 (measured)

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
