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
    out = tmp_path / "recipe.json"
    assert main(["experiment", "--checkpoints", str(tiny_checkpoints), "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--name", "recipe", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["name"] == "recipe" and report["rows"] > 0
    for method in ("mf", "mf_no_foldin", "text_only", "collm", "like_share"):
        assert 0 <= report["metrics"][method]["all"]["auc"] <= 1, method
    assert report["user_token_ablation"]["all"] >= 0
    for parts in report["user_swap"].values():  # the CoLLM row and the CF model alone, under the same swap
        assert parts["gap"] == pytest.approx(parts["own"] - parts["swapped"], abs=1e-4)
    assert report["user_swap"]["mf"]["own"] == report["metrics"]["mf"]["all"]["uauc"]
    assert "same_films" not in report  # ML-100K's user ids are not in the tiny data


def test_swap_partners_give_every_row_another_users_row_at_the_same_position():
    users = np.array(["b", "a", "c", "a", "b", "c", "a"])
    partners = experiment.swap_partners(users)
    # sorted users a → b → c → a; a's rows (1, 3, 6) borrow b's rows (0, 4) cyclically, b's borrow c's, c's borrow a's
    assert partners.tolist() == [2, 0, 1, 4, 5, 3, 0]
    assert all(users[p] != u for u, p in zip(users, partners))
    with pytest.raises(InputError):
        experiment.swap_partners(np.array(["a", "a"]))
