"""How the CoLLM recipe scales with the LLM: random weights of known shapes, no download.

    python -m benchmarks.bench_scale                       # SmolLM2-135M shape on the CPU (a few minutes)
    python -m benchmarks.bench_scale --shapes all --device cuda --precision bf16 --save

For each shape it builds a randomly initialised causal LM (the architecture of a real model,
weights that need no hub), wraps it exactly as training does (``CoLLM`` + LoRA on q/v for stage
1, the projector for stage 2), runs a few optimiser steps of each stage and one scoring pass
through ``score_shared``, and prints rows/s, peak memory and the hours the paper's ML-1M recipe
would take at that speed (rows × epochs; CoLLM's Table I: 33,891 train / 7,331 test rows).
Random weights cost the same FLOPs as trained ones, so the speed is the real speed.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from collm_demo.collm import CoLLM, Projector, Prompt
from collm_demo.config import LORA_TARGETS, TrainConfig
from collm_demo.device import Runtime

# name: (config class, model class, shape) — the published shapes of these models.
SHAPES = {
    "smollm2-135m": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)),
    "qwen2-1.5b": (Qwen2Config, Qwen2ForCausalLM, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "llama-7b": (LlamaConfig, LlamaForCausalLM, dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)),
}
PAPER_ROWS = {"train": 33_891, "test": 7_331}  # CoLLM's ML-1M split (Table I)
PREFIX, SUFFIX = 150, 25  # tokens: a 10-movie history prompt and one candidate (measured on ML-100K prompts)


class Tokens:
    """What CoLLM needs of a tokenizer, for random ids."""

    pad_token_id, unk_token_id = 0, 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1] if "Yes" in text else [2]

    def decode(self, ids) -> str:
        return f"<{ids[0]}>"


def random_prompts(n: int, vocab: int, per_prefix: int, seed: int) -> list[Prompt]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, per_prefix):
        prefix = torch.randint(3, vocab, (PREFIX,), generator=g).tolist()
        for _ in range(min(per_prefix, n - start)):
            suffix = torch.randint(3, vocab, (SUFFIX,), generator=g).tolist()
            out.append(Prompt(prefix, suffix, user_slot=PREFIX // 2, item_slot=SUFFIX // 2))
    return out


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB; the process's peak


def time_steps(model: CoLLM, params, prompts, steps: int, batch: int, cf_dim: int, with_cf: bool) -> float:
    """Seconds per training row over ``steps`` optimiser steps (after one warm-up step)."""
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    timings = []
    for step in range(steps + 1):
        rows = prompts[(step * batch) % len(prompts):][:batch]
        users = torch.randn(len(rows), cf_dim) if with_cf else None
        items = torch.randn(len(rows), cf_dim) if with_cf else None
        started = time.perf_counter()
        with model.autocast():
            logits = model(rows, users, items).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step pays for allocation and kernel selection
            timings.append((time.perf_counter() - started) / len(rows))
    model.eval()
    return sum(timings) / len(timings)


def run_shape(name: str, runtime: Runtime, steps: int, batch: int, score_rows: int, epochs: float,
              gradient_checkpointing: bool) -> dict:
    config_cls, model_cls, shape = SHAPES[name]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if runtime.bf16 else torch.float32  # the frozen base in bf16 when computing in bf16
    llm = model_cls(config_cls(**shape, max_position_embeddings=2048, pad_token_id=0)).to(dtype).to(runtime.device)
    llm.eval().requires_grad_(False)
    if gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cf_dim = 64
    params_m = sum(p.numel() for p in llm.parameters()) / 1e6
    tokenizer = Tokens(shape["vocab_size"])
    prompts = random_prompts(max(score_rows, batch * (steps + 1)), shape["vocab_size"], per_prefix=2, seed=1)
    cfg = TrainConfig()
    # stage 1: LoRA on the text-only prompt (no CF slots)
    lora = get_peft_model(llm, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                          target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM"))
    text_prompts = [Prompt(p.prefix, p.suffix, None, None) for p in prompts]
    model = CoLLM(lora, tokenizer, None, runtime=runtime)
    lora_params = [p for n, p in lora.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    s1 = time_steps(model, lora_params, text_prompts, steps, batch, cf_dim, with_cf=False)
    for p in lora_params:
        p.requires_grad_(False)
    # stage 2: only the projector trains, CF tokens written into the prompt
    projector = Projector(cf_dim, shape["hidden_size"]).to(runtime.device)
    model = CoLLM(lora, tokenizer, projector, runtime=runtime)
    s2 = time_steps(model, list(projector.parameters()), prompts, steps, batch, cf_dim, with_cf=True)
    # scoring: the evaluation's path (shared prefixes, two candidates per prefix as on the test split)
    rows = prompts[:score_rows]
    users, items = torch.randn(len(rows), cf_dim), torch.randn(len(rows), cf_dim)
    model.score_shared(rows[:4], users[:4], items[:4])  # warm-up
    started = time.perf_counter()
    model.score_shared(rows, users, items)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    score = (time.perf_counter() - started) / len(rows)
    hours = {"stage1": PAPER_ROWS["train"] * epochs * s1 / 3600, "stage2": PAPER_ROWS["train"] * epochs * s2 / 3600,
             "test_scoring": PAPER_ROWS["test"] * score / 3600}
    return {"shape": name, "params_m": round(params_m, 1), "runtime": str(runtime),
            "stage1_rows_per_s": round(1 / s1, 2), "stage2_rows_per_s": round(1 / s2, 2),
            "score_rows_per_s": round(1 / score, 2), "peak_memory_gb": round(peak_memory_gb(runtime.device), 2),
            "paper_recipe_hours": {k: round(v, 2) for k, v in hours.items()}, "epochs": epochs,
            "batch": batch, "gradient_checkpointing": gradient_checkpointing}


def precision_check(device: torch.device, repeats: int = 3) -> dict:
    """Does ``auto`` pick the faster precision here? The 135M shape scoring 20 prompts, both ways."""
    config_cls, model_cls, shape = SHAPES["smollm2-135m"]
    torch.manual_seed(0)
    llm = model_cls(config_cls(**shape, max_position_embeddings=2048, pad_token_id=0)).to(device).eval()
    prompts = random_prompts(20, shape["vocab_size"], per_prefix=20, seed=2)
    users, items = torch.randn(20, 64), torch.randn(20, 64)
    seconds = {}
    for precision in ("fp32", "bf16"):
        model = CoLLM(llm, Tokens(shape["vocab_size"]), Projector(64, shape["hidden_size"]).to(device),
                      runtime=Runtime(device, precision))
        model.score(prompts[:2], users[:2], items[:2])  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.score(prompts, users, items, batch_size=20)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        seconds[precision] = round(min(times), 3)
    chosen = Runtime.choose(device.type, "auto").precision
    faster = min(seconds, key=seconds.get)
    return {"seconds": seconds, "auto": chosen, "faster": faster, "auto_is_faster": chosen == faster}


def scale_table(record: dict) -> str:
    """The table of docs/scale.md, from a saved run."""
    figures = record["figures"]
    check = figures["precision_check"]
    lines = [f"Measured by `{record['command']}` on {record['machine']} ({figures['runtime']['device']}, "
             f"{figures['runtime']['precision']}), {record['date']}.", "",
             "| shape | parameters | stage 1 rows/s | stage 2 rows/s | scoring rows/s | peak memory | "
             "ML-1M recipe, 1 epoch: stage 1 / stage 2 / test scoring |", "|---|---|---|---|---|---|---|"]
    for r in figures["shapes"]:
        h = r["paper_recipe_hours"]
        lines.append(f"| {r['shape']} | {r['params_m']:.0f}M | {r['stage1_rows_per_s']} | {r['stage2_rows_per_s']} | "
                     f"{r['score_rows_per_s']} | {r['peak_memory_gb']} GB | {h['stage1']:.1f} h / {h['stage2']:.1f} h / "
                     f"{h['test_scoring']:.2f} h |")
    lines += ["", f"Precision check (135M shape, 20 prompts): float32 {check['seconds']['fp32']} s, bf16 autocast "
                  f"{check['seconds']['bf16']} s; `auto` picks {check['auto']}, the faster one is {check['faster']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="smollm2-135m", help=f"comma-separated of {', '.join(SHAPES)}, or all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--score-rows", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs of the recipe to project")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/bench_scale.json")
    parser.add_argument("--write-doc", action="store_true", help="only rewrite docs/scale.md from the saved run")
    args = parser.parse_args(argv)
    if args.write_doc:
        write_doc()
        return
    runtime = Runtime.choose(args.device, args.precision)
    shapes = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    print(f"runtime: {runtime} ({runtime.describe()}), threads {torch.get_num_threads()}")
    check = precision_check(runtime.device)
    print(f"precision: 20 prompts × {PREFIX + SUFFIX} tokens, whole-prompt scoring: fp32 {check['seconds']['fp32']} s, "
          f"bf16 {check['seconds']['bf16']} s → auto picks {check['auto']}, the faster is {check['faster']} "
          f"({'auto is right' if check['auto_is_faster'] else 'AUTO IS NOT THE FASTER HERE'})", flush=True)
    results = []
    for name in shapes:
        started = time.time()
        result = run_shape(name, runtime, args.steps, args.batch, args.score_rows, args.epochs,
                           args.gradient_checkpointing)
        result["wall_s"] = round(time.time() - started, 1)
        results.append(result)
        h = result["paper_recipe_hours"]
        print(f"{name:13s} {result['params_m']:7.1f}M  stage 1 {result['stage1_rows_per_s']:7.2f} rows/s  "
              f"stage 2 {result['stage2_rows_per_s']:7.2f} rows/s  scoring {result['score_rows_per_s']:7.2f} rows/s  "
              f"peak {result['peak_memory_gb']:.2f} GB  → ML-1M recipe: stage 1 {h['stage1']:.1f} h, "
              f"stage 2 {h['stage2']:.1f} h, test {h['test_scoring']:.2f} h per epoch/pass "
              f"({result['wall_s']} s)", flush=True)
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    if args.save:
        from benchmarks.report import save

        save("bench_scale", {"runtime": runtime.describe(), "precision_check": check, "shapes": results}, argv,
             update_doc=False)
        write_doc()


def write_doc() -> None:
    import json

    from collm_demo.markers import replace_block

    root = Path(__file__).resolve().parent.parent
    record = json.loads((root / "benchmarks" / "results" / "bench_scale.json").read_text())
    if not replace_block(root / "docs" / "scale.md", "scale", scale_table(record)):
        raise SystemExit("docs/scale.md has no scale block")
    print("table written into docs/scale.md")


if __name__ == "__main__":
    main()
