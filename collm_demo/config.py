"""Every knob of the project in one place: paths, protocol, model shapes, training, the app.

Library code takes these as explicit arguments. The environment is read here and only here
(:meth:`AppConfig.from_env`, :func:`cache_dir`, :func:`offline`); entry points (the CLI, the
app) call those and pass the values down. ``SETTINGS`` is the one table of environment
variables, printed in the README by ``python -m collm_demo settings --readme``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = PROJECT_ROOT / "checkpoints"
ASSETS_DIR = PROJECT_ROOT / "assets"
RESULTS_PATH = ASSETS_DIR / "results.json"
LAYOUT_PATH = ASSETS_DIR / "embedding_map.json"  # MF's; other backends: embedding_map_<name>.json
DEFAULT_LLM = "embedded:SmolLM2-135M-Instruct"
DEFAULT_CF = "mf"
DEVICES = ("auto", "cpu", "cuda", "mps")  # --device / COLLM_DEVICE (see device.py)
PRECISIONS = ("auto", "fp32", "bf16")  # --precision / COLLM_PRECISION

# --- the model (CoLLM's design; changing these changes the checkpoints' shapes)
PROJECTOR_EXPAND = 10  # projector: Linear(d -> 10 d) -> ReLU -> Linear(10 d -> hidden), as in the paper
LORA_TARGETS = ("q_proj", "v_proj")  # stage-1 LoRA on the attention query/value projections (TALLRec, CoLLM)

# --- the app
MAX_CANDIDATES = 50  # candidates per scoring call, in the UI and the API
QUICK_ROWS = 48  # evaluate / ceiling --quick: rows scored
CEILING_ROWS = 1600  # ceiling: held-out valid rows scored by default
INSIDE_ROWS = 1000  # inside: seeded test rows measured (warm vs cold intervals need about this many)
INSIDE_K = 10  # inside: neighbours compared before and after the projector
INSIDE_BATCH = 8  # inside: prompts per analysis pass (attention weights and gradients held for each)
INSIDE_CHUNK = 48  # inside: rows measured between time-budget checks
INSIDE_BOOTSTRAP = 2000  # inside: bootstrap resamples per interval
INSIDE_PATH = ASSETS_DIR / "inside.json"  # inside: the warm-vs-cold result the app shows


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
    ("COLLM_DEVICE", "`auto`", "where the app runs the LLM: `auto` (CUDA if present, then MPS, else the CPU), "
                               "`cpu`, `cuda`, `mps` (the CLI's `--device`)"),
    ("COLLM_PRECISION", "`auto`", "`fp32` or `bf16` autocast (forced on any device); `auto` = float32 for "
                                  "scoring on a CPU, bf16 on a CUDA device that computes it natively, and for "
                                  "CPU training only where a measured micro-benchmark finds it faster (the "
                                  "default of the CLI's `--precision`)"),
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


def precision_from_env() -> str:
    """``COLLM_PRECISION`` (default ``auto``): the app's precision and the CLI's ``--precision``
    default, so one variable puts every entry point (and the test suite) on the bf16 path."""
    return (os.environ.get("COLLM_PRECISION") or "auto").strip().lower()


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by ``torchrun`` with more than one process."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))


def use_gqa_attention() -> None:
    """Let transformers' SDPA attention take the grouped key/value heads as they are (``enable_gqa``)
    even with a padding mask. By default it copies keys and values to every query head first
    (``repeat_kv``) whenever a mask is given, which cost 7 % of a CPU "compare" (``aten::copy_``).
    CPU only: on CUDA a masked GQA call falls back to the slow math kernel. Set once, by the engine
    (``CoLLM`` on a CPU runtime); an explicit ``TRANSFORMERS_SDPA_FORCE_GQA`` is left alone."""
    os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")


@dataclass
class AppConfig:
    """The app's settings (see ``SETTINGS``); ``from_env`` is the one place that reads them."""

    checkpoint_dir: Path = CHECKPOINT_DIR
    llm: str | None = None  # None: the embedded default
    data: str | None = None  # None: the embedded ML-100K
    results_path: Path = RESULTS_PATH
    layout_path: Path = LAYOUT_PATH
    cf_name: str = DEFAULT_CF
    device: str = "auto"  # see device.py
    precision: str = "auto"  # see device.py: float32 on a CPU; the answer head stays float32 either way
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
                   device=(env.get("COLLM_DEVICE") or "auto").strip().lower(),
                   precision=precision_from_env(),
                   threads=_whole_number(env, "COLLM_THREADS", None),
                   max_queue=_whole_number(env, "COLLM_MAX_QUEUE", 64))


