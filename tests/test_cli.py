"""The command line: a user's mistake is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
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


# ------------------------------------------------------------------ issue 17: the message is the true cause

def main_error(capsys, *args: str) -> str:
    """``main`` in this process: exit status 2 and exactly one ``error:`` line, returned."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


HEADER = "user,item,rating,timestamp\n"
ITEMS = "item,title\n" + "".join(f"{i},Movie {i}\n" for i in range(1, 13))


def csv_lines(n_users: int = 30) -> list[str]:
    return [f"{u},{i},{(u + i) % 5 + 1},{880_000_000 + 100 * u + i}\n" for u in range(1, n_users + 1)
            for i in range(1, 10)]


def csv_folder(folder, interactions: str | bytes, items: str | bytes = ITEMS):
    folder.mkdir()
    for name, content in (("interactions.csv", interactions), ("items.csv", items)):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def with_line(line: str, at: int = 20) -> str:
    """A good interaction file with ``line`` as file line ``at`` (the header is line 1)."""
    lines = csv_lines()
    return HEADER + "".join(lines[: at - 2]) + line + "".join(lines[at - 2:])


@pytest.mark.parametrize("interactions, items, needles", [
    (HEADER, ITEMS, ["interactions.csv", "no interactions"]),
    (HEADER + "1,1,5,880000000\n2,2,4,880000001\n", ITEMS, ["too few interactions", "every split"]),
    (with_line("1,11,5,inf\n"), ITEMS, ["interactions.csv line 20", "timestamp 'inf' is not a finite number"]),
    (with_line("1,11,nan,880000000\n"), ITEMS, ["interactions.csv line 20", "rating 'nan'"]),
    (with_line("1,11\n"), ITEMS, ["interactions.csv line 20", "expected 4", "found 2"]),
    (with_line('1,"11,5,880000000\n'), ITEMS, ["interactions.csv line 20", "never closed"]),
    (with_line("1,11,5,880000000\n").encode() + b"\xe9,1,5,1\n", ITEMS, ["interactions.csv line 273", "not UTF-8"]),
    (HEADER + "".join(csv_lines()), ITEMS.replace("Movie 2", "Caf\xe9").encode("latin-1"),
     ["items.csv line 3", "not UTF-8"]),
    (HEADER + "".join(csv_lines()), "item,title\n", ["items.csv", "no items"]),
])
def test_bad_data_files_are_named_with_the_true_cause(capsys, tmp_path, tiny_llm_dir, interactions, items, needles):
    data = csv_folder(tmp_path / "data", interactions, items)
    error = main_error(capsys, "evaluate", "--quick", "--no-readme", "--data", str(data), "--llm", str(tiny_llm_dir),
                       "--checkpoints", str(tmp_path / "none"), "--out", str(tmp_path / "out.json"))
    for needle in needles:
        assert needle in error, error


def test_an_infinite_movielens_timestamp_is_named(capsys, tmp_path, tiny_data_dir, tiny_llm_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    lines = (data / "u.data").read_text().splitlines()
    (data / "u.data").write_text("\n".join(lines + ["1\t11\t5\tinf"]) + "\n")
    error = main_error(capsys, "evaluate", "--quick", "--data", str(data), "--llm", str(tiny_llm_dir),
                       "--checkpoints", str(tmp_path / "none"), "--out", str(tmp_path / "out.json"))
    assert f"u.data line {len(lines) + 1}: timestamp 'inf' is not a finite number" in error


def test_an_unknown_cf_model_is_said_before_the_llm_loads(capsys, tiny_checkpoints, tiny_data_dir, monkeypatch):
    from collm_demo import pipeline

    monkeypatch.setattr(pipeline, "load_llm", lambda *a, **k: pytest.fail("the LLM was loaded"))
    error = main_error(capsys, "evaluate", "--quick", "--cf", "nosuch", "--data", str(tiny_data_dir),
                       "--checkpoints", str(tiny_checkpoints))
    assert "unknown CF model 'nosuch'" in error and "available there: mf" in error
    error = main_error(capsys, "evaluate", "--quick", "--methods", "mf,colm", "--data", str(tiny_data_dir),
                       "--checkpoints", str(tiny_checkpoints))
    assert "unknown method(s) 'colm'" in error and "collm" in error


@pytest.mark.parametrize("llm, needle", [("no such model", "does not exist"), (__file__, "is a file")])
def test_an_llm_that_is_neither_a_folder_nor_a_hub_id(tiny_data_dir, tmp_path, llm, needle):
    proc = run_cli("evaluate", "--data", str(tiny_data_dir), "--llm", llm, "--checkpoints", str(tmp_path))
    assert_one_line_error(proc, llm, needle)


def test_an_llm_name_that_is_a_hub_id_and_no_folder_says_both(tiny_data_dir, tmp_path, monkeypatch):
    """'models/smol' is a well-formed Hub id and a relative path: the message says neither exists."""
    from collm_demo.errors import AssetError
    from collm_demo.llm import load_llm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network wait: the Hub lookup fails at once
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssetError, match="no local folder of that name either"):
        load_llm("models/smol")


