"""Resuming an LLM stage after an interruption (issue 26: no single run has to last hours).

At every early-stopping check ``train.train_llm_stage`` writes ``<checkpoints>/progress/<stage>.safetensors``:
the trainable parameters now and at the best check so far, AdamW's moments, the torch random state
(LoRA dropout), and as JSON metadata where the run is (micro-batches done, optimiser steps, rows
seen, the running loss), the early stopper's state, the history, and a fingerprint of what is being
trained (stage, configuration, the rows' ids, the parameters' shapes). The same command run again
finds the file, checks the fingerprint and continues from that check: the micro-batches already
taken are skipped, so it ends where an uninterrupted run would (tested: the same weights). A
finished stage removes its file; a file whose fingerprint differs is ignored and said so.
Safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file


def digest(what: dict) -> str:
    """A fingerprint of plain values (what saved work must share with the run that reads it)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(stage: str, config: dict, row_ids: list, params: list[torch.nn.Parameter]) -> str:
    """What must be equal for a saved position to belong to this run."""
    return digest({"stage": stage, "config": config, "rows": [str(r) for r in row_ids],
                   "params": [list(p.shape) for p in params]})


def scoring_fingerprint(pipe, rows, **more) -> str:
    """What saved pieces of a scoring run (``evaluate``, ``inside``) must share with the run that
    resumes it: the checkpoints (their manifest, rewritten by every training), the CF backend,
    the precision, the rows, and ``more``."""
    return digest({"manifest": pipe.manifest, "cf": pipe.cf_name, "runtime": pipe.runtime.describe(),
                   "rows": [str(i) for i in rows.index]} | more)


def save_pieces(path: Path, key: str, pieces: dict[int, dict[str, torch.Tensor]]) -> None:
    """Finished pieces of a long scoring run (piece -> named tensors), atomically, under ``key``."""
    tensors = {f"{n}.{name}": value.contiguous() for n, named in pieces.items() for name, value in named.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    save_file(tensors, str(partial), metadata={"fingerprint": key})
    partial.replace(path)  # never a half-written file


def load_pieces(path: Path, key: str, log=print) -> dict[int, dict[str, torch.Tensor]]:
    """The pieces saved under ``key``; {} when there are none, or they belong to another run."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != key:
                log(f"[resume] {path} belongs to another run; starting afresh")
                return {}
        tensors = load_file(str(path))
    except (OSError, SafetensorError):
        return {}
    pieces: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        n, column = name.split(".", 1)
        pieces.setdefault(int(n), {})[column] = value
    return pieces


@dataclass
class Position:
    """Where a stage is, in plain numbers (the tensors travel beside it)."""

    fingerprint: str
    batches_done: int = 0  # micro-batches taken (the loop skips these on resume)
    step: int = 0  # optimiser steps taken
    seen: int = 0  # rows seen
    running: float | None = None  # the running loss the log shows
    best_metric: float = float("-inf")
    best_step: int = 0
    bad_checks: int = 0
    history: list = field(default_factory=list)


def save(path: Path, position: Position, params: list[torch.nn.Parameter], best: list[torch.Tensor] | None,
         optimiser: torch.optim.Optimizer) -> None:
    """Write the position atomically (a half-written file is never read as a position)."""
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in enumerate(params)}
    for n, value in enumerate(best or []):
        tensors[f"best.{n}"] = value.detach().cpu().contiguous()
    for n, param in enumerate(params):
        for key, value in optimiser.state.get(param, {}).items():
            if torch.is_tensor(value):
                tensors[f"adam.{n}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    tensors["rng"] = torch.get_rng_state()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    save_file(tensors, str(partial), metadata={"position": json.dumps(asdict(position))})
    partial.replace(path)


def load(path: Path, expected: str, log=print) -> tuple[Position, dict[str, torch.Tensor]] | None:
    """The saved position and tensors if ``path`` holds this run's (``expected`` fingerprint), else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            position = Position(**json.loads((handle.metadata() or {})["position"]))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
        log(f"[resume] {path} is unreadable ({type(err).__name__}); starting the stage from the beginning")
        return None
    if position.fingerprint != expected:
        log(f"[resume] {path} belongs to another run (other configuration or rows); starting from the beginning")
        return None
    return position, tensors


def restore(tensors: dict[str, torch.Tensor], params: list[torch.nn.Parameter],
            optimiser: torch.optim.Optimizer) -> list[torch.Tensor] | None:
    """Put the saved parameters, AdamW moments and random state back; returns the best snapshot."""
    with torch.no_grad():
        for n, param in enumerate(params):
            param.copy_(tensors[f"param.{n}"].to(param.device, param.dtype))
    for n, param in enumerate(params):
        state = {key.split(".", 2)[2]: value.to(param.device) for key, value in tensors.items()
                 if key.startswith(f"adam.{n}.")}
        if state:
            if "step" in state:
                state["step"] = state["step"].cpu()  # AdamW keeps its step count on the CPU
            optimiser.state[param] = state
    torch.set_rng_state(tensors["rng"])
    best = [tensors[f"best.{n}"].to(p.device, p.dtype) for n, p in enumerate(params) if f"best.{n}" in tensors]
    return best if len(best) == len(params) else None
