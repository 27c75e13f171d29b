"""Training at the speed of scoring: one optimiser step on whole prompts vs on user groups.

    python -m benchmarks.bench_grouped [--rows 32] [--group 8] [--repeats 3] [--stage projector|lora]

Both paths train the same rows with the same history per group (``grouped.user_groups``):
"whole" runs every prompt in full (``CoLLM.forward``, what training did), "grouped" runs each
group's prefix once and its suffixes packed on the cache (``grouped.grouped_logits``). With
``--stage projector`` (the LLM frozen) "grouped" runs the prefix's opening without gradients
(``grouped.can_split_opening``) and "grouped-joined" is the same step with the whole prefix under
autograd, so the gain of that split is measured too. Prints the
median seconds of forward + backward for the batch, rows/s, the ratio, the FLOP-count ratio
(|P| + K|S|) / (K(|P| + |S|)) from the real token counts, and the largest logit difference between
the two paths in eval mode (they compute the same function; in train mode the LoRA's dropout makes
every call differ). ``--save`` writes benchmarks/results/bench_grouped.json. Run from the
repository root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from collm_demo.config import CHECKPOINT_DIR, TrainConfig
from collm_demo.data import projector_pool
from collm_demo.grouped import grouped_logits, user_groups
from collm_demo.pipeline import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage", choices=["projector", "lora"], default="projector")
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR))
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/bench_grouped.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    pipe = load_pipeline(args.checkpoints, bf16=False)
    model = pipe.model
    pool = projector_pool(pipe.dataset, TrainConfig())
    rows = user_groups(pool, args.group, seed=0)
    counts = rows.groupby("group").size()
    keep = counts[counts == args.group].index[: max(1, args.rows // args.group)]  # full groups only
    rows = rows[rows["group"].isin(keep)]
    with_cf = args.stage == "projector"
    prompts = pipe.prompts(rows, with_cf)
    users, items = pipe.cf_vectors(rows, for_tokens=True) if with_cf else (None, None)
    groups = [list(range(s, s + args.group)) for s in range(0, len(rows), args.group)]
    if with_cf:
        params = list(model.projector.parameters())
    else:  # a stand-in for the LoRA: the gradient reaches every layer the same way
        params = [p for n, p in model.llm.named_parameters() if "lora_" in n] or [model.llm.get_input_embeddings().weight]
    for p in params:
        p.requires_grad_(True)
    model.train()

    def step(kind: str) -> torch.Tensor:
        if kind == "whole":
            logits = torch.cat([model(prompts[s: s + 8], None if users is None else users[s: s + 8],
                                      None if items is None else items[s: s + 8]) for s in range(0, len(prompts), 8)])
        else:
            logits = grouped_logits(model, prompts, groups, users, items,
                                    split_opening=False if kind == "grouped-joined" else None)
        logits.sum().backward()
        for p in params:
            p.grad = None
        return logits.detach()

    kinds = ("whole", "grouped-joined", "grouped") if with_cf else ("whole", "grouped")
    results = {}
    for kind in kinds:
        step(kind)  # warm-up
        times, out = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = step(kind)
            times.append(time.perf_counter() - start)
        results[kind] = (statistics.median(times), out)
    model.eval()  # the parity check without dropout
    with torch.no_grad():
        diff = float((torch.cat([model(prompts[s: s + 8], None if users is None else users[s: s + 8],
                                       None if items is None else items[s: s + 8]) for s in range(0, len(prompts), 8)])
                      - grouped_logits(model, prompts, groups, users, items)).abs().max())
    prefix = sum(len(prompts[g[0]].prefix) for g in groups)
    suffix = sum(len(p.suffix) for p in prompts)
    whole_tokens = sum(len(p) for p in prompts)
    print(f"{args.stage}: {len(prompts)} rows in {len(groups)} groups of {args.group}; "
          f"tokens whole {whole_tokens}, grouped {prefix + suffix} (FLOP ratio {whole_tokens / (prefix + suffix):.2f}x)")
    for kind in kinds:
        print(f"  {kind:14s} forward+backward {results[kind][0]:.2f} s  ({len(prompts) / results[kind][0]:.2f} rows/s)")
    print(f"  speed-up {results['whole'][0] / results['grouped'][0]:.2f}x; max |logit difference| (eval mode) {diff:.2e}")
    if "grouped-joined" in results:
        print(f"  the opening without gradients: {results['grouped-joined'][0] / results['grouped'][0]:.2f}x "
              "over the same step with the whole prefix under autograd")
    if args.save:
        from benchmarks.report import save

        save("bench_grouped", {"stage": args.stage, "rows": len(prompts), "group": args.group,
                               "flop_ratio": round(whole_tokens / (prefix + suffix), 2),
                               "seconds": {k: round(v[0], 2) for k, v in results.items()},
                               "rows_per_s": {k: round(len(prompts) / v[0], 2) for k, v in results.items()},
                               "speedup": round(results["whole"][0] / results["grouped"][0], 2),
                               "opening_split_speedup": (round(results["grouped-joined"][0] / results["grouped"][0], 2)
                                                         if "grouped-joined" in results else None),
                               "max_logit_diff": diff}, sys.argv[1:], update_doc=False)


if __name__ == "__main__":
    main()
