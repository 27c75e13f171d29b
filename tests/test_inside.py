"""Inside the LLM: attention shares, attribution, ablation, logit lens and neighbourhoods on tiny
models; the 'inside' command on quick checkpoints; the /inside endpoint over HTTP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from collm_demo import inside
from collm_demo.analysis import ablation_scores, analyse, grad_x_input, logit_lens
from conftest import HISTORIES, TARGETS, scoring_runtime


def prompts(model, with_cf):
    return [model.builder.build(h, y, t, with_cf) for (h, y), t in zip(HISTORIES, TARGETS)]


def test_position_groups_label_the_slots_title_and_history(tiny):
    llm, model = tiny
    for with_cf in (True, False):
        for p, target in zip(prompts(model, with_cf), TARGETS):
            labels = model.builder.position_groups(p, target)
            assert len(labels) == len(p)
            text = {g: llm.tokenizer.decode([t for t, lab in zip(p.ids, labels) if lab == g]) for g in inside.GROUPS}
            assert text["title"] == f' "{target}"'
            assert text["history"].startswith(' "') and "liked" in text["history"]
            if with_cf:
                assert labels[p.user_slot] == "user slot" and labels[p.item_pos] == "item slot"
                assert labels.count("user slot") == labels.count("item slot") == 1
            else:
                assert "user slot" not in labels and "item slot" not in labels


@pytest.mark.fp32
@pytest.mark.parametrize("with_cf", [True, False])
def test_attention_shares_sum_to_one_per_layer(tiny, with_cf):
    """A mixed-length (padded) batch: each layer's five group shares sum to 1 for every prompt."""
    _, model = tiny
    ps = prompts(model, with_cf)
    users, items = (torch.randn(3, 6), torch.randn(3, 6)) if with_cf else (None, None)
    out = analyse(model, ps, users, items)
    for n, p in enumerate(ps):
        assert out.attention[n].shape == (2, len(p))  # 2 layers, real tokens only
        shares = inside.group_shares(out.attention[n], model.builder.position_groups(p, TARGETS[n]))
        assert shares.shape == (2, len(inside.GROUPS))
        np.testing.assert_allclose(shares.sum(1), 1.0, atol=1e-5)
        assert (shares[:, :2] > 0).all() == with_cf  # the slots get attention only when they exist


