"""Evaluation speed and the precision check behind it.

    python -m benchmarks.bench_eval [--rows 400] [--method text_only] [--save]

Scores the same seeded subset of test rows three ways and prints time and AUC:
  1. float32, batches in data order (the naive way);
  2. float32, batches sorted by length (less padding);
  3. bf16 autocast, sorted (what `evaluate` uses).
bf16 is only acceptable if its AUC stays within 1e-3 of float32; the script prints the
difference and the extrapolated time for the full test split, for all three LLM methods.
``--save`` writes the figures to benchmarks/results/bench_eval.json and regenerates the
table in docs/performance.md. Run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from sklearn.metrics import roc_auc_score

from collm_demo.config import CHECKPOINT_DIR
from collm_demo.pipeline import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--method", default="collm")
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR))
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/bench_eval.json and regenerate docs/performance.md")
    args = parser.parse_args()
    pipeline = load_pipeline(args.checkpoints)
    test = pipeline.dataset.split("test")
    rows = test.sample(n=min(args.rows, len(test)), random_state=0)
    labels = rows["label"].to_numpy()
    model = pipeline.model
    with_cf = args.method == "collm"
    prompts = pipeline.prompts(rows, with_cf)
    users, items = pipeline.cf_vectors(rows) if with_cf else (None, None)

    def naive():
        out = []
        with torch.no_grad(), model.adapter(args.method != "zero_shot"):
            for s in range(0, len(prompts), 16):
                logits = model(prompts[s: s + 16], None if users is None else users[s: s + 16],
                               None if items is None else items[s: s + 16])
                out.append(torch.sigmoid(logits))
        return torch.cat(out)

    results = {}
    model.bf16 = False
    for name, fn in (("fp32 data order", naive),
                     ("fp32 sorted by length", lambda: model.score(prompts, users, items, use_lora=args.method != "zero_shot")),
                     ("bf16 sorted by length", None)):
        if fn is None:
            model.bf16 = True
            fn = lambda: model.score(prompts, users, items, use_lora=args.method != "zero_shot")  # noqa: E731
        start = time.perf_counter()
        scores = fn()
        elapsed = time.perf_counter() - start
        results[name] = (elapsed, float(roc_auc_score(labels, scores.numpy())), scores)
        print(f"{name:24s}: {elapsed:7.1f} s  ({elapsed / len(rows) * 1000:.0f} ms/row)  AUC {results[name][1]:.4f}",
              flush=True)
    base_t, base_auc, base_scores = results["fp32 data order"]
    bf_t, bf_auc, bf_scores = results["bf16 sorted by length"]
    full = len(test)
    print(f"\nrows: {len(rows)} of {full} test rows, method {args.method}, threads {torch.get_num_threads()}")
    print(f"bf16 vs fp32: |AUC diff| {abs(bf_auc - base_auc):.4f} (must be <= 0.001), "
          f"max |score diff| {float((bf_scores - base_scores).abs().max()):.4f}")
    print(f"extrapolated full test split, 3 LLM methods: naive {3 * base_t / len(rows) * full / 60:.1f} min, "
          f"evaluate's way {3 * bf_t / len(rows) * full / 60:.1f} min")
    print(f"SPEED-UP sorted+bf16 over naive fp32: {base_t / bf_t:.2f}x")
    if args.save:
        from benchmarks.report import save

        save("bench_eval", {
            "rows": len(rows), "method": args.method, "test_rows": full, "threads": torch.get_num_threads(),
            "seconds": {name: round(r[0], 2) for name, r in results.items()},
            "auc": {name: round(r[1], 4) for name, r in results.items()},
            "naive_full_min": round(3 * base_t / len(rows) * full / 60, 1),
            "evaluate_way_full_min": round(3 * bf_t / len(rows) * full / 60, 1),
            "bf16_fp32_auc_diff": round(abs(bf_auc - base_auc), 4),
            "bf16_fp32_max_score_diff": round(float((bf_scores - base_scores).abs().max()), 4),
            "speedup": round(base_t / bf_t, 2)}, sys.argv[1:])


if __name__ == "__main__":
    main()
