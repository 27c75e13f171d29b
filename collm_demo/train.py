"""Training: stage `cf` (the CF model), stage `lora` (stage 1, text-only), stage `projector` (stage 2).

Which rows train what (the rules live in ``data.py``):
* the CF model is fit on every train interaction; early stopping on valid AUC;
* stage 1 (LoRA, text-only prompts) trains on a seeded random sample of train rows;
* stage 2 (projector) trains on valid rows minus the early-stop rows: the CF model has seen
  the labels of train rows, so their CF vectors "know" the answer;
* both LLM stages early-stop on one fixed sample of valid rows that is never trained on.

``run`` is the orchestrator; each stage is one function that returns its manifest record.
Under ``torchrun`` the two LLM stages run data-parallel (``distributed.py``): the same global
batches in the same order as one process, gradients of the trainable parameters all-reduced,
scores for early stopping merged, only rank 0 writing.
"""

from __future__ import annotations

import copy
import math
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig, get_peft_model
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from . import resume
from .cf import backend, trainable_backends
from .checkpoints import read_manifest, record_cf, save_projector, write_manifest
from .collm import CoLLM, Projector
from .config import CHECKPOINT_DIR, DEFAULT_CF, LORA_TARGETS, ProtocolConfig, TrainConfig
from .data import Dataset, early_stop_rows, format_counts, load_dataset, lora_rows, projector_rows
from .device import Runtime, resolve_device, resolve_precision
from .distributed import Ranks, init_ranks
from .errors import CheckpointError, InputError
from .grouped import grouped_logits, pairwise_loss, user_groups
from .llm import LoadedLLM, load_llm
from .pipeline import Pipeline, load_pipeline
from .spread import spread_loss
from .trainer import EarlyStopping

STAGES = ("cf", "lora", "projector")
PROGRESS_DIR = "progress"  # <checkpoints>/progress/<stage>.safetensors: an interrupted LLM stage resumes from it


_QUIET = {"quiet": False}  # under torchrun only rank 0 logs


def log(message: str) -> None:
    if not _QUIET["quiet"]:
        print(message, file=sys.stderr, flush=True)