def _whole_number(env, name: str, default: int | None) -> int | None:
    """A positive whole number from the environment, or ``default`` when unset; anything else is a
    user error naming the variable (the app then exits with that one line, not a traceback)."""
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        from .errors import InputError

        raise InputError(f"{name} must be a positive whole number, not {text[:40]!r}")
    return int(text)


def settings_table() -> str:
    """The README's settings table (Markdown)."""
    lines = ["| variable | default | what it sets |", "|---|---|---|"]
    lines += [f"| `{name}` | {default} | {meaning} |" for name, default, meaning in SETTINGS]
    return "\n".join(lines)


PROTOCOLS = ("global", "collm-ml1m")  # --protocol


@dataclass
class ProtocolConfig:
    name: str = "global"  # "global": time-sorted 80/10/10; "collm-ml1m": the paper's monthly split (below)
    positive_rating: float = 4.0  # label = 1 iff rating >= this (CoLLM's choice for MovieLens)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # global time split train/valid/test
    history_len: int = 10  # at most this many interactions strictly before a row are shown
    warm_min: int = 3  # warm = user AND item each have >= this many train interactions
    # The paper's ML-1M protocol (its public preprocessing): months counted from the data's first
    # month; months 14-23 train, 24-28 valid, 29-33 test, the rest dropped; the history holds
    # only liked items; rows with an empty history are kept.
    month_splits: tuple[tuple[int, int], ...] = ()  # inclusive (first, last) month of train, valid, test
    history_positive_only: bool = False
    keep_empty_history: bool = False

    @classmethod
    def named(cls, name: str) -> ProtocolConfig:
        if name == "global":
            return cls()
        if name == "collm-ml1m":
            return cls(name=name, month_splits=((14, 23), (24, 28), (29, 33)), history_positive_only=True,
                       keep_empty_history=True)
        from .errors import InputError

        raise InputError(f"protocol {name!r} is not one of {', '.join(PROTOCOLS)}")


# How a prompt shows a row's history (``TrainConfig.history_style``; the LoRA and the projector
# are trained for one): "marked", the last ten interactions with "(liked)" / "(disliked)" marks
# (this project's default); "liked", the paper's: the last <= 10 liked films, from the user's whole
# past, titles only, after "A user has given high ratings to the following movies:".
HISTORY_STYLES = ("marked", "liked")


# Named training recipes (``train --recipe``): the overrides of TrainConfig's fields that make each.
# "paper": CoLLM as published (per-row BCE, the LoRA frozen in stage 2, projector lr 1e-3), the
# defaults below. "grouped": both LLM stages on user groups of 8 sharing one history with the
# within-group pairwise term, a longer stage 1, and the projector at CoLLM's own code's rate (run l6
# of docs/experiments.md: dev UAUC 0.639 against the paper's 0.578, not kept by the rule there, so
# not the default). Row counts are left alone under --quick.
RECIPES: dict[str, dict[str, object]] = {
    "paper": {},
    # Lever 1 of docs/experiments.md, the recipe the rule keeps so far: the paper's stage 1, then
    # stage 2 on user groups of 8 with the pairwise term at CoLLM's projector rate.
    "grouped-stage2": {"group_size": 8, "pairwise_weight": 1.0, "grouped_stages": ("projector",),
                       "projector_lr": 1e-2, "projector_eval_every": 50},
    # Run l6: both LLM stages on user groups, stage 1 on twice the rows (not kept: swap test).
    "grouped": {"group_size": 8, "pairwise_weight": 1.0, "lora_rows": 4800, "projector_lr": 1e-2,
                "projector_eval_every": 50},
}
RECIPE_SIZES = ("lora_rows", "projector_rows")
# What `train` runs without --recipe: the recipe the rule of docs/experiments.md keeps, which the
# shipped MF projector was trained by; `--recipe paper` is CoLLM as published.
DEFAULT_RECIPE = "grouped-stage2"
# Settings that change where and how a recipe runs, or which draw of it, not what it trains.
NOT_RECIPE_FIELDS = ("seed", "recipe", "recipe_overrides", "device", "precision", "load_bf16",
                     "gradient_checkpointing")


