"""Evaluation on the test split: AUC and UAUC on all / warm / cold rows for every method.

UAUC = mean per-user AUC over users with both classes among the evaluated rows.
Scores come from ``Pipeline.score_rows`` (shared prefixes, no gradients; float32 on a CPU by
default, see device.py; bf16 autocast was measured within 0.001 AUC of float32). The Markdown table is written into the README between
its ``results`` markers.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from . import resume
from .cf import BACKENDS, Backend, backend, method_label, recipe_row, split_recipe_row
from .cf.backend import LLM_METHODS
from .checkpoints import available_backends, projector_recipe, read_manifest, write_manifest
from .config import DEFAULT_CF, PROJECT_ROOT, RECIPES, ProtocolConfig
from .device import Runtime
from .distributed import init_ranks
from .errors import CheckpointError, InputError
from .markers import replace_block
from .pipeline import Pipeline, load_pipeline

SLICES = ("all", "warm", "cold")


def auc_uauc(frame: pd.DataFrame, column: str) -> dict:
    labels = frame["label"].to_numpy()
    auc = float(roc_auc_score(labels, frame[column].to_numpy())) if len(set(labels)) == 2 else float("nan")
    per_user = [roc_auc_score(g["label"], g[column]) for _, g in frame.groupby("user")
                if g["label"].nunique() == 2]
    uauc = float(np.mean(per_user)) if per_user else float("nan")
    return {"auc": round(auc, 4), "uauc": round(uauc, 4), "n": int(len(frame)), "uauc_users": len(per_user)}


def metrics_by_slice(frame: pd.DataFrame, column: str) -> dict:
    return {"all": auc_uauc(frame, column), "warm": auc_uauc(frame[frame["warm"]], column),
            "cold": auc_uauc(frame[~frame["warm"]], column)}


def main_methods() -> tuple[str, ...]:
    """The first table's rows: the default backend with its reference rows, and the LLM alone."""
    mf = backend(DEFAULT_CF)
    return (mf.alone_key, *mf.extra_methods, "zero_shot", "text_only", mf.collm_key)


def headline_methods(methods: dict) -> list[str]:
    """The first table's rows among ``methods``: the main methods, with the default backend's CoLLM
    rows of other recipes ("collm@paper") right after its shipped CoLLM row."""
    collm = backend(DEFAULT_CF).collm_key
    others = [k for k in methods if (found := split_recipe_row(k)) and found[0] == collm]
    rows = []
    for key in main_methods():
        rows += ([key] if key in methods else []) + (others if key == collm else [])
    return rows


def default_methods(cf_name: str) -> list[str]:
    """What ``evaluate`` scores without ``--methods``: every row for the default backend; for
    another backend its two rows (the LLM-only rows do not depend on the CF backend)."""
    spec = backend(cf_name)
    return list(main_methods()) if spec.name == DEFAULT_CF else [spec.alone_key, spec.collm_key]


def is_alone_key(key: str) -> bool:
    """A CF model alone (not an LLM row, not a CoLLM row, not a reference row)."""
    found = Backend.from_key(key)
    return found is not None and not found[1]


def backend_pairs(methods: dict) -> list[tuple[str, str]]:
    """(CF alone, CoLLM with it) result keys for every backend evaluated: mf/collm, x/collm_x."""
    alone_of = {backend(k).collm_key: k for k in methods if is_alone_key(k)}
    pairs = [(alone_of[k], k) for k in methods if k in alone_of]  # in the order the CoLLM rows were added
    return sorted(pairs, key=lambda pair: pair[0] != backend(DEFAULT_CF).alone_key)  # the default backend first