def cosine_with_warmup(optimiser: torch.optim.Optimizer, total_steps: int,
                       warmup_frac: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the full rate, then a half cosine to 0 over the remaining steps.

    Not transformers' ``get_cosine_schedule_with_warmup``, on purpose: its warmup factor at step
    s is s / warmup, so the first optimiser step runs at learning rate 0, where this one's is
    (s + 1) / warmup. Compared step by step (AdamW, lr 1.0), the cosine part is bit-identical but
    every warmup step differs: 2 steps (--quick) train as 1; 10 steps, the first is lost; 200
    steps, warmup 0.0, 0.1, ... instead of 0.1, 0.2, ... The shipped checkpoints were trained with
    this schedule, and a one-step stage would not train at all with that one.
    """
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def train_llm_stage(pipeline: Pipeline, stage: str, params: list[torch.nn.Parameter],
                    rows: pd.DataFrame, eval_rows: pd.DataFrame, cfg: TrainConfig, lr: float,
                    weight_decay: float, extra: tuple[list[torch.nn.Parameter], float] | None = None,
                    progress: Path | None = None) -> dict:
    """One pass over ``rows`` (batch × grad-accum), early stopping on ``eval_rows`` AUC every
    ``cfg.eval_every_for(stage)`` optimiser steps. The best parameters are restored at the end.
    ``extra``: more parameters trained at their own rate, without weight decay (stage 2's LoRA).
    ``progress``: where the run's position is saved at every check, and resumed from (``resume.py``).
    With N ranks a micro-batch is ``batch_size × N`` rows, each rank computing its share."""
    model: CoLLM = pipeline.model
    ranks = pipeline.ranks
    with_cf = stage == "projector"
    cfg = cfg.for_stage(stage)  # a recipe may group only one of the two stages
    groups = [{"params": params}] + ([{"params": extra[0], "lr": extra[1], "weight_decay": 0.0}] if extra else [])
    optimiser = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    params = params + (extra[0] if extra else [])
    batches = micro_batches(rows, cfg.batch_size * ranks.world, cfg, ranks)  # user groups make some batches larger
    steps = max(1, math.ceil(len(batches) / cfg.grad_accum))
    scheduler = cosine_with_warmup(optimiser, steps, cfg.warmup_frac)
    evaluate = early_stop_auc(pipeline, eval_rows, pipeline.collm_method if with_cf else "text_only")
    stopper = EarlyStopping(cfg.patience, snapshot=lambda: [p.detach().clone() for p in params],
                            restore=lambda saved: _copy_into(params, saved))
    at = start_or_resume(stage, progress, resume.fingerprint(stage, cfg.to_dict(), rows.index.tolist(), params),
                         params, optimiser, scheduler, stopper, evaluate)
    log(f"[{stage}] {len(rows)} rows, {steps} optimiser steps; early-stop AUC before training "
        f"{at.history[0]['valid_auc']:.4f} (UAUC {at.history[0]['valid_uauc']:.4f})"
        + (f"; resumed after step {at.step}" if at.step else "")
        + (f"; {ranks.world} ranks × {cfg.batch_size} rows per micro-batch" if ranks.active else ""))
    _train_only(model, params)
    model.train()
    trained = ranks.wrap(model)
    started, seen_before = time.time(), at.seen
    bar = tqdm(batches, desc=f"{stage}", unit="batch", file=sys.stderr, mininterval=5, disable=not ranks.is_main)
    for n, batch in enumerate(bar, 1):
        if n <= at.batches_done:  # taken before the interruption
            continue
        boundary = n % cfg.grad_accum == 0 or n == len(batches)
        loss = micro_batch_loss(pipeline, trained, batch, with_cf, accumulate=not boundary,
                                pairwise_weight=cfg.pairwise_weight)
        if with_cf and cfg.similarity_weight:  # keep users apart in the projector (spread.py)
            loss = loss + cfg.similarity_weight * spread_loss(model.projector, pipeline.cf.user_table,
                                                              pipeline.cf.item_table, cfg.seed, n)
        (loss / cfg.grad_accum).backward()
        at.seen, value = at.seen + len(batch), float(loss.detach())
        at.running = value if at.running is None else 0.9 * at.running + 0.1 * value
        if not boundary:
            continue
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        optimiser.zero_grad()
        at.step, at.batches_done = at.step + 1, n
        rate = (at.seen - seen_before) / (time.time() - started)
        bar.set_postfix(loss=f"{at.running:.4f}", rows_per_s=f"{rate:.2f}")
        if at.step % cfg.eval_every_for(stage) == 0 or n == len(batches):
            if check(stage, at, evaluate, stopper, steps, rate):
                break
            if progress is not None and ranks.is_main:
                resume.save(progress, at, params, stopper.best_state, optimiser)
    bar.close()
    stopper.restore_best()
    model.eval()
    if progress is not None and ranks.is_main:
        progress.unlink(missing_ok=True)  # the stage is complete: a rerun starts afresh
    wall = time.time() - started
    return {"recipe": cfg.recipe, "recipe_overrides": list(cfg.recipe_overrides),  # what trained this stage
            "history_style": cfg.history_style, "group_size": cfg.group_size, "pairwise_weight": cfg.pairwise_weight,
            "rows_seen": at.seen, "optimiser_steps": at.step, "best_step": stopper.best_step,
            "valid_auc_before": at.history[0]["valid_auc"], "valid_auc_best": round(stopper.best_metric, 4),
            "wall_s": round(wall, 1), "rows_per_s": round((at.seen - seen_before) / max(wall, 1e-9), 2),
            "history": at.history}


def check(stage: str, at: resume.Position, evaluate: Callable[[], tuple[float, float]], stopper: EarlyStopping,
          steps: int, rate: float) -> bool:
    """One early-stopping check, logged and recorded in ``at``; True when training should stop."""
    auc, uauc = evaluate()
    at.history.append({"step": at.step, "valid_auc": round(auc, 4), "valid_uauc": round(uauc, 4),
                       "loss": round(at.running, 4)})
    log(f"[{stage}] step {at.step}/{steps}: loss {at.running:.4f}, early-stop AUC {auc:.4f} UAUC {uauc:.4f} "
        f"(best {stopper.best_metric:.4f}), {rate:.2f} rows/s")
    stop = stopper.observe(at.step, auc)
    at.best_metric, at.best_step, at.bad_checks = stopper.best_metric, stopper.best_step, stopper.bad_checks
    if stop:
        log(f"[{stage}] early stop at step {at.step}")
    return stop


def start_or_resume(stage: str, progress: Path | None, key: str, params: list[torch.nn.Parameter],
                    optimiser: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                    stopper: EarlyStopping, evaluate: Callable[[], tuple[float, float]]) -> resume.Position:
    """This run's saved position, put back (parameters, AdamW, random state, schedule, stopper);
    else a fresh start, whose first check (before any step) is the stopper's starting point."""
    saved = resume.load(progress, key, log) if progress is not None else None
    if saved is None:
        auc, uauc = evaluate()
        stopper.observe(0, auc)
        return resume.Position(key, best_metric=auc, history=[{"step": 0, "valid_auc": round(auc, 4),
                                                               "valid_uauc": round(uauc, 4)}])
    at, tensors = saved
    best = resume.restore(tensors, params, optimiser)
    stopper.resume(at.best_metric, at.best_step, at.bad_checks, best)
    scheduler.last_epoch = at.step  # the schedule's rate after ``at.step`` steps, as LambdaLR computes it
    rates = [base * factor(at.step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimiser.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
    log(f"[{stage}] resuming from {progress}: step {at.step}, {at.seen} rows seen")
    return at


def early_stop_auc(pipeline: Pipeline, eval_rows: pd.DataFrame, method: str) -> Callable[[], tuple[float, float]]:
    """The early-stopping check: ``method``'s AUC on ``eval_rows`` (what decides) and its UAUC
    (logged: on 400 random rows few users have both classes, too noisy to decide), scored in eval
    mode (the model is put back in train mode after)."""
    labels = eval_rows["label"].to_numpy()

    def evaluate() -> tuple[float, float]:
        pipeline.model.eval()
        scores = pipeline.score_rows(eval_rows, method).numpy()
        pipeline.model.train()
        frame = pd.DataFrame({"user": eval_rows["user"].to_numpy(), "label": labels, "score": scores})
        per_user = [roc_auc_score(g["label"], g["score"]) for _, g in frame.groupby("user") if g["label"].nunique() == 2]
        return float(roc_auc_score(labels, scores)), float(np.mean(per_user)) if per_user else float("nan")

    return evaluate


def _copy_into(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for param, value in zip(params, saved):
            param.copy_(value)


def _train_only(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> None:
    """Everything but ``params`` frozen (DDP reduces exactly ``params``)."""
    trainable = {id(p) for p in params}
    for param in model.parameters():
        if id(param) not in trainable:
            param.requires_grad_(False)


def micro_batches(rows: pd.DataFrame, size: int, cfg: TrainConfig, ranks: Ranks) -> list[pd.DataFrame]:
    """``rows`` in micro-batches of ``size`` rows; with ``cfg.group_size > 1``, of whole user groups
    (``grouped.user_groups``: one user's consecutive rows showing one history), at least ``size``
    rows each, so a group is never split between two batches."""
    if cfg.group_size <= 1:
        return [rows.iloc[s: s + size] for s in range(0, len(rows), size)]
    if ranks.active:
        raise InputError("grouped training (--group-size > 1) runs in one process, not under torchrun")  # run() says so first
    grouped = user_groups(rows, cfg.group_size, cfg.seed)
    starts = np.flatnonzero(np.r_[True, grouped["group"].to_numpy()[1:] != grouped["group"].to_numpy()[:-1]])
    batches, first, count = [], 0, 0
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(grouped)
        count += end - start
        if count >= size or end == len(grouped):
            batches.append(grouped.iloc[first:end])
            first, count = end, 0
    return batches


def grouped_loss(pipeline: Pipeline, batch: pd.DataFrame, with_cf: bool, pairwise_weight: float) -> torch.Tensor:
    """BCE (+ the within-group pairwise term) of a micro-batch of user groups, each group's prefix run
    once (``grouped.grouped_logits``: same logits and gradients as whole prompts, tested)."""
    model = pipeline.model
    users, items = pipeline.cf_vectors(batch, for_tokens=True) if with_cf else (None, None)
    labels = torch.tensor(batch["label"].to_numpy(), dtype=torch.float32, device=model.device)
    group_ids = torch.tensor(batch["group"].to_numpy(), device=model.device)
    members = [np.flatnonzero(batch["group"].to_numpy() == g).tolist() for g in dict.fromkeys(batch["group"])]
    with model.autocast():
        logits = grouped_logits(model, pipeline.prompts(batch, with_cf), members, users, items).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    if pairwise_weight:
        loss = loss + pairwise_weight * pairwise_loss(logits, labels, group_ids)
    return loss


def micro_batch_loss(pipeline: Pipeline, trained: torch.nn.Module, batch: pd.DataFrame, with_cf: bool,
                     accumulate: bool, pairwise_weight: float = 0.0) -> torch.Tensor:
    """The binary cross-entropy of one global micro-batch, on this rank's share of it
    (``accumulate``: a micro-batch before the optimiser step, whose gradients DDP does not sync yet).
    A batch of user groups (a ``group`` column) takes the grouped path (one process)."""
    if "group" in batch:
        return grouped_loss(pipeline, batch, with_cf, pairwise_weight)
    model, ranks = pipeline.model, pipeline.ranks
    share, weight = ranks.share(batch)
    users, items = pipeline.cf_vectors(share, for_tokens=True) if with_cf else (None, None)
    labels = torch.tensor(share["label"].to_numpy(), dtype=torch.float32, device=model.device)
    with ranks.no_sync(trained, accumulate=accumulate), model.autocast():
        logits = trained(pipeline.prompts(share, with_cf), users, items).float()
    if ranks.active:  # this rank's sum over the global micro-batch's size: DDP's mean is the global mean
        per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (per_row * weight.to(per_row.device)).sum() * ranks.world / len(batch)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


# ------------------------------------------------------------------------------ stages

def stage_cf(cf_name: str, dataset: Dataset, cfg: TrainConfig, out_dir: Path, manifest: dict, ranks: Ranks) -> dict:
    """The CF model (cheap: every rank fits the same one from the same seed; rank 0 saves it)."""
    spec = backend(cf_name)
    if spec.trainer is None:
        raise InputError(f"unknown CF model {cf_name!r}: the cf stage trains one of {', '.join(trainable_backends())}; "
                         "bring other vectors with `python -m collm_demo import-embeddings`")
    train, cf, info = spec.trainer(dataset, cfg, log)
    if ranks.is_main:
        cf.save(out_dir / spec.cf_file)
    record_cf(manifest, cf_name, cf, latent_dim=cfg.cf_dim, train_rows=int(len(train)),
              weight_decay=cfg.cf_weight_decay)
    return info | {"rows_per_s": round(len(train) * len(info["history"]) / max(info["wall_s"], 1e-9), 1)}


def stage_lora(llm: LoadedLLM, dataset: Dataset, cfg: TrainConfig, out_dir: Path, eval_rows: pd.DataFrame,
               runtime: Runtime, ranks: Ranks) -> dict:
    """Stage 1: LoRA on the text-only prompt; saved to ``out_dir/lora``; ``llm`` left plain."""
    base = load_pipeline(out_dir, llm=llm, dataset=dataset, runtime=runtime, with_lora=False, ranks=ranks)
    lora_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(LORA_TARGETS), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(llm.model, lora_cfg)
    model = CoLLM(peft_model, llm.tokenizer, base.model.projector, runtime=runtime, history_style=cfg.history_style)
    pipeline = Pipeline(dataset, llm, model, base.cf, base.manifest, True, "", base.cf_name, ranks)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    for param in params:
        param.requires_grad_(True)
    info = train_llm_stage(pipeline, "lora", params, lora_rows(dataset, cfg), eval_rows, cfg, cfg.lora_lr, 0.0,
                           progress=out_dir / PROGRESS_DIR / "lora.safetensors")
    if ranks.is_main:
        peft_model.save_pretrained(str(out_dir / "lora"), safe_serialization=True)
    llm.model = peft_model.unload()  # back to the plain LLM for the next stage
    for param in llm.model.parameters():
        param.requires_grad_(False)
    return info | {"rows_from": "train (seeded random sample)",
                   "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                            "target_modules": list(LORA_TARGETS)}}


def stage_projector(cf_name: str, llm: LoadedLLM, dataset: Dataset, cfg: TrainConfig, out_dir: Path,
                    eval_rows: pd.DataFrame, runtime: Runtime, ranks: Ranks) -> dict:
    """Stage 2: only the projector trains, on the CF prompt, LLM and LoRA frozen."""
    base = load_pipeline(out_dir, llm=llm, dataset=dataset, runtime=runtime, cf_name=cf_name, ranks=ranks,
                         replaces_projector=True)
    if base.cf is None:
        raise CheckpointError(f"stage 'projector' needs a CF model in {out_dir}: run the 'cf' stage first")
    if not base.has_lora:
        log("[projector] warning: no stage-1 LoRA found; stage 2 on the base LLM")
    if base.history_style != cfg.history_style:  # the projector learns to help the LoRA read one kind of prompt
        raise InputError(f"the LoRA in {out_dir} was trained on prompts with the {base.history_style} history, "
                         f"this stage 2 on the {cfg.history_style} one: train it with --history-style "
                         f"{base.history_style}, or first retrain the LoRA (--stage lora --history-style {cfg.history_style})")
    torch.manual_seed(cfg.seed)
    foldin_l2 = cfg.projector_foldin_l2 if cfg.projector_foldin_l2 is not None else base.cf.foldin_l2
    token_norm = cfg.projector_token_norm
    if token_norm == 0:  # a word's: the mean L2 norm of the LLM's input embeddings
        token_norm = round(float(llm.model.get_input_embeddings().weight.float().norm(dim=-1).mean()), 4)
    projector = Projector(base.cf.dim, llm.hidden_size, foldin_l2=foldin_l2, separate_users=cfg.separate_projectors,
                          token_norm=token_norm).to(runtime.device)
    spec = backend(cf_name)
    lora = stage2_lora(base, out_dir, spec) if cfg.projector_lora_lr > 0 else None
    model = CoLLM(base.model.llm, llm.tokenizer, projector, runtime=runtime, cf_adapter=lora and spec.adapter_name,
                  history_style=cfg.history_style)
    pipeline = Pipeline(dataset, llm, model, base.cf, base.manifest, base.has_lora, "", cf_name, ranks)
    info = train_llm_stage(pipeline, "projector", list(projector.parameters()), projector_rows(dataset, cfg),
                           eval_rows, cfg, cfg.projector_lr, cfg.projector_weight_decay,
                           extra=(lora, cfg.projector_lora_lr) if lora else None,
                           progress=out_dir / PROGRESS_DIR / f"{spec.projector_stage}.safetensors")
    if ranks.is_main:
        save_projector(projector.cpu(), out_dir / spec.projector_file, cf_name)
        save_stage2_lora(model.llm, out_dir, spec, trained=lora is not None)
    return info | {"rows_from": "valid minus the early-stop rows (seeded random sample)",
                   "projector": {"cf": cf_name, "cf_dim": base.cf.dim, "hidden": projector.expand * base.cf.dim,
                                 "separate_users": projector.separate_users, "token_norm": token_norm,
                                 "user_foldin_l2": foldin_l2, "out": llm.hidden_size, "file": spec.projector_file},
                   "stage2_lora": ({"dir": spec.lora_dir, "lr": cfg.projector_lora_lr, "from": "lora (stage 1)"}
                                   if lora else None)}


def stage2_lora(base: Pipeline, out_dir: Path, spec) -> list[torch.nn.Parameter]:
    """A trainable copy of the stage-1 LoRA for the CF prompts (LLaRA's lesson: the LLM learns to
    read the new tokens with them), added to the peft model as ``spec.adapter_name``; the text-only
    mode keeps stage 1's. Returns the copy's parameters."""
    if not base.has_lora:
        raise CheckpointError("--projector-lora-lr needs a stage-1 LoRA (lora/) to start from: run the 'lora' stage first")
    peft_model, name = base.model.llm, spec.adapter_name
    if name in peft_model.peft_config:  # an earlier stage 2's copy, loaded with the folder: start over
        peft_model.set_adapter("default")
        peft_model.delete_adapter(name)
    peft_model.load_adapter(str(out_dir / "lora"), adapter_name=name, is_trainable=True)
    peft_model.set_adapter(name)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n and f".{name}." in n]
    for param in params:
        param.requires_grad_(True)
    return params


def save_stage2_lora(peft_model, out_dir: Path, spec, trained: bool) -> None:
    """Stage 2's LoRA as ``lora_<cf>/`` (the adapter's tensors and config, as peft reads them); a
    stage 2 without one removes an earlier copy, which belongs to the projector it replaces."""
    folder = out_dir / spec.lora_dir
    if not trained:
        shutil.rmtree(folder, ignore_errors=True)
        return
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(peft_model, adapter_name=spec.adapter_name)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    config = copy.deepcopy(peft_model.peft_config[spec.adapter_name])
    config.inference_mode = True  # as peft's own save_pretrained writes it
    config.save_pretrained(str(folder))
    peft_model.set_adapter("default")


def load_for_training(llm_name: str | None, cfg: TrainConfig, runtime: Runtime) -> LoadedLLM:
    """The frozen base, with the memory options a large model needs."""
    llm = load_llm(llm_name, dtype=torch.bfloat16 if cfg.load_bf16 else torch.float32)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad: the CF tokens are written
        # out of place (``CoLLM.embed``), so gradients still reach the projector through them.
        llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return llm


def run(stages: list[str], cfg: TrainConfig, out_dir: Path = CHECKPOINT_DIR, llm_name: str | None = None,
        data_path: str | None = None, quick: bool = False, argv: list[str] | None = None,
        cf_name: str = DEFAULT_CF, protocol: ProtocolConfig | None = None) -> dict:
    """Train ``stages`` in order into ``out_dir``; the manifest is written after each stage (by rank 0)."""
    # The device now; the precision once the LLM's width is known (on a CPU, ``auto`` times bf16 on
    # the model's own matmul shape before choosing it, see device.py). The CF stage runs in float32.
    runtime = Runtime(resolve_device(cfg.device), "fp32", "the CF stage runs in float32")
    ranks = init_ranks(runtime.device.type)
    grouped = [s for s in ("lora", "projector") if s in stages and cfg.for_stage(s).group_size > 1]
    if ranks.active and grouped:  # said before any stage runs, not after hours of stage 1
        raise InputError(f"the {' and '.join(grouped)} stage of recipe {cfg.recipe} trains on user groups "
                         "(--group-size > 1), which runs in one process, not under torchrun: there, train with "
                         "--recipe paper (row by row)")
    if runtime.device.type == "cuda" and ranks.active:
        runtime = Runtime(torch.device("cuda", ranks.local_rank), runtime.precision, runtime.reason)
    _QUIET["quiet"] = not ranks.is_main
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data_path, protocol)
    log(f"[data] {dataset.name}\n{format_counts(dataset.counts)}")
    log(f"[runtime] {runtime.device.type}" + (f", {ranks.world} processes" if ranks.active else ""))
    spec = backend(cf_name)
    manifest = read_manifest(out_dir)
    manifest.setdefault("stages", {})
    command = "python -m collm_demo " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    manifest |= {"command": command, "seed": cfg.seed, "quick": quick,
                 "data": {"name": dataset.name, "protocol": vars(dataset.protocol) | {"split": list(dataset.protocol.split)},
                          "counts": dataset.counts},
                 "config": cfg.to_dict(), "runtime": runtime.describe() | {"processes": ranks.world}}
    eval_rows = early_stop_rows(dataset, cfg)
    manifest["early_stop_rows"] = {"split": "valid", "n": int(len(eval_rows)), "seed": cfg.seed + 1}

    def record(key: str, info: dict) -> None:
        manifest["stages"][key] = {**info, "command": command, "runtime": manifest["runtime"]}
        if ranks.is_main:
            write_manifest(manifest, out_dir)
        ranks.barrier()  # the next stage reads what rank 0 has just written

    if "cf" in stages:
        record(spec.cf_stage, stage_cf(cf_name, dataset, cfg, out_dir, manifest, ranks))
    if "lora" in stages or "projector" in stages:
        llm = load_for_training(llm_name, cfg, runtime)
        manifest["llm"] = {"name": llm.name, "hidden_size": llm.hidden_size,
                           "layers": int(llm.model.config.num_hidden_layers)}
        precision, reason = resolve_precision(cfg.precision, runtime.device, "train", llm.hidden_size)
        if runtime.device.type == "cpu" and ranks.from_main(precision == "bf16") != (precision == "bf16"):
            precision, reason = ("bf16" if precision == "fp32" else "fp32"), "rank 0's measurement (" + reason + ")"
        runtime = Runtime(runtime.device, precision, reason)
        manifest["runtime"] = runtime.describe() | {"processes": ranks.world}
        log(f"[runtime] LLM stages: {runtime}")
    if "lora" in stages:
        record("lora", stage_lora(llm, dataset, cfg, out_dir, eval_rows, runtime, ranks))
    if "projector" in stages:
        record(spec.projector_stage, stage_projector(cf_name, llm, dataset, cfg, out_dir, eval_rows, runtime, ranks))
    return manifest
