"""The command line: a user's mistake is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from collm_demo.__main__ import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collm_demo", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert "Traceback" not in proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_missing_data_folder_fails_fast_naming_the_path():
    started = time.time()
    proc = run_cli("evaluate", "--data", "/no/such/folder")
    assert_one_line_error(proc, "/no/such/folder", "does not exist")
    assert time.time() - started < 30  # no LLM is loaded first (5 s on an idle machine)


def test_checkpoints_that_are_a_file(tmp_path, tiny_data_dir, tiny_llm_dir):
    file = tmp_path / "not_a_folder"
    file.write_text("x")
    proc = run_cli("evaluate", "--data", str(tiny_data_dir), "--llm", str(tiny_llm_dir), "--checkpoints", str(file))
    assert_one_line_error(proc, str(file), "not a folder")


def test_missing_local_llm_folder(tiny_data_dir, tmp_path):
    proc = run_cli("evaluate", "--data", str(tiny_data_dir), "--llm", "./no/such/model", "--checkpoints",
                   str(tmp_path))
    assert_one_line_error(proc, "no/such/model", "does not exist")


def test_unknown_cf_backend(tiny_checkpoints, tiny_data_dir, tiny_llm_dir, capsys):
    code = main(["evaluate", "--quick", "--cf", "nosuch", "--data", str(tiny_data_dir), "--llm", str(tiny_llm_dir),
                 "--checkpoints", str(tiny_checkpoints)])
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nosuch" in err and "available" in err


@pytest.mark.parametrize("flag,value", [("--max-rows", "0"), ("--max-rows", "-3"), ("--max-rows", "many")])
def test_sizes_must_be_positive(flag, value):
    proc = run_cli("evaluate", flag, value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"argument {flag}" in proc.stderr and ("positive" in proc.stderr or "whole number" in proc.stderr)


def test_settings_table_is_the_readme_table():
    from collm_demo.config import PROJECT_ROOT, settings_table
    from collm_demo.markers import read_block

    assert read_block(PROJECT_ROOT / "README.md", "settings") == settings_table(), \
        "run `python -m collm_demo settings --readme`"


def test_results_block_is_generated_from_the_results_file():
    import json

    from collm_demo.config import PROJECT_ROOT, RESULTS_PATH
    from collm_demo.evaluate import results_table
    from collm_demo.markers import read_block

    assert read_block(PROJECT_ROOT / "README.md", "results") == results_table(json.loads(RESULTS_PATH.read_text()))


def test_performance_table_is_generated_from_the_benchmark_files():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", "--check"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
