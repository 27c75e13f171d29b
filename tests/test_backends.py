"""Other CF backends: LightGCN learns planted structure; imported vectors are validated and used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from sklearn.metrics import roc_auc_score

from collm_demo.__main__ import main
from collm_demo.cf.imported import import_embeddings
from collm_demo.cf.lightgcn import train_lightgcn
from collm_demo.data import load_dataset
from collm_demo.pipeline import load_pipeline, read_manifest
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


@pytest.fixture
def vectors(tmp_path, tiny_data_dir):
    ds = load_dataset(tiny_data_dir)
    users = sorted(ds.interactions["user"].unique())[:30]
    items = sorted(ds.items.index)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "users.npy", rng.normal(size=(len(users), 5)).astype(np.float32))
    np.save(tmp_path / "items.npy", rng.normal(size=(len(items), 5)).astype(np.float32))
    (tmp_path / "user_ids.json").write_text(json.dumps(users))
    (tmp_path / "item_ids.txt").write_text("\n".join(items))
    return ds, tmp_path, users, items


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


def test_import_command_trains_only_the_projector(vectors, tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    import shutil

    _, folder, _, _ = vectors
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, ckpt)
    lora_before = (ckpt / "lora" / "adapter_model.safetensors").read_bytes()
    assert main(["import-embeddings", "--quick", "--name", "toy", "--users", str(folder / "users.npy"),
                 "--user-ids", str(folder / "user_ids.json"), "--items", str(folder / "items.npy"),
                 "--item-ids", str(folder / "item_ids.txt"), "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--checkpoints", str(ckpt)]) == 0
    assert (ckpt / "lora" / "adapter_model.safetensors").read_bytes() == lora_before
    assert "projector_toy" in read_manifest(ckpt)["stages"]
    pipeline = load_pipeline(ckpt, str(tiny_llm_dir), str(tiny_data_dir), cf_name="toy")
    assert pipeline.available_methods() == ["toy", "zero_shot", "text_only", "collm_toy"]
    out = tmp_path / "results.json"
    assert main(["evaluate", "--quick", "--cf", "toy", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
                 "--checkpoints", str(ckpt), "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["methods"]) == {"toy", "collm_toy"}


def test_sasrec_learns_from_histories_and_round_trips(tmp_path):
    from collm_demo.cf import load_cf
    from collm_demo.cf.sasrec import train_sasrec

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
