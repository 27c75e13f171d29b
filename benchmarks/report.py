"""The performance table of docs/performance.md, generated from the benchmarks' JSON files.

    python -m benchmarks.report            # rewrite the <!-- performance --> block of docs/performance.md
    python -m benchmarks.report --check    # exit 1 if the block differs from what the JSON files give

Each benchmark run with ``--save`` writes ``benchmarks/results/<name>.json`` (its figures,
the exact command, the date and the machine) and then rewrites the table with
``collm_demo.markers.replace_block``, the helper ``python -m collm_demo evaluate`` uses for
the README's results block. The evaluation row is read from ``assets/results.json`` (the
timings ``evaluate`` records). Goals are the project's, not measurements, so they live here,
beside the rows they belong to.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from collm_demo.markers import read_block, replace_block

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
EVAL_RESULTS = ROOT / "assets" / "results.json"
BLOCK = "performance"
EVAL_METHODS = ("zero_shot", "text_only", "collm")  # the three LLM methods of `evaluate`


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores"


def save(name: str, figures: dict, argv: list[str], update_doc: bool = True) -> Path:
    """Write ``benchmarks/results/<name>.json`` for a run of ``python -m benchmarks.<name> argv``
    and regenerate the table."""
    args = [a for a in argv if a != "--save"]
    record = {"benchmark": name, "command": " ".join([f"python -m benchmarks.{name}"] + args),
              "date": datetime.date.today().isoformat(), "machine": machine(), "figures": figures}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    if update_doc:
        write_doc()
    return path


def write_doc() -> None:
    """Rewrite the table in docs/performance.md from the JSON files; a missing block is an error."""
    if not replace_block(DOC, BLOCK, table()):
        raise SystemExit(f"{DOC} has no {BLOCK} block (<!-- {BLOCK}:start --> … <!-- {BLOCK}:end -->)")
    print(f"table written into {DOC}")


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------ formatting

def _x(value: float) -> str:
    return f"{value:.2f}×"


def _diff(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


def _ratios(f: dict, mode: str) -> str:
    return " / ".join(_x(f["ratio"][mode][k]) for k in ("1", "10", "20", "50"))


def _eval_rows() -> list[tuple[str, str, str, str, str]]:
    if not EVAL_RESULTS.exists():
        return []
    results = json.loads(EVAL_RESULTS.read_text())
    timing = results.get("timing_s", {})
    # a key is one method, or methods scored in one pass ("text_only+collm")
    jobs = {key: seconds for key, seconds in timing.items() if set(key.split("+")) <= set(EVAL_METHODS)}
    if {m for key in jobs for m in key.split("+")} != set(EVAL_METHODS):
        return []
    seconds = list(jobs.values())
    rows = results.get("protocol", {}).get("rows", "?")
    what = f"full test-split evaluation, 3 LLM methods ({rows:,} rows each)"
    measured = f"{sum(seconds) / 60:.1f} min ({' + '.join(f'{s:.0f} ({k})' for k, s in jobs.items())} s)"
    return [(what, measured, "< 15 min", "`python -m collm_demo evaluate` (timings in `assets/results.json`)", "—")]


# (benchmark, what, how to show its figures, goal)
ROWS = [
    ("bench_eval", "same, naive way (fp32, data order, full prompts), extrapolated",
     lambda f: f"{f['naive_full_min']:.0f} min", ""),
    ("bench_eval", "bf16 autocast vs float32",
     lambda f: f"\\|ΔAUC\\| {f['bf16_fp32_auc_diff']:.4f} on {f['rows']} rows", "≤ 0.001"),
    ("bench_startup", "warm start, process start → first `/compare` answer",
     lambda f: f"{f['warm_start_s']:.1f} s", "< 10 s"),
    ("bench_startup", "first start (GGUF dequantised into the safetensors cache)",
     lambda f: f"{f['first_start_s']:.1f} s", ""),
    ("bench_startup", "peak RSS of the app",
     lambda f: f"{f['warm_peak_rss_gb']:.2f} GB ({f['first_start_peak_rss_gb']:.2f} GB on the converting first start)",
     "< 2.5 GB"),
    ("bench_scoring", "shared-prefix vs naive scoring (bf16), K = 1 / 10 / 20 / 50, CF off",
     lambda f: _ratios(f, "off"), "≥ 3× at K = 20"),
    ("bench_scoring", "same, CF on", lambda f: _ratios(f, "on"), ""),
    ("bench_scoring", "naive vs shared-prefix scores, max \\|diff\\| (both in bf16)",
     lambda f: f"{f['max_abs_diff']:.3f}", ""),
    ("bench_scoring", "\"compare on and off\", 20 candidates, median",
     lambda f: f"{f['compare_median_s']['bf16']:.2f} s bf16, {f['compare_median_s']['float32']:.2f} s float32 "
               "(the app's default)", "< 1.5 s"),
    ("load_compare", None,
     lambda f: f"{f['ok']}/{f['total']} ok, max diff to serial {_diff(f['max_diff'])}, RSS "
               f"{f['rss_end_mb'] - f['rss_start_mb']:+.0f} MB ({f['rss_start_mb']:.0f} → {f['rss_end_mb']:.0f} MB)",
     "all ok, ≤ 1e-5, < 150 MB"),
]


def _what(name: str, what: str | None, f: dict) -> str:
    if what is None and name == "load_compare":
        return f"load: {f['clients']} clients × {f['requests']} requests × {f['rounds']} rounds of `/compare`"
    return what or name


def table() -> str:
    """The Markdown block: one row per figure, with the command and date that produced it."""
    lines = ["| what | measured | goal | command | date |", "|---|---|---|---|---|"]
    lines += [f"| {what} | {measured} | {goal} | {command} | {date} |"
              for what, measured, goal, command, date in _eval_rows()]
    notes, missing = [], []
    for name, what, show, goal in ROWS:
        record = load(name)
        if record is None:
            if name not in missing:
                missing.append(name)
            continue
        f = record["figures"]
        try:
            measured = show(f)
        except KeyError as err:  # a run that did not produce this figure
            measured = f"— (no `{err.args[0]}` in `benchmarks/results/{name}.json`)"
        lines.append(f"| {_what(name, what, f)} | {measured} | {goal} | `{record['command']}` | {record['date']} |")
        note = f"* `benchmarks/results/{name}.json`: {record.get('machine', '?')}" + (
            f"; {record['source']}." if record.get("source") else ".")
        if note not in notes:
            notes.append(note)
    lines.append("")
    lines += notes or ["No benchmark results yet."]
    if missing:
        lines.append("")
        lines.append("Not measured yet: " + ", ".join(f"`python -m benchmarks.{n} --save`" for n in missing) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/performance.md is out of date")
    args = parser.parse_args(argv)
    if args.check:
        same = read_block(DOC, BLOCK) == table()
        print(f"{DOC} is up to date" if same else f"{DOC} differs from the JSON files: run python -m benchmarks.report")
        return 0 if same else 1
    write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
