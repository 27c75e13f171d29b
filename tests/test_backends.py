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
from conftest import TITLES, synthetic_ratings, write_ml1m, write_ml100k


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


def test_app_switches_cf_backend(vectors, tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """The app's CF-model selector: same LLM and LoRA, the other backend's CF file and projector;
    scores, walkthrough and map inputs follow the backend the result was scored with."""
    import shutil

    from collm_demo.ui import core, embedding, explain, recommend
    from collm_demo.ui.state import AppConfig, AppState

    _, folder, users, _ = vectors
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, ckpt)
    assert main(["import-embeddings", "--quick", "--name", "toy", "--users", str(folder / "users.npy"),
                 "--user-ids", str(folder / "user_ids.json"), "--items", str(folder / "items.npy"),
                 "--item-ids", str(folder / "item_ids.txt"), "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--checkpoints", str(ckpt)]) == 0
    for stage in ("cf", "projector"):
        assert main(["train", "--quick", "--cf", "sasrec", "--stage", stage, "--llm", str(tiny_llm_dir),
                     "--data", str(tiny_data_dir), "--checkpoints", str(ckpt)]) == 0
    base = load_pipeline(ckpt, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    state = AppState(AppConfig(checkpoint_dir=ckpt, llm=str(tiny_llm_dir), data=str(tiny_data_dir),
                               layout_path=tmp_path / "none.json", results_path=tmp_path / "none.json"),
                     pipeline=base)
    assert state.backends() == ["mf", "sasrec", "toy"]
    assert [name for _, name in state.backend_choices()] == ["mf", "sasrec", "toy"]
    toy = state.pipeline("toy")
    assert toy.cf_name == "toy" and toy.cf.dim == 5 and base.cf.dim != 5
    assert toy.model.llm is base.model.llm  # nothing of the LLM is copied
    assert state.pipeline("toy") is toy and state.pipeline() is base

    user = users[0]
    table, _ = recommend.load_history(state, "user", user)
    candidates = state.item_ids[:4]
    by_mf = recommend.score(state, "user", user, table, candidates)
    by_toy = recommend.score(state, "user", user, table, candidates, cf="toy")
    assert by_mf["cf"] == "mf" and by_toy["cf"] == "toy" and "toy" in by_toy["cf_mode"]
    # The text prompt has no CF slot: identical without CF; with CF the tokens differ.
    assert [r["score_text"] for r in by_mf["rows"]] == [r["score_text"] for r in by_toy["rows"]]
    assert [r["score_cf"] for r in by_mf["rows"]] != [r["score_cf"] for r in by_toy["rows"]]
    # ... and they are exactly the engine's CoLLM-toy scores for this user's rows.
    profile = core.Profile.from_dict(by_toy["profile"])
    uvec, _ = core.user_vector(state, profile, "toy")
    prompts = [toy.model.builder.build([state.dataset.title(i) for i in profile.items], profile.labels,
                                       state.dataset.title(c), True) for c in candidates]
    direct = toy.model.score(prompts, uvec.expand(len(candidates), -1), toy.cf.item_vectors(candidates))
    assert torch.allclose(direct, torch.tensor([r["score_cf"] for r in by_toy["rows"]]), atol=1e-4)

    walk = explain.explain(state, by_toy, candidates[0])
    assert walk["step1_table"]["dims"].tolist() == [5, 5]
    assert "Linear 5→50" in walk["step2_md"]
    frame, _ = embedding.token_report(state, by_toy, candidates[0])
    assert len(frame) == 8
    why = embedding.unavailable(state, "toy")
    assert "embedding-map --cf toy" in why  # no layout for this backend: says how to make one

    api = core.compare(state, user, ",".join(candidates), "toy")
    assert [r["score_cf"] for r in api] == [round(r["score_cf"], 6) for r in by_toy["rows"]]
    # SASRec's user vector is the encoding of the history shown, as in the evaluation, even for a
    # user it has a stored vector for.
    sasrec = state.pipeline("sasrec")
    known = next(u for u in sasrec.cf.user_ids if u in state.users and state.users[u].n_pretest)
    real = core.real_profile(state, known)
    vec, why = core.user_vector(state, real, "sasrec")
    assert "encoded by the sequential model" in why
    assert torch.allclose(vec, sasrec.cf.row_user_vectors([known], [real.items], [real.labels])[0])
    assert not torch.allclose(vec, sasrec.cf.user_vectors([known])[0])

    with pytest.raises(core.InputError, match="not available; this app has: mf, sasrec, toy"):
        core.compare(state, user, candidates[0], "nope")
    with pytest.raises(core.InputError, match="cf_model must be a name"):
        core.compare(state, user, candidates[0], 3)


def test_results_table_puts_backends_side_by_side():
    from collm_demo.evaluate import backend_pairs, results_table

    def cell(auc):
        return {s: {"auc": auc, "uauc": auc - 0.1, "n": n} for s, n in (("all", 10), ("warm", 4), ("cold", 6))}

    methods = {"mf": cell(0.74), "zero_shot": cell(0.48), "text_only": cell(0.61), "collm": cell(0.72),
               "lightgcn": cell(0.75), "collm_lightgcn": cell(0.70), "svd": cell(0.6), "collm_svd": cell(0.65)}
    assert backend_pairs(methods) == [("mf", "collm"), ("lightgcn", "collm_lightgcn"), ("svd", "collm_svd")]
    table = results_table({"methods": methods})
    main, backends = table.split("Every CF backend")
    assert "LightGCN" not in main and "| LightGCN | 0.7500 (0.6500) |" in backends
    assert "| 0.7000 (0.6000) | 0.7000 | 0.7000 | -0.0500 |" in backends
    assert "| SVD, imported | 0.6000 (0.5000) |" in backends and "+0.0500 |" in backends
    # a backend whose CoLLM row is missing still shows, marked, and never borrows another's numbers
    del methods["collm_svd"], methods["collm_lightgcn"]
    main, backends = results_table({"methods": methods}).split("Every CF backend")
    assert "SVD" not in main and "| SVD, imported | 0.6000 (0.5000) | 0.6000 | 0.6000 | — | — | — |" in backends
    assert "| LightGCN | 0.7500 (0.6500) | 0.7500 | 0.7500 | — |" in backends


def write_csv_pair(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(
        "user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in synthetic_ratings()))
    (folder / "items.csv").write_text("item,title,genres\n" + "".join(
        f"{n},{title},Comedy|Drama\n" for n, title in enumerate(TITLES, 1)))
    return folder


@pytest.mark.parametrize("fmt", ["ml-1m", "csv"])
def test_other_data_formats_run_the_whole_pipeline(fmt, tiny_llm_dir, tmp_path, monkeypatch):
    """A MovieLens-1M folder and a CSV pair: load, protocol, all training stages, evaluation
    (every method's rows) and the app (state, scoring, page built), with no fetch at all."""
    from collm_demo import assets
    from collm_demo.ui import build_demo, recommend
    from collm_demo.ui.state import AppConfig, AppState

    def no_fetch(*args, **kwargs):
        raise AssertionError("nothing may be fetched when --data and --llm are given")

    monkeypatch.setattr(assets, "fetch", no_fetch)
    data = write_ml1m(tmp_path / "ml1m") if fmt == "ml-1m" else write_csv_pair(tmp_path / "csv")
    ckpt = tmp_path / "ckpt"
    common = ["--quick", "--llm", str(tiny_llm_dir), "--data", str(data), "--checkpoints", str(ckpt)]
    assert main(["train", *common]) == 0
    manifest = read_manifest(ckpt)
    assert manifest["data"]["counts"]["splits"]["test"]["rows"] > 0
    assert {"cf", "lora", "projector"} <= set(manifest["stages"])
    out = tmp_path / "results.json"
    assert main(["evaluate", *common, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["methods"]) == {"mf", "mf_no_foldin", "zero_shot", "text_only", "collm"}
    assert results["protocol"]["data"] == load_dataset(data).name

    pipeline = load_pipeline(ckpt, str(tiny_llm_dir), str(data), bf16=False)
    state = AppState(AppConfig(checkpoint_dir=ckpt, llm=str(tiny_llm_dir), data=str(data),
                               layout_path=tmp_path / "none.json", results_path=out), pipeline=pipeline)
    user = state.default_user()
    table, _ = recommend.load_history(state, "user", user)
    scored = recommend.score(state, "user", user, table, state.item_ids[:3])
    assert [r["title"] for r in scored["rows"]] == TITLES[:3]
    assert all(r["score_cf"] is not None for r in scored["rows"])
    demo = build_demo(state)
    assert any(fn.api_name == "compare" for fn in demo.fns.values())