@pytest.mark.fp32
def test_analyse_keeps_scoring_parity_and_matches_single_prompts(tiny):
    _, model = tiny
    ps = prompts(model, True)
    users, items = torch.randn(3, 6), torch.randn(3, 6)
    out = analyse(model, ps, users, items)
    scores = model.score(ps, users, items)
    torch.testing.assert_close(torch.sigmoid(out.diff), scores, atol=1e-5, rtol=0)
    alone = analyse(model, ps[:1], users[:1], items[:1])  # padding changes nothing
    torch.testing.assert_close(out.attention[0], alone.attention[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.attribution[0], alone.attribution[0], atol=1e-4, rtol=1e-4)


def test_grad_x_input_on_a_linear_model_is_its_contributions():
    torch.manual_seed(1)
    x = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(7, 5)
    contributions = grad_x_input((x * w).sum(), x)
    torch.testing.assert_close(contributions, (x * w).sum(-1).detach())
    torch.testing.assert_close(contributions.sum(), (x * w).sum().detach())  # complete: they add up to f(x)
    shares = inside.attribution_shares(contributions.detach(), ["user slot", "item slot"] + ["template"] * 5)
    magnitude = (x * w).sum(-1).abs().detach()
    assert shares["user slot"] == pytest.approx(float(magnitude[0] / magnitude.sum()))
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.fp32
def test_analyse_attribution_equals_autograd_on_the_written_embeddings(tiny):
    """The hook path: gradient x input w.r.t. the embeddings with the CF slots written, by hand."""
    llm, model = tiny
    p = prompts(model, True)[0]
    user, item = torch.randn(6), torch.randn(6)
    out = analyse(model, [p], user.view(1, -1), item.view(1, -1), attention=False)
    ids = torch.tensor([p.ids])
    embeds = llm.model.get_input_embeddings()(ids).detach().clone()
    with torch.no_grad():
        embeds[0, p.user_slot], embeds[0, p.item_pos] = model.projector(user), model.projector(item)
    embeds.requires_grad_(True)
    logits = llm.model(inputs_embeds=embeds).logits[0, -1]
    expected = grad_x_input(logits[model.yes_id] - logits[model.no_id], embeds)[0]
    torch.testing.assert_close(out.attribution[0], expected.detach(), atol=1e-5, rtol=1e-4)
    assert out.attention is None


@pytest.mark.fp32
def test_ablation_with_both_none_vectors_equals_scoring_them_directly(tiny):
    _, model = tiny
    ps = prompts(model, True)
    users, items = torch.randn(3, 6), torch.randn(3, 6)
    none_user, none_item = torch.zeros(6), torch.full((6,), 0.3)
    ab = ablation_scores(model, ps, users, items, none_user, none_item)
    direct = model.score(ps, none_user.expand(3, -1), none_item.expand(3, -1))
    torch.testing.assert_close(ab["both_none"], direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(ab["full"], model.score(ps, users, items), atol=1e-5, rtol=0)
    torch.testing.assert_close(ab["user_none"], model.score(ps, none_user.expand(3, -1), items), atol=1e-5, rtol=0)
    torch.testing.assert_close(ab["item_none"], model.score(ps, users, none_item.expand(3, -1)), atol=1e-5, rtol=0)


@pytest.mark.fp32
def test_logit_lens_last_layer_is_the_model_output(tiny):
    llm, model = tiny
    p = prompts(model, True)[0]
    ins = model.inspect(p, torch.randn(6), torch.randn(6), hidden_states=True, top_k=3)
    lens = logit_lens(model, ins.hidden_states, len(p) - 1, top_k=3)
    assert len(lens) == 3  # the input + 2 layers
    assert [w for w, _ in lens[-1]] == [w for w, _ in ins.top]
    np.testing.assert_allclose([q for _, q in lens[-1]], [q for _, q in ins.top], atol=1e-5)
    slot = logit_lens(model, ins.hidden_states, p.user_slot, top_k=4)
    assert all(len(row) == 4 and all(0 <= q <= 1 for _, q in row) for row in slot)


def test_neighbourhood_kept_is_one_for_an_identity_projector():
    rng = np.random.default_rng(0)
    cf = rng.normal(size=(60, 8))
    np.testing.assert_allclose(inside.neighbourhood_kept(cf, cf, k=10), 1.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    np.testing.assert_allclose(inside.neighbourhood_kept(cf, 3 * cf @ rotation, k=10), 1.0)  # cosine: scale/rotation kept
    scrambled = inside.neighbourhood_kept(cf, rng.normal(size=(60, 8)), k=10)
    assert scrambled.mean() < 0.5  # unrelated tokens keep about k/n of the neighbours


def test_bootstrap_intervals_bracket_the_mean_and_a_zero_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, size=400)
    m = inside.bootstrap_mean(a, resamples=500)
    assert m["low"] < m["mean"] < m["high"] and m["n"] == 400
    assert m["low"] < 1.0 < m["high"]
    layers = inside.bootstrap_mean(rng.normal(size=(300, 4)), resamples=500)
    assert len(layers["mean"]) == len(layers["low"]) == 4
    same = inside.bootstrap_difference(a[:200], a[200:], resamples=500)
    assert same["low"] < 0 < same["high"]
    shifted = inside.bootstrap_difference(a + 1.0, a, resamples=500)
    assert shifted["low"] > 0.8


def test_stratified_sample_quotas():
    n = 400
    frame = pd.DataFrame({"cold_item": [True] * 30 + [False] * (n - 30),
                          "cold_user": [False, True] * (n // 2)})
    sample = inside.stratified_sample(frame, 100, seed=3)
    assert len(sample) == 100 and sample.index.is_unique
    assert sample["cold_item"].sum() == 25
    warm_item = sample[~sample["cold_item"]]
    assert abs(int(warm_item["cold_user"].sum()) - int((~warm_item["cold_user"]).sum())) <= 1
    assert inside.stratified_sample(frame, 100, seed=3).index.equals(sample.index)  # seeded


@pytest.mark.any_precision
def test_inside_command_writes_the_report(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    from collm_demo.__main__ import main

    out = tmp_path / "inside.json"
    assert main(["inside", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints",
                 str(tiny_checkpoints), "--rows", "24", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 0 < report["protocol"]["rows"] == report["protocol"]["rows_asked"] <= 24  # the tiny test split is small
    assert report["layers"] == 2
    # the analysis pass scores as score_shared does, within the precision's promise
    assert report["protocol"]["parity_max_abs"] < scoring_runtime().tolerance
    for name in inside.SLICES:
        part = report["slices"][name]
        if part["attention_cf_mean"]["n"] == 0:  # e.g. no cold item in the tiny test split
            assert part["attention_cf_mean"]["mean"] is None
            continue
        assert len(part["attention_cf_by_layer"]["mean"]) == 2
        assert 0 <= part["attribution_cf_share"]["mean"] <= 1
    for side in ("item", "user"):
        d = report["warm_minus_cold"][side]["ablation_drop_both"]
        assert d["low"] is None or d["low"] <= d["diff"] <= d["high"]
    hood = report["neighbourhood"]
    assert hood["k"] == 10 and sum(hood["histogram"]["items"]) == hood["items"]
    assert report["finding"].startswith("Warm items vs cold items")


@pytest.mark.fp32
def test_explain_prompt_on_quick_checkpoints(tiny_checkpoints, tiny_llm_dir, tiny_data_dir):
    """The app's one-prompt report: shares sum to 1 with CF on and off, the ablation's full score is
    the CF score, the lens has one row per layer (+ the input) for each slot."""
    from collm_demo.pipeline import load_pipeline

    pipe = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    row = pipe.dataset.split("test").iloc[0]
    users, _ = pipe.cf_vectors(pipe.dataset.split("test").iloc[:1], for_tokens=True)
    out = inside.explain_prompt(pipe, row["history_items"], row["history_labels"], row["item"], users[0], top_k=3)
    json.dumps(out)  # plain JSON
    for mode in ("cf_on", "cf_off"):
        np.testing.assert_allclose(np.asarray(out["attention"][mode]).sum(1), 1.0, atol=1e-4)
    assert np.asarray(out["attention"]["cf_off"])[:, :2].max() == 0  # no slots without CF
    assert out["ablation"]["full"] == pytest.approx(out["score_cf"], abs=1e-5)
    assert out["ablation"]["text_only"] == pytest.approx(out["score_text"])
    assert out["attribution"]["tokens"].count("<UserID>") == 1 and len(out["attribution"]["values"]) == len(
        out["attribution"]["tokens"])
    assert sum(out["attribution"]["shares"].values()) == pytest.approx(1.0, abs=1e-4)
    for slot in ("user slot", "item slot"):
        assert len(out["logit_lens"][slot]) == out["layers"] + 1 and len(out["logit_lens"][slot][0]) == 3
        assert len(out["nearest_input_words"][slot]) == 3


# ------------------------------------------------------------- the app on the real embedded LLM

@pytest.mark.integration
@pytest.mark.any_precision
def test_inside_view_handlers(real_state):
    """The tab's numbers for a real user, the charts and tables it draws, and the scenarios' picks."""
    from collm_demo.ui import inside as view
    from collm_demo.ui.warm_cold import measured_figure, measured_table, measured_text

    data = view.inside_json(real_state, "1", "50")
    assert data["title"] == real_state.dataset.title("50") and data["layers"] == 30
    assert len(data["attention"]["cf_on"]) == 30
    np.testing.assert_allclose(np.asarray(data["attention"]["cf_on"]).sum(1), 1.0, atol=1e-4)
    tolerance = real_state.pipeline().model.runtime.tolerance  # the ablation runs its own batch
    assert data["ablation"]["full"] == pytest.approx(data["score_cf"], abs=tolerance)
    assert 0 < data["neighbourhood"]["mean"] <= 1
    summary, fig, table, shaded, ablation, lens, note, hood_md, hood_fig = view.outputs(data)
    assert fig.layout.height == view.ATTENTION_HEIGHT and hood_fig.layout.height == view.HISTOGRAM_HEIGHT
    assert len(table) == 30 and shaded.count("<span") == len(data["attribution"]["tokens"])
    assert list(ablation["P(Yes)"])[0] == pytest.approx(data["score_cf"], abs=tolerance + 5e-5)  # 4 decimals shown
    assert len(lens) == 32 and "Why the two differ" in note and "%" in hood_md
    with pytest.raises(view.InputError, match="exactly one"):
        view.inside_json(real_state, "1", "50, 51")
    for name in ("warm", "cold", "composed"):
        profile, item = view.scenario_pick(real_state, name, None)
        assert profile.items and item in real_state.catalog.item_title
        assert real_state.catalog.item_warm(item) == (name != "cold")
    report = real_state.assets.inside()
    if report is not None:  # the shipped assets/inside.json
        table = measured_table(report)
        assert "Measured on" in measured_text(report) and list(table.columns)[1:3] == ["warm items", "cold items"]
        assert len(table) == 5 and "[" in table.iloc[0, 3]  # one row a measure, "mean [CI]" cells
        assert measured_figure(report).layout.height is not None


@pytest.mark.integration
@pytest.mark.api
def test_inside_endpoint_over_http(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    params = [p["parameter_name"] for p in api["named_endpoints"]["/inside"]["parameters"]]
    assert params == ["user_id", "item_id", "cf_model"]
    out = client.predict(user_id="1", item_id="50", api_name="/inside")
    assert set(out) >= {"attention", "attribution", "ablation", "logit_lens", "nearest_input_words", "neighbourhood"}
    assert len(out["attention"]["cf_on"]) == out["layers"]
    assert 0 <= out["score_cf"] <= 1 and out["item"] == "50"


def test_an_interrupted_inside_run_resumes_to_the_same_report(tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                              tmp_path, monkeypatch):
    """`inside` saves each chunk's measurements; stopped and run again, it measures only the
    missing chunks and writes the same numbers as an uninterrupted run."""
    from collm_demo.__main__ import main

    monkeypatch.setattr(inside, "INSIDE_CHUNK", 8)  # several chunks on the tiny test split
    args = ["inside", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints",
            str(tiny_checkpoints), "--rows", "24", "--out"]
    real, calls = inside.measure_rows, {"whole": 0, "cut": 0, "rerun": 0}

    def counting(run: str, stop_after: int | None = None):
        def measure_rows(*a, **k):
            calls[run] += 1
            if stop_after is not None and calls[run] > stop_after:
                raise KeyboardInterrupt
            return real(*a, **k)
        return measure_rows

    monkeypatch.setattr(inside, "measure_rows", counting("whole"))
    assert main(args + [str(tmp_path / "whole.json")]) == 0
    assert calls["whole"] >= 2
    out = tmp_path / "cut.json"
    monkeypatch.setattr(inside, "measure_rows", counting("cut", stop_after=1))
    with pytest.raises(KeyboardInterrupt):
        main(args + [str(out)])
    assert (tmp_path / "cut.progress.safetensors").is_file()
    monkeypatch.setattr(inside, "measure_rows", counting("rerun"))
    assert main(args + [str(out)]) == 0
    assert calls["rerun"] == calls["whole"] - 1 and not (tmp_path / "cut.progress.safetensors").exists()
    whole, cut = (json.loads(f.read_text()) for f in (tmp_path / "whole.json", out))
    for key in ("slices", "warm_minus_cold", "finding"):
        assert cut[key] == whole[key], key
