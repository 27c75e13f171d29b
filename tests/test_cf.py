"""MF learns planted structure; CF checkpoints round-trip; unknown ids get defined vectors."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from collm_demo.cf import load_cf, train_mf
from collm_demo.cf.base import CFModel
from collm_demo.data import load_dataset
from collm_demo.foldin import (
    DEFAULT_L2,
    L2_GRID,
    fold_in,
    fold_in_item,
    fold_in_user,
    tune_user_l2,
    user_l2,
    user_vectors_for_rows,
)
from conftest import synthetic_ratings, write_ml100k


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = write_ml100k(tmp_path_factory.mktemp("planted"), synthetic_ratings(n_users=120, per_user=10, seed=3))
    ds = load_dataset(folder)
    train = ds.interactions[ds.interactions["split"] == "train"]
    cf, info = train_mf(train, ds.split("valid"), dim=8, epochs=60, lr=0.05, weight_decay=1e-3,
                        patience=10, batch_size=64, log=lambda _: None)
    return ds, cf, info


def test_mf_recovers_planted_structure(planted):
    ds, cf, _ = planted
    test = ds.split("test")
    warm = test[~test["cold_user"]]
    users, items = cf.user_vectors(warm["user"].tolist()), cf.item_vectors(warm["item"].tolist())
    assert roc_auc_score(warm["label"], cf.score_vectors(users, items).numpy()) > 0.9
    # new users are folded in from their history: the taste groups are recovered too
    cold = test[test["cold_user"]]
    if len(cold) and cold["label"].nunique() == 2:
        vecs = user_vectors_for_rows(cf, cold["user"].tolist(), cold["history_items"].tolist(),
                                     cold["history_labels"].tolist())
        scores = cf.score_vectors(vecs, cf.item_vectors(cold["item"].tolist()))
        assert roc_auc_score(cold["label"], scores.numpy()) > 0.8


def test_cf_save_load_round_trip(planted, tmp_path):
    _, cf, _ = planted
    cf.save(tmp_path / "cf.safetensors")
    back = load_cf(tmp_path / "cf.safetensors")
    assert back.user_ids == cf.user_ids and back.item_ids == cf.item_ids
    assert torch.equal(back.user_table, cf.user_table) and torch.equal(back.item_table, cf.item_table)
    assert back.global_bias == pytest.approx(cf.global_bias)
    assert torch.equal(back.default_user, cf.default_user)


def test_unknown_ids_get_the_no_information_vector(planted):
    _, cf, _ = planted
    vecs = cf.user_vectors(["no-such-user", cf.user_ids[0]])
    assert torch.equal(vecs[0], cf.default_user)
    assert torch.equal(vecs[1], cf.user_table[0])
    assert torch.equal(cf.item_vectors(["no-such-item"])[0], cf.default_item)


def test_fold_in_without_interactions_is_the_prior_and_with_them_follows_labels(planted):
    _, cf, _ = planted
    assert torch.allclose(fold_in_user(cf, [], []), cf.default_user)
    even = [i for i in cf.item_ids if int(i) % 2 == 0]
    odd = [i for i in cf.item_ids if int(i) % 2 == 1]
    user = fold_in_user(cf, even[:3] + odd[:3], [1, 1, 1, 0, 0, 0])
    s_even = cf.score_vectors(user.expand(len(even), -1), cf.item_vectors(even)).mean()
    s_odd = cf.score_vectors(user.expand(len(odd), -1), cf.item_vectors(odd)).mean()
    assert s_even > s_odd + 0.2
    item = fold_in_item(cf, [], [])
    assert torch.equal(item, cf.default_item)


def test_fold_in_strength_is_tuned_on_valid_and_travels_with_the_model(planted, tmp_path):
    ds, cf, info = planted
    # training recorded the search: the kept strength has the best valid AUC of the grid
    by_l2 = {float(k): v for k, v in info["valid_auc_by_foldin_l2"].items()}
    assert set(by_l2) == set(L2_GRID) and cf.meta["foldin_l2"] == info["foldin_l2"]
    assert by_l2[info["foldin_l2"]] == max(by_l2.values())
    # rows whose users are all unseen (renamed), so fold-in decides every score; taste is
    # planted, so pinning users at the popularity-only prior (a huge L2) must lose
    rows = ds.split("test").copy()
    rows["user"] = "new-" + rows["user"].astype(str)
    best, aucs = tune_user_l2(cf, rows, grid=(0.1, 1.0, 1e6))
    assert best != 1e6 and aucs[best] == max(aucs.values()) > aucs[1e6] + 0.1
    users = user_vectors_for_rows(cf, rows["user"].tolist(), rows["history_items"].tolist(),
                                  rows["history_labels"].tolist(), l2=best)
    scores = cf.score_vectors(users, cf.item_vectors(rows["item"].tolist())).numpy()
    assert round(roc_auc_score(rows["label"], scores), 4) == aucs[best]
    # the model's own strength is the default everywhere, and survives save/load
    cf.save(tmp_path / "cf.safetensors")
    back = load_cf(tmp_path / "cf.safetensors")
    assert user_l2(back) == cf.meta["foldin_l2"]
    items, labels = rows["history_items"].iloc[0], rows["history_labels"].iloc[0]
    assert torch.equal(fold_in_user(back, items, labels), fold_in_user(cf, items, labels, l2=user_l2(cf)))
    if user_l2(cf) != DEFAULT_L2:
        assert not torch.equal(fold_in_user(back, items, labels), fold_in_user(cf, items, labels, l2=DEFAULT_L2))
    # vectors from elsewhere (no tuned strength in their meta) use the documented default
    assert user_l2(CFModel(["u"], ["i"], torch.zeros(1, 3), torch.zeros(1, 3))) == DEFAULT_L2


def test_fold_in_is_deterministic_and_masked():
    others = torch.randn(3, 4, 5)
    labels = torch.randint(0, 2, (3, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    prior = torch.zeros(5)
    a = fold_in(others, labels, mask, prior, 0.0)
    assert torch.equal(a, fold_in(others, labels, mask, prior, 0.0))
    assert torch.equal(a[1], prior)
    changed = others.clone()
    changed[0, 2:] = 99.0  # masked-out entries must not matter
    assert torch.allclose(fold_in(changed, labels, mask, prior, 0.0)[0], a[0])


def test_cf_model_validates_its_input():
    with pytest.raises(ValueError, match="dim"):
        CFModel(["u"], ["i"], torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        CFModel(["u"], ["i"], torch.full((1, 3), float("nan")), torch.zeros(1, 3))
