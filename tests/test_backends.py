"""Other CF backends end to end: imported vectors train a projector, the app switches backend, other data
formats run the whole pipeline (the CF models themselves: test_cf_backends.py)."""

from __future__ import annotations

import json

import pytest
import torch

from collm_demo.__main__ import main
from collm_demo.checkpoints import read_manifest
from collm_demo.data import load_dataset
from collm_demo.pipeline import load_pipeline
from conftest import TITLES, synthetic_ratings, write_ml1m

# Pipelines here are loaded with bf16=False: float32, so scores are compared exactly.
pytestmark = pytest.mark.fp32


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


def test_app_switches_cf_backend(vectors, tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """The app's CF-model selector: same LLM and LoRA, the other backend's CF file and projector;
    scores, walkthrough and map inputs follow the backend the result was scored with."""
    import shutil

    from collm_demo.config import AppConfig
    from collm_demo.ui import core, embedding, explain, recommend
    from collm_demo.ui.state import AppState

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
    assert state.hub.backends() == ["mf", "sasrec", "toy"]
    choices = state.hub.backend_choices()
    assert [name for _, name in choices] == ["mf", "sasrec", "toy"]
    assert choices[1][0].startswith("SASRec (sequential)") and choices[2][0].startswith("toy (imported)")
    toy = state.pipeline("toy")
    assert toy.cf_name == "toy" and toy.cf.dim == 5 and base.cf.dim != 5
    assert toy.model.llm is base.model.llm  # nothing of the LLM is copied
    assert state.pipeline("toy") is toy and state.pipeline() is base

    user = users[0]
    table, _ = recommend.load_history(state, "user", user)
    candidates = state.catalog.item_ids[:4]
    by_mf = recommend.score(state, "user", user, table, candidates)
    by_toy = recommend.score(state, "user", user, table, candidates, cf="toy")
    assert by_mf.cf == "mf" and by_toy.cf == "toy" and "toy (imported)" in by_toy.cf_mode
    # The text prompt has no CF slot: identical without CF; with CF the tokens differ.
    assert [r.score_text for r in by_mf.rows] == [r.score_text for r in by_toy.rows]
    assert [r.score_cf for r in by_mf.rows] != [r.score_cf for r in by_toy.rows]
    # ... and they are exactly the engine's CoLLM-toy scores for this user's rows.
    profile = by_toy.profile
    uvec, _ = core.user_vector(state, profile, "toy")
    prompts = [toy.model.builder.build([state.dataset.title(i) for i in profile.items], profile.labels,
                                       state.dataset.title(c), True) for c in candidates]
    direct = toy.model.score(prompts, uvec.expand(len(candidates), -1), toy.cf.item_vectors(candidates))
    assert torch.allclose(direct, torch.tensor([r.score_cf for r in by_toy.rows]), atol=1e-4)

    walk = explain.explain(state, by_toy, candidates[0])
    assert walk.step1_table["dims"].tolist() == [5, 5]
    assert "Linear 5→50" in walk.step2_md
    frame, _ = embedding.token_report(state, by_toy, candidates[0])
    assert len(frame) == 8
    why = core.map_unavailable(state, "toy")
    assert "embedding-map --cf toy" in why  # no layout for this backend: says how to make one

    api = core.compare(state, user, ",".join(candidates), "toy")
    assert [r["score_cf"] for r in api] == [round(r.score_cf, 6) for r in by_toy.rows]
    # The walkthrough's score is the ranking's (CoLLM.inspect: the same path and float32 head).
    inspected = core.answer_logits(state, profile, candidates[0], True, "toy")
    assert inspected.score == pytest.approx(by_toy.rows[0].score_cf, abs=1e-4)
    # SASRec's user vector is the encoding of the history shown, as in the evaluation, even for a
    # user it has a stored vector for.
    sasrec = state.pipeline("sasrec")
    known = next(u for u in sasrec.cf.user_ids if u in state.catalog.users and state.catalog.users[u].n_pretest)
    real = core.real_profile(state, known)
    vec, why = core.user_vector(state, real, "sasrec")
    assert "encoded by the sequential model" in why
    assert torch.allclose(vec, sasrec.cf.row_user_vectors([known], [real.items], [real.labels])[0])
    assert not torch.allclose(vec, sasrec.cf.user_vectors([known])[0])

    with pytest.raises(core.InputError, match="not available; this app has: mf, sasrec, toy"):
        core.compare(state, user, candidates[0], "nope")
    with pytest.raises(core.InputError, match="cf_model must be a name"):
        core.compare(state, user, candidates[0], 3)


def test_catalog_is_built_from_the_dataset_alone(tiny_data_dir):
    """Users, items, histories and warm flags come from a Dataset, no model; warm uses the protocol's threshold."""
    from collm_demo.ui.catalog import Catalog

    ds = load_dataset(tiny_data_dir)
    catalog = Catalog(ds)
    assert catalog.warm_min == ds.protocol.warm_min
    user = catalog.default_user()
    info = catalog.users[user]
    assert info.warm == (info.n_train >= ds.protocol.warm_min)
    hist = catalog.real_history(user)
    assert 0 < len(hist) <= ds.protocol.history_len and (hist["timestamp"] < catalog.test_start).all()
    assert set(catalog.true_labels(user)) == set(catalog.test_items(user)["item"].astype(str))
    assert all(catalog.item_warm(i) == (catalog.item_train.get(i, 0) >= catalog.warm_min) for i in catalog.item_ids)


def test_memoize_keys_on_the_arguments():
    from collm_demo.ui.memo import memoize
    from collm_demo.ui.values import Profile

    class Owner:
        pass

    calls = []

    @memoize(8, ignore=("progress",))
    def work(owner, profile, cf=None, progress=None):
        calls.append((profile, cf))
        return len(calls)

    owner, other = Owner(), Owner()
    a = Profile("user", "1", ["1", "2"], [1, 0], ["2000-01-01", "2000-01-02"])
    b = Profile("user", "1", ("1", "2"), (1, 0))  # the same history: dates are shown, not identity
    assert work(owner, a) == work(owner, b, None, progress=print) == work(owner, b, cf=None) == 1
    assert work(owner, a, "lightgcn") == 2 and work(other, a) == 3  # other arguments, other owner: computed
    assert work(owner, Profile("edited", "1", a.items, a.labels)) == 4


def test_refused_checkpoints_fall_back_to_zero_shot(tiny_llm_dir, tiny_data_dir, tmp_path):
    """Any CoLLMError from the checkpoints (here an unreadable manifest) runs the plain LLM, with a notice."""
    from collm_demo.config import AppConfig
    from collm_demo.ui.state import AppState

    (tmp_path / "manifest.json").write_text("{not json")
    state = AppState(AppConfig(checkpoint_dir=tmp_path, llm=str(tiny_llm_dir), data=str(tiny_data_dir),
                               layout_path=tmp_path / "none.json", results_path=tmp_path / "none.json"))
    pipe = state.pipeline()
    assert pipe.cf is None and not pipe.has_lora
    assert "were refused" in state.hub.notice and "zero-shot" in state.hub.notice


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


def test_the_paper_recipe_keeps_its_row_beside_the_shipped_one():
    """"collm@paper" is the CoLLM row of the paper's recipe: no backend, its own label, and in the
    headline right after the shipped CoLLM row (README table and the app's headline alike)."""
    from collm_demo.cf import Backend, method_label, recipe_row, split_recipe_row
    from collm_demo.evaluate import backend_pairs, results_table
    from collm_demo.ui.warm_cold import HEADLINE, ordered_methods

    key = recipe_row("collm", "paper")
    assert key == "collm@paper" and split_recipe_row(key) == ("collm", "paper") and split_recipe_row("collm") is None
    assert Backend.from_key(key) is None and method_label(key) == "CoLLM, the paper's recipe"
    assert method_label("collm_lightgcn@paper") == "CoLLM-LightGCN, the paper's recipe"

    def cell(auc):
        return {s: {"auc": auc, "uauc": auc - 0.1, "n": n} for s, n in (("all", 10), ("warm", 4), ("cold", 6))}

    methods = {"mf": cell(0.74), key: cell(0.71), "text_only": cell(0.61), "collm": cell(0.72),
               "lightgcn": cell(0.75), "collm_lightgcn": cell(0.70)}
    assert backend_pairs(methods) == [("mf", "collm"), ("lightgcn", "collm_lightgcn")]
    main = results_table({"methods": methods}).split("Every CF backend")[0]
    rows = [line.split(" | ")[0].strip("| ") for line in main.splitlines() if line.startswith("| ")][1:]
    assert rows[-2:] == [method_label("collm"), method_label(key)]
    assert HEADLINE.index(key) == HEADLINE.index("collm") + 1
    assert ordered_methods({"methods": methods}).index(key) == ordered_methods({"methods": methods}).index("collm") + 1
    # another backend's paper-recipe row: its own column in the backends table, after its CoLLM row in the app
    methods["collm_lightgcn@paper"] = cell(0.69)
    backends = results_table({"methods": methods}).split("Every CF backend")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in backends.splitlines() if line.startswith("| ")}
    assert rows["MF"].endswith("| 0.7100 (0.6100) |") and rows["LightGCN"].endswith("| 0.6900 (0.5900) |")
    order = ordered_methods({"methods": methods})
    assert order.index("collm_lightgcn@paper") == order.index("collm_lightgcn") + 1
    del methods[key]
    assert results_table({"methods": methods}).split("Every CF backend")[1].splitlines()[4].endswith("| — |")


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
    from collm_demo.config import AppConfig
    from collm_demo.ui import build_demo, recommend
    from collm_demo.ui.state import AppState

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
    assert set(results["methods"]) == {"mf", "mf_no_foldin", "like_share", "zero_shot", "text_only", "collm"}
    assert results["protocol"]["data"] == load_dataset(data).name

    pipeline = load_pipeline(ckpt, str(tiny_llm_dir), str(data), bf16=False)
    state = AppState(AppConfig(checkpoint_dir=ckpt, llm=str(tiny_llm_dir), data=str(data),
                               layout_path=tmp_path / "none.json", results_path=out), pipeline=pipeline)
    user = state.catalog.default_user()
    table, _ = recommend.load_history(state, "user", user)
    scored = recommend.score(state, "user", user, table, state.catalog.item_ids[:3])
    assert [r.title for r in scored.rows] == TITLES[:3]
    assert all(r.score_cf is not None for r in scored.rows)
    demo = build_demo(state)
    assert any(fn.api_name == "compare" for fn in demo.fns.values())