@dataclass
class TrainConfig:
    seed: int = 0
    recipe: str = "paper"  # the named recipe these values started from (RECIPES), for the manifest
    # Training values a command-line flag set away from the recipe's (empty: the recipe exactly),
    # so a stage's manifest record says whether it is the named recipe or a variant of it.
    recipe_overrides: tuple[str, ...] = ()
    # How the LLM stages' prompts show the history (HISTORY_STYLES); both LLM stages use one, and
    # every command that loads the folder reads it back from the manifest (checkpoints.history_style).
    history_style: str = "marked"
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
    # Rate of stage 2's own copy of the stage-1 LoRA, trained with the projector and used for the
    # CF prompts only (saved as lora_<cf>/); 0 = the paper's recipe, the LoRA frozen in stage 2.
    projector_lora_lr: float = 0.0
    # --- issue 26: training one user at a time (collm_demo/grouped.py); the defaults are the paper's
    group_size: int = 1  # rows per group: one user's candidates sharing the history of the first; 1 = per row
    pairwise_weight: float = 0.0  # weight of the within-group pairwise (liked above disliked) term beside BCE
    # The LLM stages the two fields above apply to ("lora", "projector"); the other stages train per row.
    grouped_stages: tuple[str, ...] = ("lora", "projector")
    # Stage 2: weight of the term that keeps the CF vectors' pairwise similarities among the mapped
    # tokens (collm_demo/spread.py; CoLLM's code has one, switched off); 0 = the paper's.
    similarity_weight: float = 0.0
    # Stage 2: users get a projector MLP of their own instead of sharing the items' (collm.Projector;
    # beyond the paper, whose code has the separate pair only as commented-out lines); False = the paper's.
    separate_projectors: bool = False
    # Stage 2: every mapped token rescaled to this L2 norm; 0 = the mean norm of the LLM's word
    # embeddings (beyond the paper: issue 26's token-norm lever); None = unscaled, the paper's.
    projector_token_norm: float | None = None
    # --- shared ---
    batch_size: int = 8
    grad_accum: int = 2  # effective batch 16 as in the paper
    warmup_frac: float = 0.05
    eval_every: int = 30  # optimiser steps between early-stopping checks
    projector_eval_every: int | None = None  # stage 2's own cadence (None: eval_every)
    eval_rows: int = 400  # fixed early-stopping subset of valid rows (never trained on)
    patience: int = 4  # early-stopping checks without improvement before stopping
    # --- where and how (see device.py): "auto" = CUDA if present; bf16 on CUDA where native, on a
    # CPU only where a micro-benchmark of the model's matmul shape measures it faster
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; the answer head stays float32)
    # --- memory options for a large LLM (a 7B model on a 24 GB card needs all three)
    load_bf16: bool = False  # keep the frozen base weights in bf16 (half the memory of float32)
    gradient_checkpointing: bool = False  # recompute activations in backward instead of storing them

    def to_dict(self) -> dict:
        return asdict(self)

    def with_recipe(self, name: str) -> TrainConfig:
        """These values with a named recipe's overrides (a QuickConfig keeps its tiny row counts)."""
        if name not in RECIPES:
            from .errors import InputError

            raise InputError(f"recipe {name!r} is not one of {', '.join(RECIPES)}")
        keep_sizes = isinstance(self, QuickConfig)
        for field, value in RECIPES[name].items():
            if not (keep_sizes and field in RECIPE_SIZES):
                setattr(self, field, value)
        self.recipe = name
        return self

    def for_stage(self, stage: str) -> TrainConfig:
        """The values ``stage`` ("lora" or "projector") trains with: per row, without the pairwise term,
        where the recipe groups only the other stage (``grouped_stages``)."""
        if stage in self.grouped_stages:
            return self
        return replace(self, group_size=1, pairwise_weight=0.0)

    def eval_every_for(self, stage: str) -> int:
        """Optimiser steps between early-stopping checks in ``stage`` ("lora" or "projector")."""
        return self.projector_eval_every if stage == "projector" and self.projector_eval_every else self.eval_every


@dataclass
class QuickConfig(TrainConfig):
    """Same code on a tiny slice: all stages in well under 2 minutes on 2 CPU cores."""

    cf_epochs: int = 5
    lora_rows: int = 32
    projector_rows: int = 32
    eval_every: int = 2
    eval_rows: int = 32
    patience: int = 2
