"""The fusion-ceiling diagnostic: honest cross-fitting, held-out rows, the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collm_demo.__main__ import main
from collm_demo.ceiling import cross_fitted_fusion, fusion_report, held_out_valid_rows
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

    # Without a projector (e.g. a stage-1 experiment) the ceiling still runs, without CoLLM rows.
    (tmp_path / "ckpt" / "projector_mf.safetensors").unlink()
    assert main(["ceiling", *common, "--rows", "40", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["report"]) == {"mf", "text_only", "mf without fold-in",
                                                          "fusion: text_only + mf"}