def results_table(results: dict) -> str:
    """Markdown: the main methods (default backend, LLM alone), then every CF backend alone vs inside CoLLM."""
    methods = results["methods"]
    lines = ["| method | all AUC | all UAUC | warm AUC | warm UAUC | cold AUC | cold UAUC |",
             "|---|---|---|---|---|---|---|"]
    main = headline_methods(methods)
    pairs = backend_pairs(methods)
    # a backend evaluated alone whose CoLLM row is missing (e.g. its projector awaits retraining)
    unpaired = [m for m in methods if m not in main and is_alone_key(m) and backend(m).collm_key not in methods]
    side_by_side = len(pairs) > 1 or bool(unpaired)
    for method in main + [m for m in methods if m not in main]:
        if method not in main and side_by_side:
            continue  # other backends go in the side-by-side table below
        slices = methods[method]
        cells = [f"{slices[s]['auc']:.4f} | {slices[s]['uauc']:.4f}" for s in SLICES]
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    n = {s: methods[next(iter(methods))][s]["n"] for s in SLICES}
    lines.append("")
    lines.append(f"Test rows: all {n['all']}, warm {n['warm']}, cold {n['cold']}.")
    if side_by_side:
        lines += ["", "Every CF backend alone and inside CoLLM (same LLM, same LoRA, its own projector), AUC "
                      "(UAUC on all rows):", "",
                  "| CF backend | alone: all | warm | cold | CoLLM: all | warm | cold | CoLLM − alone (all) "
                  "| CoLLM, the paper's recipe: all |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def paper(collm: str) -> str:  # the same backend's CoLLM trained as the paper trains it, where measured
            row = methods.get(recipe_row(collm, "paper"))
            return f"{row['all']['auc']:.4f} ({row['all']['uauc']:.4f})" if row else "—"

        for alone, collm in pairs:
            a, c = methods[alone], methods[collm]
            name = method_label(alone).replace(" (CF alone)", "")
            lines.append(f"| {name} | {a['all']['auc']:.4f} ({a['all']['uauc']:.4f}) | {a['warm']['auc']:.4f} | "
                         f"{a['cold']['auc']:.4f} | {c['all']['auc']:.4f} ({c['all']['uauc']:.4f}) | "
                         f"{c['warm']['auc']:.4f} | {c['cold']['auc']:.4f} | "
                         f"{c['all']['auc'] - a['all']['auc']:+.4f} | {paper(collm)} |")
        for alone in unpaired:
            a = methods[alone]
            name = method_label(alone).replace(" (CF alone)", "")
            lines.append(f"| {name} | {a['all']['auc']:.4f} ({a['all']['uauc']:.4f}) | {a['warm']['auc']:.4f} | "
                         f"{a['cold']['auc']:.4f} | — | — | — | no CoLLM row: projector not evaluated | "
                         f"{paper(backend(alone).collm_key)} |")
    return "\n".join(lines)


def update_readme(results: dict, readme: Path = PROJECT_ROOT / "README.md") -> None:
    replace_block(readme, "results", results_table(results))


def check_cf_name(checkpoint_dir: Path, cf_name: str) -> None:
    """``--cf`` names a built-in CF model or one imported into ``checkpoint_dir``: any other name is
    a typo, said before the LLM is loaded (not found later as "no method can run")."""
    if cf_name in BACKENDS or (Path(checkpoint_dir) / backend(cf_name).cf_file).exists():
        return
    there = available_backends(checkpoint_dir)
    raise InputError(f"unknown CF model {cf_name[:40]!r}: not one of the built-in {', '.join(BACKENDS)}, and "
                     f"{checkpoint_dir} holds no {backend(cf_name).cf_file} (available there: "
                     f"{', '.join(there) or 'none'})")


def run(checkpoint_dir: Path, out: Path, llm_name: str | None = None, data_path: str | None = None,
        methods: list[str] | None = None, max_rows: int | None = None, seed: int = 0,
        write_readme: bool = True, argv: list[str] | None = None, cf_name: str = DEFAULT_CF,
        runtime: Runtime | None = None, protocol: ProtocolConfig | None = None, other_data: bool = False,
        as_recipe: str | None = None) -> dict:
    """Score ``methods`` on the test split; checkpoints whose manifest records other data than
    ``data_path`` are refused unless ``other_data`` (``--other-data``). With ``as_recipe`` the
    checkpoints' CoLLM row is stored as that recipe's row ("collm@paper", ``--as-recipe``), beside
    the shipped recipe's, after checking that their manifest says the projector was trained by it."""
    check_cf_name(checkpoint_dir, cf_name)
    check_methods(cf_name, methods)
    store_as: dict[str, str] = {}
    if as_recipe is not None:
        methods = [check_recipe_row(checkpoint_dir, cf_name, methods, as_recipe)]
        store_as = {methods[0]: recipe_row(methods[0], as_recipe)}
    runtime = runtime or Runtime.choose()
    ranks = init_ranks(runtime.device.type)  # under torchrun: each process scores its share of the batches
    pipeline = load_pipeline(checkpoint_dir, llm_name, data_path, cf_name=cf_name, runtime=runtime, ranks=ranks,
                             protocol=protocol, allow_other_data=other_data)
    if pipeline.notice:
        print(pipeline.notice, file=sys.stderr)
    rows = pipeline.dataset.split("test")
    if max_rows is not None and max_rows < len(rows):
        rows = rows.sample(n=max_rows, random_state=seed).sort_index()
    frame = rows[["user", "item", "label", "warm", "cold_user", "cold_item"]].copy()
    methods = methods or default_methods(cf_name)
    results = start_results(out, pipeline, rows, [store_as.get(m, m) for m in methods], checkpoint_dir,
                            subset=max_rows is not None)
    runnable = runnable_methods(pipeline, methods, checkpoint_dir)
    joint = pipeline.joint_methods(runnable)
    # One pass per job; text-only and CoLLM run as one job that encodes each history once for both.
    for job in ([list(joint)] if joint else []) + [[m] for m in runnable if m not in joint]:
        score_job(pipeline, rows, frame, job, results, progress_file=out.with_name(out.stem + ".progress.safetensors"),
                  store_as=store_as)
        if ranks.is_main:  # after every job: partial results survive
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    command = "python -m collm_demo " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    stored = [store_as.get(m, m) for m in methods]
    results.setdefault("commands", {}).update({m: command for m in stored if m in results["methods"]})
    if not ranks.is_main:
        return results
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results_table(results))
    if write_readme and max_rows is None:
        update_readme(results)
        record_metrics(results, out, checkpoint_dir)
    return results