@pytest.mark.parametrize("args, needle", [
    (["train", "--seed", "-1"], "argument --seed"),
    (["evaluate", "--seed", str(2**32)], "argument --seed"),
    (["train", "--lora-dropout", "-0.5"], "argument --lora-dropout"),
    (["train", "--lora-dropout", "1"], "argument --lora-dropout"),
])
def test_out_of_range_numbers_are_refused_by_the_parser(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr[-1000:]


def test_checkpoints_are_not_evaluated_on_other_data_unless_asked(capsys, tiny_checkpoints, tiny_llm_dir, tmp_path):
    """The manifest records the data the checkpoints were trained on: other data is refused, with
    the way to insist; ``--other-data`` insists."""
    from conftest import synthetic_ratings, write_ml100k

    data = write_ml100k(tmp_path / "other", synthetic_ratings(seed=11))
    args = ["evaluate", "--quick", "--methods", "mf", "--data", str(data), "--llm", str(tiny_llm_dir),
            "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "out.json")]
    error = main_error(capsys, *args)
    assert "trained on other data" in error and "--other-data" in error
    assert not (tmp_path / "out.json").exists()
    assert main([*args, "--other-data"]) == 0
    assert "mf" in json.loads((tmp_path / "out.json").read_text())["methods"]


def test_the_paper_recipe_row_is_stored_beside_the_shipped_one(capsys, tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                                tmp_path):
    """``evaluate --as-recipe paper`` stores a folder's CoLLM row as "collm@paper", next to the
    shipped row, and only for a projector whose manifest says the paper's recipe trained it."""
    import shutil

    out = tmp_path / "results.json"
    common = ["--quick", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--out", str(out)]
    assert main(["evaluate", *common, "--methods", "collm", "--checkpoints", str(tiny_checkpoints)]) == 0
    shipped = json.loads(out.read_text())["methods"]["collm"]
    # the tiny folder's projector was trained by the default recipe, not the paper's
    error = main_error(capsys, "evaluate", *common, "--as-recipe", "paper", "--checkpoints", str(tiny_checkpoints))
    assert "trained by grouped-stage2" in error and "'paper'" in error
    paper = tmp_path / "paper"
    shutil.copytree(tiny_checkpoints, paper)
    assert main(["train", "--stage", "projector", "--recipe", "paper", "--quick", "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--checkpoints", str(paper)]) == 0
    error = main_error(capsys, "evaluate", *common, "--as-recipe", "paper", "--methods", "text_only",
                       "--checkpoints", str(paper))
    assert "--methods collm" in error
    assert main(["evaluate", *common, "--as-recipe", "paper", "--checkpoints", str(paper)]) == 0
    results = json.loads(out.read_text())
    same = json.dumps  # the metrics hold NaN (no cold rows in the tiny test split): compare them as JSON text
    assert same(results["methods"]["collm"]) == same(shipped)  # the shipped row is kept, not overwritten
    assert set(results["methods"]) == {"collm", "collm@paper"} and "--as-recipe paper" in results["commands"]["collm@paper"]
    # the paper row is exactly that folder's CoLLM row, stored under its own key
    alone = tmp_path / "paper.json"
    assert main(["evaluate", "--quick", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--out", str(alone),
                 "--methods", "collm", "--checkpoints", str(paper)]) == 0
    assert same(results["methods"]["collm@paper"]) == same(json.loads(alone.read_text())["methods"]["collm"])
    # a variant of a recipe (a flag changed what it trained) is not that recipe
    assert main(["train", "--stage", "projector", "--recipe", "paper", "--projector-lr", "0.003", "--quick",
                 "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints", str(paper)]) == 0
    error = main_error(capsys, "evaluate", *common, "--as-recipe", "paper", "--checkpoints", str(paper))
    assert "paper with projector_lr changed" in error


def test_a_stage_record_says_which_recipe_trained_the_projector():
    """Read from the record, from the command of a record written before records said so, or from
    how it grouped for the oldest records; a hand-edited record is read as text, never a crash."""
    from collm_demo.checkpoints import projector_recipe, projector_training

    assert projector_recipe({"recipe": "paper", "recipe_overrides": []}) == "paper"
    assert projector_recipe({"recipe": "paper", "recipe_overrides": ["projector_lr"]}) == "paper with projector_lr changed"
    assert projector_recipe({"command": "python -m collm_demo train --stage projector --recipe grouped-stage2",
                             "group_size": 8}) == "grouped-stage2"
    assert projector_recipe({"command": "python -m collm_demo train --stage projector", "group_size": 1}) == "paper"
    assert projector_recipe({"group_size": 8, "pairwise_weight": 1.0}).startswith("a grouped variant")
    assert projector_recipe({"recipe": 5, "recipe_overrides": "x", "group_size": "many"}) == "5 with x changed"
    assert projector_training(None) == ""
    assert projector_training({"recipe": "paper", "group_size": 1}) == "row by row with BCE, the paper's recipe"
    assert projector_training({"recipe": "grouped-stage2", "group_size": 8, "pairwise_weight": 1.0}) == (
        "one user at a time (groups of up to 8 rows sharing one history, BCE + a pairwise term), the recipe grouped-stage2")


# ------------------------------------------------------------------ issue 24: argparse's rejections are one line too

@pytest.mark.parametrize("args, needles", [
    ([], ["required: command"]),
    (["nosuch"], ["invalid choice: 'nosuch'"]),
    (["evaluate", "--bogus", "x"], ["unrecognized arguments: --bogus x"]),
    (["train", "--stage", "everything"], ["train:", "argument --stage", "invalid choice"]),
    (["train", "--seed", "-1"], ["train:", "argument --seed"]),
    (["evaluate", "--max-rows"], ["evaluate:", "argument --max-rows: expected one argument"]),
    (["import-embeddings"], ["import-embeddings:", "required: --name"]),
])
def test_argparse_rejections_are_one_line(capsys, args, needles):
    """Not argparse's usage block (4 to 17 lines) and 'prog: error:': the CLI's one ``error:``
    line, which names the command and where its usage is, and exit status 2."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: python -m collm_demo"), err
    for needle in (*needles, "--help`"):
        assert needle in err, err


def test_an_argparse_rejection_in_a_real_process():
    proc = run_cli("train", "--lora-dropout", "1")
    assert_one_line_error(proc, "argument --lora-dropout")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_app_docstring_names_the_settings_that_exist():
    """app.py's docstring lists the environment variables: exactly the settings table's (it named
    COLLM_BF16, which no longer exists: the precision is COLLM_PRECISION)."""
    import ast
    import re

    from collm_demo.config import PROJECT_ROOT, SETTINGS

    doc = ast.get_docstring(ast.parse((PROJECT_ROOT / "app.py").read_text()))
    assert set(re.findall(r"COLLM_[A-Z_]+", doc)) == {name for name, _, _ in SETTINGS if name.startswith("COLLM_")}


@pytest.mark.parametrize("name, value", [("COLLM_THREADS", "two"), ("COLLM_MAX_QUEUE", "-1"),
                                         ("COLLM_MAX_QUEUE", "１０"), ("COLLM_THREADS", "0")])
def test_app_settings_that_are_not_whole_numbers_are_refused_by_name(monkeypatch, name, value):
    """A setting the app cannot use is a user error naming the variable (app.py prints it as one
    line and exits 2), never a ValueError traceback."""
    from collm_demo.config import AppConfig
    from collm_demo.errors import InputError

    monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=f"{name} must be a positive whole number"):
        AppConfig.from_env()
