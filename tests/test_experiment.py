"""The fast loop's report (``python -m collm_demo experiment``) on the tiny LLM and data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collm_demo import experiment
from collm_demo.__main__ import main
from collm_demo.errors import InputError

pytestmark = pytest.mark.fp32


def test_experiment_reports_auc_uauc_ablation_and_the_baselines(tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                               tmp_path, monkeypatch):
    # The tiny data has no user with 6 liked and 6 disliked valid rows: the whole valid split stands in.
    monkeypatch.setattr(experiment, "dev_rows", lambda dataset: dataset.split("valid"))
    out, best = tmp_path / "recipe.json", tmp_path / "best.json"
    best.write_text(json.dumps({"name": "best", "metrics": {"collm": {"all": {"auc": 0.5, "uauc": 0.5}}}}))
    assert main(["experiment", "--checkpoints", str(tiny_checkpoints), "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--name", "recipe", "--out", str(out), "--against", str(best)]) == 0
    report = json.loads(out.read_text())
    assert report["name"] == "recipe" and report["rows"] > 0
    for method in ("mf", "mf_no_foldin", "text_only", "collm", "like_share"):
        assert 0 <= report["metrics"][method]["all"]["auc"] <= 1, method
    assert report["user_token_ablation"]["all"] >= 0
    for parts in report["user_swap"].values():  # the CoLLM row and the CF model alone, under the same swap
        assert parts["gap"] == pytest.approx(parts["own"] - parts["swapped"], abs=1e-4)
    assert report["user_swap"]["mf"]["own"] == report["metrics"]["mf"]["all"]["uauc"]
    assert "same_films" not in report  # ML-100K's user ids are not in the tiny data
    assert report["verdict"]["against"] == "best" and set(report["verdict"]["checks"]) == {"uauc_gain", "auc_drop",
                                                                                            "swap_gap"}
    # the amended rule: this run and its other draw (the report just written) against two draws of the best
    again = tmp_path / "again.json"
    assert main(["experiment", "--checkpoints", str(tiny_checkpoints), "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--name", "again", "--out", str(again),
                 "--against", f"{best},{best}", "--draws", str(out)]) == 0
    verdict = json.loads(again.read_text())["verdict"]
    assert verdict["draws"] == ["again", "recipe"] and verdict["checks"]["draws"] == {"value": 2, "passes": True}
    assert verdict["checks"]["mean_uauc_gain"]["value"] == round(report["metrics"]["collm"]["all"]["uauc"] - 0.5, 4)


def test_swap_partners_give_every_row_another_users_row_at_the_same_position():
    users = np.array(["b", "a", "c", "a", "b", "c", "a"])
    partners = experiment.swap_partners(users)
    # sorted users a → b → c → a; a's rows (1, 3, 6) borrow b's rows (0, 4) cyclically, b's borrow c's, c's borrow a's
    assert partners.tolist() == [2, 0, 1, 4, 5, 3, 0]
    assert all(users[p] != u for u, p in zip(users, partners))
    with pytest.raises(InputError):
        experiment.swap_partners(np.array(["a", "a"]))


def _report(name: str, auc: float, uauc: float, gap: float | None = None) -> dict:
    report = {"name": name, "collm_method": "collm", "metrics": {"collm": {"all": {"auc": auc, "uauc": uauc}}}}
    if gap is not None:
        report["user_swap"] = {"collm": {"gap": gap}}
    return report


def test_the_rule_keeps_a_recipe_only_when_every_check_passes():
    best = _report("lever1", auc=0.6187, uauc=0.6111)
    kept = experiment.judge(_report("new", auc=0.6100, uauc=0.6211, gap=0.0100), best)
    assert kept["kept"] and kept["against"] == "lever1"  # +0.0100 UAUC, -0.0087 AUC, gap 0.0100: each on its bound
    assert kept["checks"]["uauc_gain"]["value"] == 0.01 and kept["checks"]["auc_drop"]["value"] == 0.0087
    for new, failing in ((_report("n", 0.6187, 0.6210, 0.05), "uauc_gain"),   # gain 0.0099
                         (_report("n", 0.6086, 0.6500, 0.05), "auc_drop"),    # AUC drop 0.0101
                         (_report("n", 0.6187, 0.6500, 0.0099), "swap_gap"),
                         (_report("n", 0.6187, 0.6500), "swap_gap")):         # no swap test in the report
        verdict = experiment.judge(new, best)
        assert not verdict["kept"] and [k for k, c in verdict["checks"].items() if not c["passes"]] == [failing]
    assert "by the rule, against lever1: KEPT" in experiment.summary(
        {"name": "new", "rows": 1, "users": 1, "seconds": 0, "metrics": {}, "verdict": kept})


def test_the_amended_rule_judges_the_mean_of_two_draws():
    """Two draws a side: mean UAUC gain ≥ 0.02, mean AUC drop ≤ 0.01, mean swap gap of the new draws
    ≥ 0.01; one draw on either side fails, whatever its numbers."""
    best = [_report("lever1", auc=0.6187, uauc=0.6111), _report("lever1_redraw", auc=0.6009, uauc=0.5944, gap=-0.0062)]
    # means: best UAUC 0.60275, AUC 0.6098; new UAUC 0.62275 (+0.0200), AUC 0.5998 (drop 0.0100), gap 0.0100
    new = [_report("a", auc=0.5998, uauc=0.6300, gap=0.0150), _report("b", auc=0.5998, uauc=0.6155, gap=0.0050)]
    kept = experiment.judge_draws(new, best)
    assert kept["kept"], kept
    assert kept["checks"]["mean_uauc_gain"]["value"] == 0.02 and kept["checks"]["mean_swap_gap"]["value"] == 0.01
    assert kept["against"] == "lever1 + lever1_redraw" and kept["draws"] == ["a", "b"]
    one = experiment.judge_draws(new[:1], best)  # a better single draw is still one draw
    assert not one["kept"] and [k for k, c in one["checks"].items() if not c["passes"]] == ["draws"]
    lower = experiment.judge_draws([new[0], _report("b", auc=0.5998, uauc=0.6153, gap=0.0050)], best)
    assert [k for k, c in lower["checks"].items() if not c["passes"]] == ["mean_uauc_gain"]  # +0.0199
    no_swap = experiment.judge_draws([new[0], _report("b", auc=0.5998, uauc=0.6155)], best)
    assert [k for k, c in no_swap["checks"].items() if not c["passes"]] == ["mean_swap_gap"]
    with pytest.raises(InputError, match="collm row"):
        experiment.judge_draws(new, [{"name": "x", "metrics": {"mf": {}}}])


def test_a_report_to_judge_against_must_be_an_experiment_report(tmp_path, capsys):
    good = tmp_path / "best.json"
    good.write_text(json.dumps(_report("best", 0.6, 0.6)))
    assert experiment.load_report(good)["name"] == "best"
    for text in ("not json", "[1, 2]", '{"name": "x"}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InputError, match="bad.json"):
            experiment.load_report(bad)
    with pytest.raises(InputError, match="cannot read"):
        experiment.load_report(tmp_path / "missing.json")
    with pytest.raises(InputError, match="collm row"):
        experiment.judge(_report("n", 0.6, 0.6, 0.1), {"name": "other", "metrics": {"mf": {}}})
    # on the command line: one line and exit status 2, before any model is loaded
    assert main(["experiment", "--against", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
