"""The CF backends: LightGCN and SASRec learn planted structure; imported vectors are validated;
the registry names every backend and results key, reads every kind of CF file, trains what it lists."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from sklearn.metrics import roc_auc_score

from collm_demo import cf as registry
from collm_demo.cf import BACKENDS, CFModel, backend, load_cf, method_colour, method_label, trainable_backends
from collm_demo.cf.imported import import_embeddings
from collm_demo.cf.lightgcn import train_lightgcn
from collm_demo.cf.sasrec import SequentialCF, train_sasrec
from collm_demo.data import load_dataset
from collm_demo.errors import CheckpointError, DataError
from conftest import synthetic_ratings, write_ml100k


def test_lightgcn_recovers_planted_structure(tmp_path):
    ds = load_dataset(write_ml100k(tmp_path / "d", synthetic_ratings(n_users=120, per_user=10, seed=3)))
    train = ds.interactions[ds.interactions["split"] == "train"]
    cf, info = train_lightgcn(train, ds.split("valid"), dim=8, epochs=60, lr=0.05, weight_decay=1e-3,
                              patience=10, batch_size=64, log=lambda _: None)
    test = ds.split("test")
    test = test[~test["cold_user"]]
    scores = cf.score_vectors(cf.user_vectors(test["user"].tolist()), cf.item_vectors(test["item"].tolist()))
    assert roc_auc_score(test["label"], scores.numpy()) > 0.9
    assert cf.dim == 10 and cf.kind == "lightgcn"


def test_import_validates_shapes_dtypes_values_and_ids(vectors):
    ds, folder, users, items = vectors
    known_u, known_i = set(ds.interactions["user"]), set(ds.items.index)
    cf = import_embeddings(folder / "users.npy", folder / "items.npy", known_u, known_i,
                           folder / "user_ids.json", folder / "item_ids.txt", "toy")
    assert cf.dim == 5 and cf.user_ids == users and cf.kind == "imported:toy"
    np.save(folder / "bad.npy", np.full((len(users), 5), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        import_embeddings(folder / "bad.npy", folder / "items.npy", known_u, known_i,
                          folder / "user_ids.json", folder / "item_ids.txt")
    np.save(folder / "ints.npy", np.ones((len(users), 5), dtype=np.int64))
    with pytest.raises(ValueError, match="floating point"):
        import_embeddings(folder / "ints.npy", folder / "items.npy", known_u, known_i,
                          folder / "user_ids.json", folder / "item_ids.txt")
    np.save(folder / "wrongdim.npy", np.ones((len(items), 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dim 5 but item vectors have dim 4"):
        import_embeddings(folder / "users.npy", folder / "wrongdim.npy", known_u, known_i,
                          folder / "user_ids.json", folder / "item_ids.txt")
    (folder / "unknown.json").write_text(json.dumps(["nobody"] + users[1:]))
    with pytest.raises(ValueError, match="not in the dataset"):
        import_embeddings(folder / "users.npy", folder / "items.npy", known_u, known_i,
                          folder / "unknown.json", folder / "item_ids.txt")
    (folder / "short.json").write_text(json.dumps(users[:-1]))
    with pytest.raises(ValueError, match="ids"):
        import_embeddings(folder / "users.npy", folder / "items.npy", known_u, known_i,
                          folder / "short.json", folder / "item_ids.txt")
    (folder / "evil.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" + b" " * 40 + b"\n")
    with pytest.raises(ValueError):
        import_embeddings(folder / "evil.npy", folder / "items.npy", known_u, known_i,
                          folder / "user_ids.json", folder / "item_ids.txt")


def test_safetensors_with_ids_in_metadata(vectors, tmp_path):
    ds, folder, users, items = vectors
    save_file({"embeddings": np.load(folder / "users.npy")}, str(tmp_path / "u.safetensors"),
              metadata={"ids": json.dumps(users)})
    cf = import_embeddings(tmp_path / "u.safetensors", folder / "items.npy", set(ds.interactions["user"]),
                           set(ds.items.index), item_ids_path=folder / "item_ids.txt")
    assert torch.equal(cf.user_table, torch.from_numpy(np.load(folder / "users.npy")))


def test_sasrec_learns_from_histories_and_round_trips(tmp_path):
    ds = load_dataset(write_ml100k(tmp_path / "d", synthetic_ratings(n_users=150, per_user=10, seed=4)))
    cf, info = train_sasrec(ds.split("train"), ds.split("valid"), dim=16, epochs=60, lr=5e-3, patience=8,
                            batch_size=64, log=lambda _: None)
    test = ds.split("test")
    test = test[test["history_items"].map(len) >= 3]
    users = cf.row_user_vectors(test["user"].tolist(), test["history_items"].tolist(), test["history_labels"].tolist())
    scores = cf.score_vectors(users, cf.item_vectors(test["item"].tolist()))
    assert roc_auc_score(test["label"], scores.numpy()) > 0.85  # new users need no fold-in
    cf.save(tmp_path / "s.safetensors")
    back = load_cf(tmp_path / "s.safetensors")
    again = back.row_user_vectors(test["user"].tolist(), test["history_items"].tolist(), test["history_labels"].tolist())
    torch.testing.assert_close(again, users)
    assert torch.equal(back.row_user_vectors(["x"], [[]], [[]])[0], torch.cat([torch.zeros(16), torch.ones(1)]))
    # a history alone (the app's composed or edited profile) is encoded like a prompt row's
    row = test.iloc[0]
    torch.testing.assert_close(back.history_user_vector(row["history_items"], row["history_labels"]), again[0])


def test_import_errors_are_data_errors_that_name_the_file(vectors, tmp_path):
    ds, folder, _, _ = vectors
    known_u, known_i = set(ds.interactions["user"]), set(ds.items.index)
    for users, user_ids in ((tmp_path / "none.npy", folder / "user_ids.json"),
                            (folder / "users.npy", tmp_path / "none.json")):
        with pytest.raises(DataError, match="file not found") as err:
            import_embeddings(users, folder / "items.npy", known_u, known_i, user_ids, folder / "item_ids.txt")
        assert "none." in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.json"):
        import_embeddings(folder / "users.npy", folder / "items.npy", known_u, known_i, tmp_path / "bad.json",
                          folder / "item_ids.txt")
    with pytest.raises(DataError, match="bad.safetensors"):
        import_embeddings(tmp_path / "bad.safetensors", folder / "items.npy", known_u, known_i,
                          folder / "user_ids.json", folder / "item_ids.txt")


# ---------------------------------------------------------------------------------------- the registry

# The labels and colours the results, README and app have always shown (evaluate.METHOD_LABELS and
# ui/warm_cold.METHOD_COLORS before the registry); results files keep these keys.
OLD_LABELS = {"mf": "MF (CF alone)", "mf_no_foldin": "MF, no fold-in (paper's handling of new users)",
              "zero_shot": "Zero-shot LLM", "text_only": "Text-only LoRA (TALLRec)",
              "collm": "CoLLM (LoRA + CF tokens)", "lightgcn": "LightGCN (CF alone)",
              "collm_lightgcn": "CoLLM-LightGCN", "sasrec": "SASRec (CF alone)", "collm_sasrec": "CoLLM-SASRec",
              "svd": "SVD, imported (CF alone)", "collm_svd": "CoLLM-SVD (imported vectors)"}
OLD_COLOURS = {"mf": "#868E96", "mf_no_foldin": "#CED4DA", "zero_shot": "#BE4BDB", "text_only": "#F08C00",
               "collm": "#4C6EF5", "lightgcn": "#A9E34B", "collm_lightgcn": "#2B8A3E", "sasrec": "#FFA8A8",
               "collm_sasrec": "#C92A2A", "svd": "#99E9F2", "collm_svd": "#0C8599"}


def test_every_results_key_keeps_its_label_and_colour():
    assert {key: method_label(key) for key in OLD_LABELS} == OLD_LABELS
    assert {key: method_colour(key) for key in OLD_COLOURS} == OLD_COLOURS
    for b in BACKENDS.values():  # every backend's keys are named and coloured by its entry
        assert (method_label(b.alone_key), method_label(b.collm_key)) == (b.alone_label, b.collm_label)
        assert (method_colour(b.alone_key), method_colour(b.collm_key)) == (b.colour_alone, b.colour)


def test_backends_are_looked_up_and_other_names_are_imported_vectors():
    assert trainable_backends() == ("mf", "lightgcn", "sasrec")
    assert [backend(n).label for n in trainable_backends()] == ["MF (matrix factorisation)", "LightGCN (graph)",
                                                                "SASRec (sequential)"]
    assert all(backend(n) is BACKENDS[n] and callable(BACKENDS[n].trainer) for n in trainable_backends())
    svd = backend("svd")
    assert svd.imported and svd.trainer is None and svd.short == "SVD" and svd.label == "svd (imported)"
    # file names and keys: MF keeps its historical ones, every other backend follows the rule
    mf, lgcn = backend("mf"), backend("lightgcn")
    assert (mf.cf_file, mf.projector_file, mf.cf_stage, mf.projector_stage, mf.collm_key) == \
        ("cf_mf.safetensors", "projector_mf.safetensors", "cf", "projector", "collm")
    assert (lgcn.cf_file, lgcn.projector_file, lgcn.cf_stage, lgcn.projector_stage, lgcn.collm_key) == \
        ("cf_lightgcn.safetensors", "projector_lightgcn.safetensors", "cf_lightgcn", "projector_lightgcn",
         "collm_lightgcn")
    assert (svd.cf_file, svd.collm_key, svd.cli_flag, mf.cli_flag) == ("cf_svd.safetensors", "collm_svd", " --cf svd", "")


def test_capabilities_not_kinds():
    assert CFModel.encodes_history is False and SequentialCF.encodes_history is True
    ui = Path(__file__).resolve().parent.parent / "collm_demo" / "ui"
    assert not any(re.search(r"[!=]= \"sasrec\"", line) for path in ("core.py", "embedding.py")
                   for line in (ui / path).read_text().splitlines())


def test_the_cf_stage_trainers_train_what_train_py_always_trained(tmp_path):
    ds = load_dataset(write_ml100k(tmp_path / "d", synthetic_ratings(n_users=60, per_user=8, seed=5)))
    cfg = types.SimpleNamespace(cf_dim=4, cf_epochs=2, cf_lr=1e-2, cf_weight_decay=1e-2, cf_patience=3, seed=0,
                                sasrec_lr=1e-3)
    train = ds.interactions[ds.interactions["split"] == "train"]
    for name in trainable_backends():
        used, cf, info = BACKENDS[name].trainer(ds, cfg, lambda _: None)
        assert used.equals(train) and cf.meta["kind"] == name and len(info["history"]) <= 2
    # SASRec at its own learning rate: the same model as train_sasrec called directly with it
    direct, _ = train_sasrec(ds.split("train"), ds.split("valid"), dim=4, epochs=2, lr=1e-3, weight_decay=1e-2,
                             patience=3, seed=0, log=lambda _: None)
    assert torch.equal(direct.item_table, cf.item_table) and torch.equal(direct.user_table, cf.user_table)


def test_load_cf_reads_every_kind_and_refuses_what_is_not_a_cf_file(tmp_path):
    plain = CFModel(["u"], ["i", "j"], torch.ones(1, 3), torch.zeros(2, 3), 0.5, meta={"kind": "lightgcn"})
    plain.kind = "lightgcn"
    plain.save(tmp_path / "p.safetensors")
    back = load_cf(tmp_path / "p.safetensors")
    assert type(back) is CFModel and back.kind == "lightgcn" and back.global_bias == 0.5
    assert set(registry.LOADERS) == {"sasrec"}  # every other kind is the plain file
    with pytest.raises(CheckpointError, match="does not exist"):
        load_cf(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_cf(tmp_path / "junk.safetensors")
    save_file({"user_table": np.zeros((1, 3), np.float32)}, str(tmp_path / "other.safetensors"), metadata={"kind": "mf"})
    with pytest.raises(CheckpointError, match="not a CF checkpoint of this project"):
        load_cf(tmp_path / "other.safetensors")
    with pytest.raises(ValueError):  # a CheckpointError is still a ValueError for older callers
        load_cf(tmp_path / "other.safetensors")
