"""Scoring latency: naive full-prompt batches vs shared-prefix (KV cache) for one user.

    python -m benchmarks.bench_scoring [--repeats 3] [--checkpoints checkpoints] [--save]

For K = 1, 10, 20, 50 candidates and both modes (CF off / on) prints the median latency
of naive batched full-prompt scoring, of shared-prefix scoring, and their ratio; then
the median time of the app's "compare on and off" (both modes, shared prefix) for
20 candidates. Also checks that both paths give the same scores (max |diff|).
All numbers come from this one run; ratios are printed last. ``--save`` writes them to
benchmarks/results/bench_scoring.json and regenerates the table in docs/performance.md.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from collm_demo.config import CHECKPOINT_DIR
from collm_demo.pipeline import load_pipeline


def median_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up (allocations, first-call overheads)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/bench_scoring.json and regenerate docs/performance.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.checkpoints)
    model, ds, cf = pipeline.model, pipeline.dataset, pipeline.cf
    row = ds.split("test").iloc[0]
    history = [ds.title(i) for i in row["history_items"]]
    labels = list(row["history_labels"])
    pool = ds.items.index.tolist()
    user_vec = cf.user_vectors([row["user"]])[0] if cf.has_user(row["user"]) else \
        pipeline.cf_vectors(ds.split("test").iloc[[0]])[0][0]
    results = []
    for k in (1, 10, 20, 50):
        items = pool[:k]
        item_vecs = cf.item_vectors(items)
        for with_cf in (False, True):
            prompts = [model.builder.build(history, labels, ds.title(i), with_cf) for i in items]
            u = user_vec if with_cf else None
            iv = item_vecs if with_cf else None
            def naive_fn(prompts=prompts, u=u, iv=iv, k=k):
                return model.score(prompts, None if u is None else u.expand(k, -1), iv, batch_size=16)

            def shared_fn(prompts=prompts, u=u, iv=iv):
                return model.score_candidates(prompts, u, iv)

            naive_t, naive = median_time(naive_fn, args.repeats)
            shared_t, shared = median_time(shared_fn, args.repeats)
            diff = float((naive - shared).abs().max())
            results.append((k, "on " if with_cf else "off", naive_t, shared_t, naive_t / shared_t, diff))
            print(f"K={k:3d} CF {'on ' if with_cf else 'off'}: naive {naive_t:.3f} s, shared-prefix "
                  f"{shared_t:.3f} s, max |diff| {diff:.2e}", flush=True)
    items = pool[:20]
    item_vecs = cf.item_vectors(items)
    text_prompts = [model.builder.build(history, labels, ds.title(i), False) for i in items]
    cf_prompts = [model.builder.build(history, labels, ds.title(i), True) for i in items]

    def compare():
        return (model.score_candidates(text_prompts), model.score_candidates(cf_prompts, user_vec, item_vecs))

    compare_times = {}
    for bf16 in (True, False):  # evaluation runs bf16; the app defaults to float32 (exact determinism)
        model.bf16 = bf16
        compare()
        times = []
        for _ in range(max(5, args.repeats)):
            start = time.perf_counter()
            compare()
            times.append(time.perf_counter() - start)
        compare_times["bf16" if bf16 else "float32"] = times
    model.bf16 = True
    print(f"\nthreads: {torch.get_num_threads()}, table above in bf16 autocast, prompt length ~{len(cf_prompts[0])} tokens")
    print("\n| K | CF | naive (s) | shared prefix (s) | ratio | max abs diff |")
    print("|---|---|---|---|---|---|")
    for k, mode, naive_t, shared_t, ratio, diff in results:
        print(f"| {k} | {mode.strip()} | {naive_t:.3f} | {shared_t:.3f} | {ratio:.2f}x | {diff:.1e} |")
    for precision, times in compare_times.items():
        print(f"\ncompare on+off, 20 candidates, {precision}: median {statistics.median(times):.3f} s "
              f"(goal < 1.5 s) over {len(times)} runs")
    for k, mode, _, _, ratio, _ in results:
        if k == 20:
            print(f"RATIO K=20 CF {mode.strip()}: {ratio:.2f}x (goal >= 3)")
    if args.save:
        from benchmarks.report import save

        ratio = {"off": {}, "on": {}}
        for k, mode, _, _, r, _ in results:
            ratio[mode.strip()][str(k)] = round(r, 2)
        save("bench_scoring", {
            "precision": "bf16", "threads": torch.get_num_threads(), "repeats": args.repeats, "ratio": ratio,
            "rows": [{"k": k, "cf": mode.strip(), "naive_s": round(n, 4), "shared_s": round(s, 4),
                      "max_abs_diff": diff} for k, mode, n, s, _, diff in results],
            "max_abs_diff": round(max(r[5] for r in results), 4),
            "compare_median_s": {p: round(statistics.median(t), 2) for p, t in compare_times.items()}},
            sys.argv[1:])


if __name__ == "__main__":
    main()
