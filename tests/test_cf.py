"""MF learns planted structure; CF checkpoints round-trip; unknown ids get defined vectors; fold-in
maths and its strength; the shared epoch loop with early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from collm_demo.cf import CFModel, load_cf, train_mf
from collm_demo.cf.foldin import DEFAULT_L2, L2_GRID, fold_in, parse_l2, tune_l2
from collm_demo.data import load_dataset
from collm_demo.errors import InputError
from collm_demo.trainer import fit_epochs
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
        vecs = cf.row_user_vectors(cold["user"].tolist(), cold["history_items"].tolist(),
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
    assert torch.equal(cf.fold_in_user([], []), cf.default_user)
    even = [i for i in cf.item_ids if int(i) % 2 == 0]
    odd = [i for i in cf.item_ids if int(i) % 2 == 1]
    user = cf.fold_in_user(even[:3] + odd[:3], [1, 1, 1, 0, 0, 0])
    # the same vector as a prompt row of a user unseen in training with that history
    assert torch.equal(user, cf.row_user_vectors(["nobody"], [even[:3] + odd[:3]], [[1, 1, 1, 0, 0, 0]])[0])
    assert torch.equal(cf.history_user_vector(even[:3] + odd[:3], [1, 1, 1, 0, 0, 0]), user)
    s_even = cf.score_vectors(user.expand(len(even), -1), cf.item_vectors(even)).mean()
    s_odd = cf.score_vectors(user.expand(len(odd), -1), cf.item_vectors(odd)).mean()
    assert s_even > s_odd + 0.2
    assert torch.equal(cf.fold_in_item([], []), cf.default_item)
    raters = cf.user_ids[:4] + ["nobody"]  # a user unseen in training is masked out
    liked, disliked = cf.fold_in_item(raters, [1] * 5), cf.fold_in_item(raters, [0] * 5)
    users = cf.user_vectors(raters[:4])
    assert (cf.score_vectors(users, liked.expand(4, -1)) > cf.score_vectors(users, disliked.expand(4, -1))).all()
    assert torch.equal(cf.fold_in_item(raters[:4], [1] * 4), liked)


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
    best, aucs = cf.tune_foldin_l2(rows, grid=(0.1, 1.0, 1e6))
    assert best != 1e6 and aucs[best] == max(aucs.values()) > aucs[1e6] + 0.1
    users = cf.row_user_vectors(rows["user"].tolist(), rows["history_items"].tolist(),
                                rows["history_labels"].tolist(), l2=best)
    scores = cf.score_vectors(users, cf.item_vectors(rows["item"].tolist())).numpy()
    assert round(roc_auc_score(rows["label"], scores), 4) == aucs[best] == round(cf.auc(rows, l2=best), 4)
    # the model's own strength is the default everywhere, and survives save/load
    cf.save(tmp_path / "cf.safetensors")
    back = load_cf(tmp_path / "cf.safetensors")
    assert back.foldin_l2 == cf.meta["foldin_l2"] and back.kind == "mf"
    items, labels = rows["history_items"].iloc[0], rows["history_labels"].iloc[0]
    assert torch.equal(back.fold_in_user(items, labels), cf.fold_in_user(items, labels, l2=cf.foldin_l2))
    if cf.foldin_l2 != DEFAULT_L2:
        assert not torch.equal(back.fold_in_user(items, labels), cf.fold_in_user(items, labels, l2=DEFAULT_L2))
    # vectors from elsewhere (no tuned strength in their meta) use the documented default
    assert CFModel(["u"], ["i"], torch.zeros(1, 3), torch.zeros(1, 3)).foldin_l2 == DEFAULT_L2


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


def test_tune_l2_keeps_the_best_rounded_auc_and_breaks_ties_towards_the_stronger_pull():
    aucs = {0.3: 0.70001, 1.0: 0.71, 3.0: 0.70996, 10.0: 0.6}
    best, table = tune_l2(aucs.__getitem__, grid=tuple(aucs))
    assert best == 3.0 and table == {0.3: 0.7, 1.0: 0.71, 3.0: 0.71, 10.0: 0.6}  # 0.71 twice: the stronger
    assert tune_l2(lambda l2: 0.5, grid=(30.0, 0.3))[0] == 30.0
    assert tune_l2(lambda l2: -l2, grid=L2_GRID)[0] == min(L2_GRID)


def test_parse_l2_accepts_positive_numbers_only():
    assert parse_l2("2.5") == 2.5 and parse_l2(5) == 5.0
    for bad in ("0", "-1", "nan", "inf", "x", None):
        with pytest.raises(InputError, match="positive number"):
            parse_l2(bad)


def test_fit_epochs_stops_early_and_puts_the_best_epoch_back():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(10, 2), torch.randn(10)
    aucs = iter([0.6, 0.7, 0.65, 0.69, 0.9])  # best at epoch 2, then two checks without improvement
    weights, seen, log = [], [], []

    def losses(rows):
        seen.append(rows.tolist())
        loss = torch.nn.functional.mse_loss(model(x[rows]).squeeze(-1), y[rows])
        return loss, loss + 0.0 * model.weight.sum()

    def evaluate():
        assert not model.training
        weights.append(model.weight.detach().clone())
        return next(aucs)

    fit = fit_epochs(model, optimiser, 10, losses, evaluate, epochs=10, batch_size=4, patience=2, seed=3,
                     name="toy", log=log.append)
    assert fit["best_epoch"] == 2 and fit["valid_auc"] == 0.7 and [h["epoch"] for h in fit["history"]] == [1, 2, 3, 4]
    assert torch.equal(model.weight, weights[1]) and not model.training
    assert log[0].startswith("[toy] epoch 1: train loss ") and log[0].endswith("valid AUC 0.6000")
    # one seeded permutation per epoch, cut into minibatches
    rng = np.random.default_rng(3)
    assert seen[:3] == [p.tolist() for p in torch.from_numpy(rng.permutation(10)).split(4)]
    assert sorted(sum(seen[3:6], [])) == list(range(10))
