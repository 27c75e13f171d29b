"""The fusion-ceiling diagnostic: honest cross-fitting, held-out rows, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collm_demo.__main__ import main
from collm_demo.ceiling import (
    cross_fitted_fusion,
    fusion_report,
    held_out_valid_rows,
    within_user_fusion,
    within_user_pairs,
    within_user_report,
)
from collm_demo.config import QuickConfig
from collm_demo.data import early_stop_rows, load_dataset, sample_rows
from conftest import synthetic_ratings, write_ml100k


def _signals(n: int = 4000, seed: int = 0):
    """Labels driven by two independent latent factors a and b."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    labels = (a + b + 0.5 * rng.normal(size=n) > 0).astype(int)
    return rng, a, b, labels


def test_fusion_of_complementary_signals_beats_each():
    rng, a, b, labels = _signals()
    report = fusion_report(labels, {"a": a, "b": b}, rng.random(len(labels)) < 0.3, {"a+b": ("a", "b")})
    assert report["a+b"]["all"]["auc"] > max(report["a"]["all"]["auc"], report["b"]["all"]["auc"]) + 0.05


def test_fusion_with_a_redundant_signal_gains_nothing():
    """A noisy copy of `a` carries nothing beyond `a`: the cross-fitted fusion must not
    invent a gain (in-sample fitting on few rows would)."""
    rng, a, _, labels = _signals(n=600)
    copy = a + 0.7 * rng.normal(size=len(a))
    report = fusion_report(labels, {"a": a, "copy": copy}, np.zeros(len(a), dtype=bool), {"a+copy": ("a", "copy")})
    assert report["a+copy"]["all"]["auc"] <= report["a"]["all"]["auc"] + 0.005
    assert report["a"]["warm"]["auc"] is None and report["a"]["cold"]["n"] == len(a)


def test_cross_fitting_needs_both_labels():
    with pytest.raises(ValueError, match="both labels"):
        cross_fitted_fusion(np.zeros((10, 2)), np.ones(10))


def _users_and_items(n_users: int = 60, per_user: int = 20, seed: int = 0):
    """Labels = a per-user like-rate (``rate``) + an item signal (``item``) + noise: ``rate``
    separates users (row AUC) but cannot order one user's rows; ``item`` can."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    rate = np.repeat(rng.normal(scale=2.0, size=n_users), per_user)
    item = rng.normal(size=len(users))
    labels = (rate + item + 0.5 * rng.normal(size=len(users)) > 0).astype(int)
    return rng, users, rate, item, labels


def test_within_user_pairs_are_liked_minus_disliked_of_one_user():
    features = np.array([[1.0], [2.0], [10.0], [20.0], [30.0]])
    diffs, weights = within_user_pairs(np.vstack([features, [[40.0]]]), np.array([1, 0, 1, 0, 0, 0]),
                                       np.array([0, 0, 1, 1, 2, 1]))
    assert sorted(diffs[:, 0].tolist()) == [-30.0, -10.0, -1.0]  # user 2 has no liked row: no pair
    assert sorted(weights.tolist()) == [0.5, 0.5, 1.0]  # user 1's two pairs weigh what user 0's one does


def test_within_user_fusion_weights_what_orders_a_users_rows():
    """The per-user rate wins on row AUC but is constant within a user: the within-user fusion
    leans on the item signal and matches its UAUC, and adding the rate gains nothing there."""
    import pandas as pd

    rng, users, rate, item, labels = _users_and_items()
    frame = pd.DataFrame({"user": users, "label": labels, "cold_user": users % 2 == 0})
    report = within_user_report(frame, {"rate": rate, "item": item}, {"rate + item": ("rate", "item")})
    assert report["rate"]["all"]["uauc"] == 0.5  # constant within each user
    assert report["rate"]["all"]["auc"] > report["item"]["all"]["auc"]
    assert abs(report["rate + item"]["all"]["uauc"] - report["item"]["all"]["uauc"]) < 0.01
    assert report["item"]["warm_user"]["n"] == int((users % 2 == 1).sum())
    with pytest.raises(ValueError, match="two users"):
        within_user_fusion(np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.zeros(4))


def _bigger_data(tmp_path):
    return write_ml100k(tmp_path / "ml100k", synthetic_ratings(n_users=160, per_user=9))


def test_held_out_rows_avoid_every_trained_and_early_stop_row(tmp_path):
    dataset = load_dataset(str(_bigger_data(tmp_path)))
    cfg = QuickConfig()
    manifest = {"stages": {"projector": {"rows_seen": 20}, "projector_toy": {"rows_seen": 40}}}
    rest = held_out_valid_rows(dataset, cfg, manifest, n=10_000)
    early = early_stop_rows(dataset, cfg)
    pool = dataset.split("valid").drop(index=early.index)
    assert len(rest) > 0 and rest.index.isin(dataset.split("valid").index).all()
    assert not rest.index.isin(early.index).any()
    for k in (cfg.projector_rows, 20, 40):  # whatever rows any projector was trained on
        assert not rest.index.isin(sample_rows(pool, k, cfg.seed).index).any()
    assert len(rest) == len(pool) - 40

    # Trained with another --seed, the projector saw other rows: those are the ones held out of it.
    seeded = QuickConfig(seed=1)
    other = held_out_valid_rows(dataset, seeded, manifest, n=10_000)
    other_pool = dataset.split("valid").drop(index=early_stop_rows(dataset, seeded).index)
    assert not other.index.isin(early_stop_rows(dataset, seeded).index).any()
    assert not other.index.isin(sample_rows(other_pool, 40, 1).index).any()
    assert set(other.index) != set(rest.index)


def test_held_out_rows_refuse_an_exhausted_pool(tiny_data_dir):
    dataset = load_dataset(str(tiny_data_dir))
    with pytest.raises(ValueError, match="no valid rows are left"):
        held_out_valid_rows(dataset, QuickConfig(), {"stages": {"projector": {"rows_seen": 10_000}}}, n=10)


def test_ceiling_command_end_to_end(tmp_path, tiny_llm_dir):
    data = _bigger_data(tmp_path)
    common = ["--quick", "--llm", str(tiny_llm_dir), "--data", str(data), "--checkpoints", str(tmp_path / "ckpt")]
    assert main(["train", *common]) == 0
    out = tmp_path / "ceiling.json"
    assert main(["ceiling", *common, "--rows", "40", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"]["n"] == 40 and result["cf"] == "mf"
    assert {"mf", "text_only", "collm", "mf without fold-in", "fusion: text_only + mf",
            "fusion: collm + mf"} == set(result["report"])
    for slices in result["report"].values():
        assert slices["all"]["n"] == slices["warm"]["n"] + slices["cold"]["n"] == 40
    within = result["within_user"]
    assert {"mf", "mf without fold-in", "share of liked films in the history", "collm"} <= set(within)
    assert sum(name.startswith("within-user fusion") for name in within) == 3

    # Without a projector (e.g. a stage-1 experiment) the ceiling still runs, without CoLLM rows.
    (tmp_path / "ckpt" / "projector_mf.safetensors").unlink()
    assert main(["ceiling", *common, "--rows", "40", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["report"]) == {"mf", "text_only", "mf without fold-in",
                                                          "fusion: text_only + mf"}
