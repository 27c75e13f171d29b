"""Training: stage `cf` (MF), stage `lora` (stage 1, text-only), stage `projector` (stage 2).

Which rows train what (and why):
* MF is fit on every train interaction; early stopping on valid AUC.
* Stage 1 (LoRA, text-only prompts) trains on a seeded random sample of train rows,
  spread over many users (the last train rows come from very few users).
* Stage 2 (projector) trains on valid rows. MF has seen the labels of train rows, so their
  CF vectors "know" the answer; a projector fit there learns to trust CF more than it
  deserves on unseen rows. Valid rows are unseen by MF and are distributed like test rows
  (most of their users are new and are folded in from their history).
* Early stopping for both LLM stages uses one fixed sample of valid rows that is never
  trained on.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from .cf.mf import train_mf
from .collm import CoLLM, Projector
from .config import CHECKPOINT_DIR, TrainConfig
from .data import Dataset, load_dataset
from .foldin import user_l2
from .llm import load_llm
from .pipeline import Pipeline, load_pipeline, read_manifest, save_projector, write_manifest

STAGES = ("cf", "lora", "projector")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_rows(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if n >= len(rows):
        return rows.sample(frac=1.0, random_state=seed)
    return rows.sample(n=n, random_state=seed)


def early_stop_rows(dataset: Dataset, cfg: TrainConfig) -> pd.DataFrame:
    return sample_rows(dataset.split("valid"), cfg.eval_rows, cfg.seed + 1)


def cosine_with_warmup(optimiser, total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def train_llm_stage(pipeline: Pipeline, stage: str, params: list[torch.nn.Parameter],
                    rows: pd.DataFrame, eval_rows: pd.DataFrame, cfg: TrainConfig, lr: float,
                    weight_decay: float) -> dict:
    """One pass over ``rows`` (batch × grad-accum), early stopping on ``eval_rows`` AUC.
    The best parameters (by early-stopping AUC) are restored at the end."""
    model: CoLLM = pipeline.model
    method = pipeline.collm_method if stage == "projector" else "text_only"
    with_cf = stage == "projector"
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, math.ceil(len(rows) / (cfg.batch_size * cfg.grad_accum)))
    scheduler = cosine_with_warmup(optimiser, steps, cfg.warmup_frac)
    labels_eval = eval_rows["label"].to_numpy()

    def evaluate() -> float:
        model.eval()
        scores = pipeline.score_rows(eval_rows, method)
        model.train()
        return float(roc_auc_score(labels_eval, scores.numpy()))

    start_auc = evaluate()
    best = {"auc": start_auc, "step": 0, "state": [p.detach().clone() for p in params]}
    history = [{"step": 0, "valid_auc": round(start_auc, 4)}]
    log(f"[{stage}] {len(rows)} rows, {steps} optimiser steps; early-stop AUC before training {start_auc:.4f}")
    model.train()
    started, seen, step, bad_checks = time.time(), 0, 0, 0
    batches = [rows.iloc[s: s + cfg.batch_size] for s in range(0, len(rows), cfg.batch_size)]
    bar = tqdm(batches, desc=f"{stage}", unit="batch", file=sys.stderr, mininterval=5)
    running = None
    for n, batch in enumerate(bar, 1):
        prompts = pipeline.prompts(batch, with_cf)
        users = items = None
        if with_cf:
            users, items = pipeline.cf_vectors(batch, for_tokens=True)
        with model.autocast():
            logits = model(prompts, users, items)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), torch.tensor(batch["label"].to_numpy(), dtype=torch.float32))
        (loss / cfg.grad_accum).backward()
        seen += len(batch)
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if n % cfg.grad_accum == 0 or n == len(batches):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad()
            step += 1
            bar.set_postfix(loss=f"{running:.4f}", rows_per_s=f"{seen / (time.time() - started):.2f}")
            if step % cfg.eval_every == 0 or n == len(batches):
                auc = evaluate()
                history.append({"step": step, "valid_auc": round(auc, 4), "loss": round(running, 4)})
                log(f"[{stage}] step {step}/{steps}: loss {running:.4f}, early-stop AUC {auc:.4f} "
                    f"(best {best['auc']:.4f}), {seen / (time.time() - started):.2f} rows/s")
                if auc > best["auc"]:
                    best = {"auc": auc, "step": step, "state": [p.detach().clone() for p in params]}
                    bad_checks = 0
                else:
                    bad_checks += 1
                    if bad_checks >= cfg.patience:
                        log(f"[{stage}] early stop at step {step}")
                        break
    bar.close()
    with torch.no_grad():
        for param, saved in zip(params, best["state"]):
            param.copy_(saved)
    model.eval()
    wall = time.time() - started
    return {"rows_seen": seen, "optimiser_steps": step, "best_step": best["step"],
            "valid_auc_before": round(start_auc, 4), "valid_auc_best": round(best["auc"], 4),
            "wall_s": round(wall, 1), "rows_per_s": round(seen / wall, 2), "history": history}


CF_TRAINERS = ("mf", "lightgcn", "sasrec")  # trained by the `cf` stage; other names come from import-embeddings


def train_cf_model(name: str, dataset: Dataset, cfg: TrainConfig):
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    common = dict(dim=cfg.cf_dim, epochs=cfg.cf_epochs, lr=cfg.cf_lr, weight_decay=cfg.cf_weight_decay,
                  patience=cfg.cf_patience, seed=cfg.seed, log=log)
    if name == "mf":
        return train, *train_mf(train, dataset.split("valid"), **common)
    if name == "lightgcn":
        from .cf.lightgcn import train_lightgcn

        return train, *train_lightgcn(train, dataset.split("valid"), **common)
    if name == "sasrec":
        from .cf.sasrec import train_sasrec

        common |= {"lr": 1e-3}  # Adam on a transformer: the MF learning rate is too high
        return train, *train_sasrec(dataset.split("train"), dataset.split("valid"), **common)
    raise ValueError(f"unknown CF model {name!r}: the cf stage trains one of {CF_TRAINERS}; "
                     "bring other vectors with `python -m collm_demo import-embeddings`")


def run(stages: list[str], cfg: TrainConfig, out_dir: Path = CHECKPOINT_DIR, llm_name: str | None = None,
        data_path: str | None = None, quick: bool = False, argv: list[str] | None = None,
        cf_name: str = "mf") -> dict:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data_path)
    from .data import format_counts

    log(f"[data] {dataset.name}\n{format_counts(dataset.counts)}")
    manifest = read_manifest(out_dir)
    manifest.setdefault("stages", {})
    manifest["command"] = "python -m collm_demo " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    manifest["seed"] = cfg.seed
    manifest["quick"] = quick
    manifest["data"] = {"name": dataset.name, "protocol": vars(dataset.protocol) | {"split": list(dataset.protocol.split)},
                        "counts": dataset.counts}
    manifest["config"] = cfg.to_dict()
    eval_rows = early_stop_rows(dataset, cfg)
    manifest["early_stop_rows"] = {"split": "valid", "n": int(len(eval_rows)), "seed": cfg.seed + 1}

    stage_key = {"cf": "cf" if cf_name == "mf" else f"cf_{cf_name}",
                 "projector": "projector" if cf_name == "mf" else f"projector_{cf_name}", "lora": "lora"}
    if "cf" in stages:
        train, cf, info = train_cf_model(cf_name, dataset, cfg)
        cf.save(out_dir / f"cf_{cf_name}.safetensors")
        manifest.setdefault("cf", {})[cf_name] = {
            "file": f"cf_{cf_name}.safetensors", "kind": cf_name, "latent_dim": cfg.cf_dim,
            "vector_dim": cf.dim, "users": len(cf.user_ids), "items": len(cf.item_ids),
            "train_rows": int(len(train)), "weight_decay": cfg.cf_weight_decay}
        manifest["stages"][stage_key["cf"]] = info | {"command": manifest["command"],
            "rows_per_s": round(len(train) * len(info["history"]) / max(info["wall_s"], 1e-9), 1)}
        write_manifest(manifest, out_dir)

    if "lora" in stages or "projector" in stages:
        llm = load_llm(llm_name)
        manifest["llm"] = {"name": llm.name, "hidden_size": llm.hidden_size,
                           "layers": int(llm.model.config.num_hidden_layers)}

    if "lora" in stages:
        from peft import LoraConfig, get_peft_model

        pipeline = load_pipeline(out_dir, llm=llm, dataset=dataset, bf16=cfg.bf16, with_lora=False)
        lora_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=["q_proj", "v_proj"], bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(llm.model, lora_cfg)
        pipeline.model.llm = peft_model
        pipeline.has_lora = True
        params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        for param in params:
            param.requires_grad_(True)
        rows = sample_rows(dataset.split("train"), cfg.lora_rows, cfg.seed)
        info = train_llm_stage(pipeline, "lora", params, rows, eval_rows, cfg, cfg.lora_lr, 0.0)
        peft_model.save_pretrained(str(out_dir / "lora"), safe_serialization=True)
        manifest["stages"]["lora"] = info | {"command": manifest["command"], "rows_from": "train (seeded random sample)",
                                             "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha,
                                                      "dropout": cfg.lora_dropout,
                                                      "target_modules": ["q_proj", "v_proj"]}}
        write_manifest(manifest, out_dir)
        llm.model = peft_model.unload()  # back to the plain LLM for the next stage
        for param in llm.model.parameters():
            param.requires_grad_(False)

    if "projector" in stages:
        pipeline = load_pipeline(out_dir, llm=llm, dataset=dataset, bf16=cfg.bf16, cf_name=cf_name)
        if pipeline.cf is None:
            raise ValueError(f"stage 'projector' needs a CF model in {out_dir}: run the 'cf' stage first")
        if not pipeline.has_lora:
            log("[projector] warning: no stage-1 LoRA found; stage 2 on the base LLM")
        torch.manual_seed(cfg.seed)
        foldin_l2 = cfg.projector_foldin_l2 if cfg.projector_foldin_l2 is not None else user_l2(pipeline.cf)
        projector = Projector(pipeline.cf.dim, llm.hidden_size, foldin_l2=foldin_l2)
        pipeline.model.projector = projector
        params = list(projector.parameters())
        pool = dataset.split("valid").drop(index=eval_rows.index)
        rows = sample_rows(pool, cfg.projector_rows, cfg.seed)
        info = train_llm_stage(pipeline, "projector", params, rows, eval_rows, cfg,
                               cfg.projector_lr, cfg.projector_weight_decay)
        save_projector(projector, out_dir / f"projector_{cf_name}.safetensors", cf_name)
        manifest["stages"][stage_key["projector"]] = info | {
            "command": manifest["command"], "rows_from": "valid minus the early-stop rows (seeded random sample)",
            "projector": {"cf": cf_name, "cf_dim": pipeline.cf.dim, "hidden": 10 * pipeline.cf.dim,
                          "user_foldin_l2": foldin_l2,
                          "out": llm.hidden_size, "file": f"projector_{cf_name}.safetensors"}}
        write_manifest(manifest, out_dir)
    return manifest