def check_methods(cf_name: str, methods: list[str] | None) -> None:
    """Every method asked for exists with ``--cf cf_name``: a typo is said before the LLM is loaded."""
    spec = backend(cf_name)
    known = [spec.alone_key, *spec.extra_methods, *LLM_METHODS, spec.collm_key]
    unknown = [m for m in methods or [] if m not in known]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(repr(m[:40]) for m in unknown[:5])} for --cf {cf_name}: "
                         f"choose from {', '.join(known)}")


def check_recipe_row(checkpoint_dir: Path, cf_name: str, methods: list[str] | None, recipe: str) -> str:
    """The CoLLM key ``--as-recipe recipe`` scores: it stores only the CoLLM row, and only of a
    projector whose manifest record says ``recipe`` trained it, unchanged by flags (a record from
    before recipes were recorded is the paper's when it trained per row, as every one then did)."""
    spec = backend(cf_name)
    if recipe not in RECIPES:
        raise InputError(f"recipe {recipe[:40]!r} is not one of {', '.join(RECIPES)}")
    if methods not in (None, [spec.collm_key]):
        raise InputError(f"--as-recipe stores one CoLLM row: use it with --methods {spec.collm_key} (or no --methods)")
    record = read_manifest(checkpoint_dir).get("stages", {}).get(spec.projector_stage)
    if record is None:
        raise CheckpointError(f"{checkpoint_dir}: the manifest has no record of the {spec.short} projector's training, "
                              "so which recipe trained it is unknown")
    trained_by = projector_recipe(record)
    if trained_by != recipe:
        raise CheckpointError(f"{checkpoint_dir}: the {spec.short} projector was trained by {trained_by}, "
                              f"not by the recipe {recipe!r}")
    return spec.collm_key


def start_results(out: Path, pipeline: Pipeline, rows: pd.DataFrame, methods: list[str], checkpoint_dir: Path,
                  subset: bool) -> dict:
    """The results file's new content before any score: the protocol, and from ``out`` the other
    methods' rows when they were scored on the same test rows (each backend is evaluated by its
    own command)."""
    previous = json.loads(out.read_text()) if out.exists() else {}
    runtime = pipeline.runtime
    results: dict = {"protocol": {"data": pipeline.dataset.name, "split": "test", "name": pipeline.dataset.protocol.name,
                                  "rows": int(len(rows)), "subset": subset,
                                  "counts": pipeline.dataset.counts["splits"]["test"],
                                  "llm": pipeline.llm.name, "checkpoints": str(checkpoint_dir),
                                  "runtime": runtime.describe() | {"processes": pipeline.ranks.world}},
                     "methods": {}, "timing_s": {}}
    if previous.get("protocol", {}).get("rows") == len(rows) and previous.get("protocol", {}).get("data") == pipeline.dataset.name:
        results["methods"] = {k: v for k, v in previous.get("methods", {}).items() if k not in methods}
        results["timing_s"] = {k: v for k, v in previous.get("timing_s", {}).items() if k not in methods}
        results["commands"] = previous.get("commands", {})
    return results


def runnable_methods(pipeline: Pipeline, methods: list[str], checkpoint_dir: Path) -> list[str]:
    """The methods the loaded checkpoints can score; the others are named on stderr (none: refused)."""
    available = pipeline.available_methods()
    if not set(methods) & set(available):
        raise CheckpointError(f"none of the methods {', '.join(methods)} can run with {checkpoint_dir} "
                              f"(available: {', '.join(available)})"
                              + (f"; {pipeline.notice}" if pipeline.notice else ""))
    for method in methods:
        if method not in available:
            print(f"[evaluate] skipping {method}: not available ({pipeline.notice})", file=sys.stderr)
    return [m for m in methods if m in available]


EVAL_CHUNKS = 20  # pieces of the test rows, by user (a user's shared prefixes stay in one piece), saved as done


def score_job(pipeline: Pipeline, rows: pd.DataFrame, frame: pd.DataFrame, job: list[str], results: dict,
              progress_file: Path | None = None, store_as: dict[str, str] | None = None) -> None:
    """Score the methods of one job (one pass over ``rows``) into ``frame`` and their metrics and
    timing into ``results``. The rows go in ``EVAL_CHUNKS`` pieces; with ``progress_file`` each
    piece's scores are saved as it is done, and a rerun of the same job on the same checkpoints
    and rows scores only the pieces still missing (the file is removed when the job is complete).
    ``store_as`` renames a method's results key (the CoLLM row of another recipe: "collm@paper")."""
    store_as = store_as or {}
    keys = [store_as.get(m, m) for m in job]
    name = "+".join(keys)
    started = time.time()
    order = {user: n for n, user in enumerate(sorted(rows["user"].unique(), key=str))}
    piece = rows["user"].map(order).to_numpy() * EVAL_CHUNKS // max(1, len(order))
    key = resume.scoring_fingerprint(pipeline, rows, job=job)
    done = resume.load_pieces(progress_file, key, _log) if progress_file is not None else {}
    if done:
        print(f"[evaluate] {name}: resuming, {len(done)} of {EVAL_CHUNKS} pieces scored before", file=sys.stderr)
    pieces = sorted(set(piece.tolist()))
    for n in tqdm(pieces, desc=name, file=sys.stderr, mininterval=10, disable=not pipeline.ranks.is_main):
        if n not in done:
            scores = pipeline.score_methods(rows[piece == n], job)
            done[n] = {method: scores[method].float() for method in job}
            if progress_file is not None and pipeline.ranks.is_main:
                resume.save_pieces(progress_file, key, done)
    for key_ in list(results["timing_s"]):  # a method's old timing, alone or shared, is replaced
        if set(key_.split("+")) & set(keys):
            del results["timing_s"][key_]
    results["timing_s"][name] = round(time.time() - started, 1)
    for method in job:
        values = np.empty(len(rows), dtype=np.float32)
        for n in pieces:
            values[piece == n] = done[n][method].numpy()
        frame[method] = values
        key_ = store_as.get(method, method)
        results["methods"][key_] = metrics_by_slice(frame, method)
        print(f"[evaluate] {key_}: {json.dumps(results['methods'][key_])} "
              f"({name}: {results['timing_s'][name]} s)", file=sys.stderr, flush=True)
    if progress_file is not None and pipeline.ranks.is_main:
        progress_file.unlink(missing_ok=True)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def record_metrics(results: dict, out: Path, checkpoint_dir: Path) -> None:
    """The test metrics in the checkpoints' manifest (when the folder has one)."""
    manifest = read_manifest(checkpoint_dir)
    if manifest:
        manifest["test_metrics"] = {"file": str(out.relative_to(PROJECT_ROOT)) if out.is_relative_to(PROJECT_ROOT) else str(out),
                                    "methods": results["methods"]}
        write_manifest(manifest, checkpoint_dir)
