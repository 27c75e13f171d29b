"""The app's handlers, called directly (no server), on the real embedded LLM and ML-100K.

Kept fast: a handful of candidates per call; scoring results are cached by the app, so
repeated calls are free.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from collm_demo.config import MAX_CANDIDATES, AppConfig
from collm_demo.errors import InputError
from collm_demo.ui import core, embedding, explain, profiles, recommend, simulator, warm_cold
from collm_demo.ui.state import AppState
from collm_demo.ui.values import Profile, ScoredResult, focus_choices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user(real_state):
    return real_state.catalog.default_user()


@pytest.fixture(scope="module")
def scored(real_state, user):
    table, _ = recommend.load_history(real_state, "user", user)
    cands = recommend.candidate_set(real_state, "test", 4, "user", user, table, seed=0)
    rated = set(real_state.catalog.test_items(user)["item"])
    cold = [i for i in real_state.catalog.item_ids if not real_state.catalog.item_warm(i) and i not in rated][:1]
    return recommend.score(real_state, "user", user, table, cands + cold)


# ------------------------------------------------------------------- state / history

def test_users_and_histories(real_state, user):
    choices = real_state.catalog.user_choices()
    assert choices and all(label.startswith("user ") for label, _ in choices)
    info = real_state.catalog.users[user]
    assert info.warm and info.n_test >= 10
    hist = real_state.catalog.real_history(user)
    assert 0 < len(hist) <= 10
    assert (hist["timestamp"] < real_state.catalog.test_start).all()  # honest: nothing from the test period
    assert hist["timestamp"].is_monotonic_increasing


def test_load_history_real_and_composed(real_state, user):
    table, note = recommend.load_history(real_state, "user", user)
    assert list(table.columns) == core.HISTORY_COLUMNS
    assert f"User **{user}**" in note and "training interactions" in note
    assert all(table["date"].str.match(r"\d{4}-\d\d-\d\d"))
    composed, note = recommend.load_history(real_state, "composed", None)
    assert len(composed) >= 1 and (composed["date"] == "").all()
    assert "folded in" in note


def test_edit_history_makes_profile_edited(real_state, user):
    table, _ = recommend.load_history(real_state, "user", user)
    assert core.profile_from_inputs(real_state, "user", user, table).kind == "user"
    flipped = table.copy()
    flipped.loc[0, "liked"] = not bool(flipped.loc[0, "liked"])
    profile = core.profile_from_inputs(real_state, "user", user, flipped)
    assert profile.kind == "edited" and profile.labels[0] != int(table.loc[0, "liked"])
    assert "Edited" in recommend.history_status(real_state, "user", user, flipped)
    # strings from the browser ("true"/"false") parse too
    as_text = table.astype(str)
    assert core.profile_from_inputs(real_state, "user", user, as_text).kind == "user"


def test_add_remove_and_limit(real_state):
    table = core.history_frame(real_state, [])
    table = recommend.add_to_history(real_state, table, ["1", "50"], "liked")
    table = recommend.add_to_history(real_state, table, ["100"], "disliked")
    assert list(table["id"]) == ["1", "50", "100"] and list(table["liked"]) == [True, True, False]
    table = recommend.add_to_history(real_state, table, ["1"], "disliked")  # re-adding flips the label
    assert list(table["liked"]) == [False, True, False]
    table = recommend.remove_from_history(real_state, table, ["50"])
    assert list(table["id"]) == ["1", "100"]
    full = recommend.add_to_history(real_state, table, [str(i) for i in range(200, 208)], "liked")
    assert len(full) == 10
    warnings = []
    longer = recommend.add_to_history(real_state, full, ["300", "301"], "liked", warn=warnings.append)
    assert list(longer["id"]) == list(full["id"])[2:] + ["300", "301"]  # the latest 10 are kept
    assert len(warnings) == 1 and "kept the latest 10" in warnings[0] and "dropped the 2 oldest" in warnings[0]
    # a table edited to more than 10 rows is cut the same way, and the status line says so
    too_long = pd.concat([full, longer.tail(2)], ignore_index=True)
    assert list(core.profile_from_inputs(real_state, "composed", None, too_long).items) == list(too_long["id"])[-10:]
    assert "kept the latest 10" in recommend.history_status(real_state, "composed", None, too_long)
    with pytest.raises(InputError, match="Unknown movie"):
        recommend.add_to_history(real_state, full, ["999999"], "liked")


def test_candidate_sets(real_state, user):
    table, _ = recommend.load_history(real_state, "user", user)
    test = recommend.candidate_set(real_state, "test", 5, "user", user, table, seed=1)
    assert len(test) == 5 and set(test) <= set(real_state.catalog.test_items(user)["item"])
    popular = recommend.candidate_set(real_state, "popular", 5, "user", user, table)
    assert all(real_state.catalog.item_warm(i) for i in popular)
    assert not set(popular) & set(table["id"])
    cold = recommend.candidate_set(real_state, "cold", 5, "user", user, table, seed=1)
    assert len(cold) == 5 and not any(real_state.catalog.item_warm(i) for i in cold)
    assert len(recommend.candidate_set(real_state, "random", 7, "user", user, table, seed=1)) == 7
    with pytest.raises(InputError, match="composed"):
        recommend.candidate_set(real_state, "test", 5, "composed", None, table)


# ----------------------------------------------------------------------- scoring

def test_score_both_modes(real_state, scored):
    rows = scored.rows
    assert isinstance(scored, ScoredResult) and len(rows) == 5 and scored.has_cf
    for r in rows:
        assert 0 <= r.score_text <= 1 and 0 <= r.score_cf <= 1
        assert r.delta == pytest.approx(r.score_cf - r.score_text)
    assert sum(r.label is not None for r in rows) >= 4  # the user's test items carry true labels
    assert rows[-1].warm is False and rows[-1].label is None
    hash(scored)  # the gr.State value is a frozen value (and keys caches)


@pytest.mark.any_precision
def test_scores_match_the_plain_forward(real_state, scored):
    """Shared-prefix scores (the table) agree with one full forward per prompt (How it works),
    within the promise of the precision the app runs in."""
    profile = scored.profile
    row = scored.rows[0]
    text = core.answer_logits(real_state, profile, row.item, False)
    cf = core.answer_logits(real_state, profile, row.item, True)
    tolerance = real_state.pipeline().model.runtime.tolerance
    assert text.score == pytest.approx(row.score_text, abs=tolerance)
    assert cf.score == pytest.approx(row.score_cf, abs=tolerance)


def test_results_table_sorting_and_toggle(real_state, scored):
    with_cf = recommend.results_table(scored, recommend.SORT_CHOICES[0], True)
    assert list(with_cf.columns) == recommend.RESULT_COLUMNS
    assert with_cf[recommend.COL_CF].is_monotonic_decreasing
    assert list(with_cf["rank"]) == list(with_cf["rank w/ CF"])
    without = recommend.results_table(scored, recommend.SORT_CHOICES[1], False)
    assert without[recommend.COL_TEXT].is_monotonic_decreasing
    assert list(without["rank"]) == list(without["rank w/o CF"])
    by_delta = recommend.results_table(scored, recommend.SORT_CHOICES[2], True)
    assert by_delta[recommend.COL_DELTA].is_monotonic_decreasing
    assert "CoLLM" in recommend.summary(real_state, scored, True)
    assert "text-only" in recommend.summary(real_state, scored, False)


def test_delta_chart_and_prompts(real_state, scored):
    fig = recommend.delta_figure(scored)
    assert isinstance(fig, go.Figure) and fig.layout.height >= 280
    names = {t.name for t in fig.data}
    assert any("warm" in n for n in names) and any("cold" in n for n in names)
    choices, first = focus_choices(scored, True)
    assert len(choices) == 5
    text, cf = recommend.prompts_html(real_state, scored, first, True)
    assert "slot" not in text and "used for the ranking" not in text
    assert 'class="slot slot-user"' in cf and 'class="slot slot-item"' in cf and "used for the ranking" in cf
    assert "&lt;UserID&gt;" in cf and "&lt;ItemID&gt;" in cf


def test_composed_user_is_folded_in(real_state):
    table = core.history_frame(real_state, [("50", 1, ""), ("181", 1, ""), ("313", 0, "")])
    result = recommend.score(real_state, "composed", None, table, ["172", "1"])
    assert result.profile.kind == "composed"
    assert "folded in" in result.vector_source
    assert all(r.label is None for r in result.rows)
    vec, _ = core.user_vector(real_state, result.profile)
    default = real_state.pipeline().cf.default_user
    assert not torch.allclose(vec, default)  # the history moved it away from the no-information vector
    # the CF token is made from the fold-in the projector was trained on; MF alone uses its own
    pipe = real_state.pipeline()
    profile = result.profile
    token_vec, _ = core.user_vector(real_state, profile, for_tokens=True)
    expected = pipe.cf.row_user_vectors(["x"], [profile.items], [profile.labels], l2=pipe.token_foldin_l2())[0]
    torch.testing.assert_close(token_vec, expected)
    if pipe.token_foldin_l2() != pipe.cf.foldin_l2:
        assert not torch.allclose(token_vec, vec)
        walk = explain.explain(real_state, result, "172")
        assert f"strength {pipe.cf.foldin_l2:g}" in walk.step1_md
        assert f"uses {pipe.token_foldin_l2():g}" in walk.step1_md


def test_score_input_errors(real_state, user):
    table, _ = recommend.load_history(real_state, "user", user)
    with pytest.raises(InputError, match="empty"):
        recommend.score(real_state, "user", user, table, [])
    with pytest.raises(InputError, match="history is empty"):
        recommend.score(real_state, "composed", None, core.history_frame(real_state, []), ["1"])


def test_compare(real_state):
    out = core.compare(real_state, " 1 ", "1, 50,100")
    assert [o["id"] for o in out] == ["1", "50", "100"]
    assert set(out[0]) == {"id", "title", "warm", "score_text", "score_cf", "delta"}
    assert out[1]["title"] == "Star Wars" and isinstance(out[1]["warm"], bool)
    assert out[2]["delta"] == pytest.approx(out[2]["score_cf"] - out[2]["score_text"], abs=2e-6)


@pytest.mark.parametrize("user_id, items, message", [
    ("1", "", "empty"),
    ("1", " , ", "empty"),
    ("1", "1, x", "not a numeric"),
    ("1", "1, 99999", "unknown item"),
    ("1", "1, 2, 1", "duplicate"),
    ("1", ", ".join(str(i) for i in range(1, MAX_CANDIDATES + 2)), "at most 50"),
    ("abc", "1", "not a numeric user"),
    ("999999", "1", "unknown user"),
    ("", "1", "user_id is empty"),
])
def test_compare_bad_input(real_state, user_id, items, message):
    with pytest.raises(InputError, match=message):
        core.compare(real_state, user_id, items)


# ------------------------------------------------------------------- other tabs

def test_embedding_map(real_state, scored):
    fig, caption = embedding.map_figure(real_state, scored, "warm", True, scored.rows[0].item)
    assert fig.layout.height == embedding.MAP_HEIGHT
    names = [t.name for t in fig.data]
    assert "candidates" in names and "vocabulary words" in names and "warm items" in names
    assert "UMAP" in caption
    fig, _ = embedding.map_figure(real_state, scored, "genre", False, None)
    assert "vocabulary words" not in [t.name for t in fig.data]
    frame, text = embedding.token_report(real_state, scored, scored.rows[0].item)
    assert len(frame) == 8 and frame.iloc[:, 2].between(-1, 1).all()
    assert "typical word embedding" in text


def test_composed_user_is_placed(real_state):
    profile = Profile("composed", None, ["50", "172"], [1, 1])
    (x, y), how = core.user_position(real_state, profile)
    assert "placed" in how
    xs = [p["x"] for p in real_state.assets.layout()["points"]]
    assert min(xs) - 1 <= x <= max(xs) + 1


def test_results_and_missing_results(real_state):
    results = real_state.assets.results()
    frame = warm_cold.results_frame(results)
    assert list(frame.columns)[:3] == ["method", "all AUC", "all UAUC"] and len(frame) >= 1
    fig = warm_cold.results_figure(results)
    assert fig.layout.height == 430 and len(fig.data) == 2 * len(results["methods"])
    assert warm_cold.results_frame(None).empty
    assert "python -m collm_demo evaluate" in warm_cold.results_note(real_state, None)


def test_cold_start_simulator(real_state, scored):
    item = simulator.default_sim_item(real_state, scored)
    sim = simulator.simulate(real_state, scored, item, seed=0)
    rows = sim["rows"]
    assert [r["k"] for r in rows[:3]] == [0, 1, 3]
    assert len({round(r["text"], 6) for r in rows}) == 1  # the text-only score cannot move
    # k = 0 is the no-information item vector
    zero = real_state.pipeline().cf.default_item
    assert rows[0]["norm"] == pytest.approx(float(zero.norm()), abs=1e-5)
    assert all(r["xy"] is not None for r in rows)
    table = simulator.simulation_table(sim)
    assert len(table) == len(simulator.K_CHOICES) + 1
    assert simulator.simulation_figure(sim, "3").layout.height == simulator.SIM_HEIGHT
    assert "text-only score stays" in simulator.simulation_text(sim, "3")


@pytest.mark.any_precision
def test_explain_walkthrough(real_state, scored):
    item = scored.rows[0].item
    data = explain.explain(real_state, scored, item)
    assert set(explain.OUTPUT_KEYS) <= {f.name for f in dataclasses.fields(data)}
    assert list(data.step1_table["vector"])[0].startswith("user")
    assert data.step1_table["dims"].iloc[0] == real_state.pipeline().cf.dim
    assert "position" in data.step3_md and 'class="tok tok-user"' in data.step3_html
    table = data.step4_table
    assert len(table) == 2
    tolerance = real_state.pipeline().model.runtime.tolerance + 5e-5  # the table shows 4 decimals
    assert table["score = sigmoid(Yes − No)"].iloc[1] == pytest.approx(scored.rows[0].score_cf, abs=tolerance)
    assert "rank" in data.step5_md


def test_build_demo_has_only_the_designed_endpoints_public(real_state):
    from collm_demo.ui import build_demo

    demo = build_demo(real_state)
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")
    assert public == ["compare", "inside", "same_films"]


def test_app_starts_without_checkpoints(tmp_path):
    """No checkpoints at all: the app still builds and scores, zero-shot, with a notice."""
    state = AppState(AppConfig(checkpoint_dir=tmp_path, layout_path=tmp_path / "none.json",
                               results_path=tmp_path / "none.json"))
    pipe = state.pipeline()
    assert not pipe.has_projector and not pipe.has_lora
    assert "zero-shot" in state.hub.notice and "python -m collm_demo train" in state.hub.notice
    user = state.catalog.default_user()
    table, _ = recommend.load_history(state, "user", user)
    result = recommend.score(state, "user", user, table, ["1", "50"])
    assert not result.has_cf and all(r.score_cf is None for r in result.rows)
    assert "zero-shot" in result.text_mode
    frame = recommend.results_table(result, recommend.SORT_CHOICES[0], True)
    assert frame[recommend.COL_CF].isna().all() and frame[recommend.COL_TEXT].is_monotonic_decreasing
    assert "No projector" in recommend.summary(state, result, True)
    assert core.map_unavailable(state) is not None
    fig, caption = embedding.map_figure(state, result)
    assert "projector" in caption
    with pytest.raises(InputError):
        simulator.simulate(state, result, "1")
    data = explain.explain(state, result, "1")
    assert len(data.step4_table) == 1
    from collm_demo.ui import banner, build_demo

    assert "Not everything is trained" in banner(state)
    build_demo(state)


# ----------------------------------------------------- demos that repeat (issue 19)

def _many_test_items(state, min_each: int = 15) -> str:
    """The user with the most test items among those with at least ``min_each`` of each answer."""
    users = [u for u in state.catalog.users.values()
             if u.n_pretest and u.n_test_pos >= min_each and u.n_test - u.n_test_pos >= min_each]
    return max(users, key=lambda u: (u.n_test, u.user)).user


def test_test_items_are_the_same_on_every_click(real_state):
    """'This user's test items' is fixed by (user, size): a rehearsed demo gets its numbers back."""
    user = _many_test_items(real_state)
    assert real_state.catalog.users[user].n_test > 40  # so a random draw would differ
    table, _ = recommend.load_history(real_state, "user", user)
    first = recommend.candidate_set(real_state, "test", 20, "user", user, table)
    assert recommend.candidate_set(real_state, "test", 20, "user", user, table) == first
    assert recommend.candidate_set(real_state, "test", 20, "user", user, None) == first  # history plays no part


def test_test_items_are_balanced(real_state):
    """Half liked, half disliked where the user has both; the smaller side whole when it is short."""
    user = _many_test_items(real_state)
    labels = real_state.catalog.true_labels(user)
    for n in (6, 10, 20, 30):
        cands = recommend.candidate_set(real_state, "test", n, "user", user, None)
        liked = sum(labels[i] for i in cands)
        assert len(cands) == n and liked == n // 2, (n, liked)
    # a user with few disliked test items: all of them are in, the liked fill the rest
    skewed = next(u for u in real_state.catalog.users.values()
                  if u.n_pretest and 2 <= u.n_test - u.n_test_pos <= 5 and u.n_test_pos >= 25)
    cands = recommend.candidate_set(real_state, "test", 20, "user", skewed.user, None)
    known = real_state.catalog.true_labels(skewed.user)
    assert len(cands) == 20 and sum(1 - known[i] for i in cands) == skewed.n_test - skewed.n_test_pos


def test_user_change_refreshes_candidates_and_clears_results(real_state, scored):
    """Picking another user in the app: their test items become the candidates and the previous
    user's results leave the screen (no stale table under the old name)."""
    from collm_demo.ui import build_demo

    demo = build_demo(real_state)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    dropdown = by_id["user-dropdown"]
    (fn,) = [f for f in demo.fns.values() if (dropdown._id, "input") in [tuple(t) for t in f.targets]]
    other = next(u for _, u in real_state.catalog.user_choices()
                 if u != scored.profile.user and real_state.catalog.users[u].n_test >= 25)
    out = dict(zip(fn.outputs, fn.fn("user", other, 20, recommend.SORT_CHOICES[0], True)))
    assert out[by_id["candidates"]] == recommend.candidate_set(real_state, "test", 20, "user", other, None)
    assert getattr(out[by_id["results-table"]], "data", out[by_id["results-table"]]).empty  # a Styler's frame
    assert "Press **Score candidates**" in out[by_id["summary"]]
    states = [b for b in fn.outputs if b.__class__.__name__ == "State"]
    assert states and all(out[b] is None for b in states)  # the scored result is dropped too
    table, note, cands, result = recommend.change_user(real_state, "user", other, 20)
    assert f"User **{other}**" in note and cands == out[by_id["candidates"]] and result is None


def test_ground_truth_is_visible(real_state, scored):
    """Liked / disliked coloured in the table, marked on the Δ bars, a rank-without -> rank-with
    chart coloured by the answer, and the line saying only the ranking matters."""
    frame = recommend.results_table(scored, recommend.SORT_CHOICES[0], True)
    assert {"liked", "disliked"} <= set(frame["truth"])
    html = recommend.styled_table(frame).to_html()
    assert recommend.LIKED_BG in html and recommend.DISLIKED_BG in html
    bars = recommend.delta_figure(scored, True)
    names = [y for t in bars.data for y in t.y]
    assert sum(y.startswith("✓ liked") for y in names) == sum(r.label == 1 for r in scored.rows)
    assert sum(y.startswith("✗ disliked") for y in names) == sum(r.label == 0 for r in scored.rows)
    outlines = [c for t in bars.data for c in t.marker.line.color]
    assert outlines.count(recommend.LIKED_LINE) == sum(r.label == 1 for r in scored.rows)
    fig = recommend.rank_figure(scored)
    assert len(fig.data) == len(scored.rows) and fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # 1 on top
    colours = {t.name: t.line.color for t in fig.data}
    assert colours["liked"] == recommend.LIKED_LINE and colours["disliked"] == recommend.DISLIKED_LINE
    assert "Only the ranking matters" in recommend.summary(real_state, scored, True)


def test_page_opens_on_a_measured_demo_user(real_state):
    """The first user is the first curated demo user (warm, both answers among the test items),
    and the Recommend tab lists the demo users with their liked / disliked counts."""
    from collm_demo.ui.catalog import DEMO_USERS

    demo = real_state.catalog.demo_users()
    assert [u.user for u in demo] == list(DEMO_USERS["ml-100k"])
    assert real_state.catalog.default_user() == demo[0].user == "94"
    note = recommend.demo_users_note(real_state)
    for u in demo:
        assert f"user {u.user} ({u.n_test_pos} liked / {u.n_test - u.n_test_pos} disliked" in note
    cands = recommend.user_candidates(real_state, "94", recommend.DEFAULT_SET_SIZE)
    labels = real_state.catalog.true_labels("94")
    assert len(cands) == 20 and sum(labels[i] for i in cands) == 10


# ------------------------------------------------------- projected: map, simulator, walkthrough

def _no_fixed_width(fig: go.Figure) -> None:
    """Explicit height, no width: a fixed width would not follow the container (the app's plots are
    responsive, and re-measured when their tab is shown)."""
    assert fig.layout.height and fig.layout.width is None


def test_map_colours_by_a_readable_number_with_a_colour_bar(real_state, scored):
    """Default colouring is the mean rating (1-5 colour bar), not 19 genre colours; popularity
    (training interactions, log colour bar) is the other readable choice; warm / cold stays."""
    assert embedding.COLOR_CHOICES[0][1] == "rating"
    fig, caption = embedding.map_figure(real_state, scored)
    _no_fixed_width(fig)
    bars = [t for t in fig.data if t.marker.colorbar.title.text]
    assert len(bars) == 1 and bars[0].marker.colorbar.title.text == "mean rating"
    assert (bars[0].marker.cmin, bars[0].marker.cmax) == (1, 5)
    assert 1 <= min(bars[0].marker.color) and max(bars[0].marker.color) <= 5
    assert fig.layout.legend.font.size >= 13 and "mean training rating" in caption
    fig, caption = embedding.map_figure(real_state, scored, "popularity")
    pop = next(t for t in fig.data if t.marker.colorbar.title.text)
    assert pop.marker.colorbar.title.text == "training interactions"
    assert pop.marker.colorbar.ticktext[:3] == ("1", "3", "10")  # log scale, labelled in counts
    assert "training interactions" in caption
    fig, _ = embedding.map_figure(real_state, scored, "warm")
    assert {"warm items", "cold items"} <= {t.name for t in fig.data}


def test_map_names_several_candidates_without_stacking(real_state, scored):
    fig, _ = embedding.map_figure(real_state, scored, focus=scored.rows[-1].item)
    notes = fig.layout.annotations
    titles = {r.title[:10] for r in scored.rows}
    named = [a for a in notes if a.text.replace("<b>", "")[:10] in titles]
    assert len(named) == min(embedding.LABELLED + 1, len(scored.rows)) > 1
    assert sum(a.text.startswith("<b>") for a in named) == 1  # the inspected candidate stands out
    # labels of candidates at the same spot go different ways
    offsets = {(a.ax, a.ay) for a in named}
    assert len(offsets) > 1


def test_spread_labels_separates_close_points():
    from collm_demo.ui.views import spread_labels

    offsets = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    assert len(set(spread_labels([(0, 0), (0.01, 0), (0.02, 0)], offsets))) == 3
    assert spread_labels([(0, 0), (100, 0)], offsets, alternate=True)[1] != spread_labels([(0, 0)], offsets)[0]


def test_simulator_draws_every_k_and_offsets_its_labels(real_state, scored):
    sim = simulator.simulate(real_state, scored, simulator.default_sim_item(real_state, scored), seed=0)
    labels = [f"k={c}" for c in simulator.K_CHOICES]
    fig = simulator.simulation_figure(sim, "3")
    _no_fixed_width(fig)
    assert list(fig.layout.xaxis.categoryarray) == labels
    assert list(fig.layout.xaxis.range) == [-0.5, len(labels) - 0.5]  # the k=all marker is inside the plot
    assert all(list(t.x) == labels for t in fig.data[:3])
    m = simulator.simulation_map(real_state, sim, "3")
    _no_fixed_width(m)
    path = next(t for t in m.data if t.name == "refit item (placed)")
    assert [t.replace("<br>", "").strip(" \u2002") for t in path.text] == labels
    positions = list(path.textposition)
    assert all(a != b for a, b in zip(positions, positions[1:]))  # neighbouring k never on the same side


def test_walkthrough_bar_labels_stay_below_the_subplot_titles(real_state, scored):
    fig = explain.explain(real_state, scored, scored.rows[0].item).step4_fig
    _no_fixed_width(fig)
    logits = [v for t in fig.data if t.xaxis == "x" for v in t.y]
    diffs = [v for t in fig.data if t.xaxis == "x2" for v in t.y]
    top = max(0, max(logits))
    assert fig.layout.yaxis.range[1] >= top + 0.25 * max(abs(v) for v in logits)  # room for the labels
    assert fig.layout.yaxis2.range[0] <= min(0, min(diffs)) and fig.layout.yaxis2.range[1] > max(0, max(diffs))
    assert fig.layout.margin.t >= 80


def test_showing_a_tab_resizes_its_plots(real_state):
    """A plot updated while its tab was hidden kept plotly's default 700 px width (the map at
    about 55 % of its box after a CF-model switch): showing a tab dispatches a window resize."""
    from collm_demo.ui import RESIZE_PLOTS_JS, build_demo

    demo = build_demo(real_state)
    resizers = [fn for fn in demo.fns.values() if fn.js == RESIZE_PLOTS_JS]
    assert resizers and all(fn.fn is None for fn in resizers)  # client-side only
    triggers = {event for fn in resizers for _, event in fn.targets}
    assert {"select", "change"} <= triggers
    assert "resize" in RESIZE_PLOTS_JS


# ------------------------------------------------- issue 19: a page a presenter can drive

def _synthetic_result(n: int = 8) -> ScoredResult:
    """K rows whose CF order, text order and Δ order all differ (a fixed pattern, no model)."""
    from collm_demo.ui.values import ScoredRow

    rows = tuple(ScoredRow(item=str(i + 1), title=f"Movie {i + 1}", year=None, genres="", n_train=10, warm=True,
                           score_text=0.5 + 0.01 * ((3 * i) % n), score_cf=0.5 + 0.013 * ((5 * i + 2) % n),
                           label=i % 2, in_history=False) for i in range(n))
    return ScoredResult(profile=Profile("composed", None, ("1",), (1,)), rows=rows, vector_source="", cf="mf",
                        cf_label="MF", text_mode="text-only (LoRA)", cf_mode="CoLLM (MF tokens)", user_warm=False,
                        user_n_train=0, seconds=0.0)


@pytest.mark.parametrize("sort_by", recommend.SORT_CHOICES)
@pytest.mark.parametrize("inject", [True, False])
def test_rank_column_reads_in_order_under_every_sort(sort_by, inject):
    """Sorted by Δ (or by the other mode), the first column still reads 1, 2, 3 ...; the two
    modes' own ranks stay with their movies."""
    result = _synthetic_result()
    frame = recommend.results_table(result, sort_by, inject)
    assert list(frame["rank"]) == list(range(1, len(result.rows) + 1))
    by_cf = recommend.results_table(result, recommend.SORT_CHOICES[0], True)
    own = {m: (a, b) for m, a, b in zip(by_cf["movie"], by_cf["rank w/o CF"], by_cf["rank w/ CF"])}
    assert {m: (a, b) for m, a, b in zip(frame["movie"], frame["rank w/o CF"], frame["rank w/ CF"])} == own
    column = {recommend.SORT_CHOICES[0]: recommend.COL_CF, recommend.SORT_CHOICES[1]: recommend.COL_TEXT,
              recommend.SORT_CHOICES[2]: recommend.COL_DELTA}[sort_by]
    assert frame[column].is_monotonic_decreasing


def test_comparison_sentence_follows_the_numbers():
    same = profiles.comparison_sentence(0.93, 0.95, 0.995, 0.95)
    assert "almost the same way (ρ = 0.93)" in same and "general appeal, not the user's taste" in same
    assert "barely differ (cosine 0.99" in same and "ρ = 0.95" in same  # the text-only correlation too
    collapsed = profiles.comparison_sentence(0.98, 0.94, 0.91, 0.95, cos_vectors=0.04)
    assert "further apart than two real users' usually are" in collapsed and "hardly moves" in collapsed
    assert "folded-in CF vectors differ far more (cosine 0.04)" in collapsed
    apart = profiles.comparison_sentence(0.35, 0.9, 0.2, 0.4)
    assert "differently (ρ = 0.35)" in apart and "almost the same" not in apart and "hardly moves" not in apart


def _small_presets(state, n: int = 6) -> dict:
    preset = profiles.compare_presets(state)
    half = preset["candidates"][:10]
    return preset | {"candidates": half[: n // 2] + preset["candidates"][10: 10 + n // 2]}


def test_compare_two_composed_profiles(real_state):
    """Two composed profiles (the sci-fi fan and the children's-film fan, from the catalogue by
    genre and popularity), the same candidates for both: two top lists, the rank correlation of
    their CF scores, the cosine of their user tokens and a sentence that reads the number."""
    preset = _small_presets(real_state)
    genres = real_state.dataset.items["genres"]
    assert all("Sci-Fi" in genres[i] for i in preset["a_liked"] + preset["b_disliked"])
    assert all("Children's" in genres[i] for i in preset["b_liked"] + preset["a_disliked"])
    history = set(preset["a_liked"] + preset["a_disliked"] + preset["b_liked"] + preset["b_disliked"])
    assert not history & set(preset["candidates"])
    comp = profiles.compare_profiles(real_state, preset["a_liked"], preset["a_disliked"], preset["b_liked"],
                                      preset["b_disliked"], preset["candidates"])
    assert comp.a.items == comp.b.items == preset["candidates"]
    assert comp.a.profile != comp.b.profile and comp.a.profile.kind == comp.b.profile.kind == "composed"
    from collm_demo.ui.values import spearman
    assert comp.rho_cf == pytest.approx(spearman([r.score_cf for r in comp.a.rows], [r.score_cf for r in comp.b.rows]))
    assert -1 <= comp.rho_cf <= 1 and -1 <= comp.tau_cf <= 1 and -1 <= comp.cos_tokens <= 1
    assert ("almost the same way" in comp.sentence) == (comp.rho_cf >= profiles.SAME_RANKING_RHO)
    assert f"ρ = {comp.rho_cf:.2f}" in comp.sentence
    table = profiles.comparison_table(comp, ("A", "B"))
    assert list(table.columns) == ["rank", "A", "B"] and len(table) == profiles.COMPARE_TOP_K
    assert comp.sentence in profiles.comparison_md(real_state, comp)
    # the CF model alone on the same films, each profile folded in as the evaluation folds in a new user
    pipe = real_state.pipeline()
    alone = [pipe.score_profile_alone(p.items, p.labels, preset["candidates"]) for p in (comp.a.profile, comp.b.profile)]
    assert comp.rho_alone == pytest.approx(spearman(*alone))
    assert comp.top_alone[0][0] == preset["candidates"][int(np.argmax(alone[0]))]
    assert f"ρ = {comp.rho_alone:.2f}" in profiles.comparison_md(real_state, comp)
    with pytest.raises(InputError, match="both liked and disliked"):
        profiles.compare_profiles(real_state, ["1"], ["1"], ["2"], [], preset["candidates"])


def test_compare_button_handler(real_state):
    """The accordion's button, through the app's own event function."""
    from collm_demo.ui import build_demo

    demo = build_demo(real_state)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    button = by_id["compare-btn"]
    (fn,) = [f for f in demo.fns.values() if (button._id, "click") in [tuple(t) for t in f.targets]]
    preset = _small_presets(real_state)
    md, table, fig = fn.fn("Sci-Fi fan", preset["a_liked"], preset["a_disliked"], "Children's fan",
                           preset["b_liked"], preset["b_disliked"], preset["candidates"], None)
    assert "ρ =" in md and "Kendall τ" in md and "cosine" in md
    assert list(table.columns) == ["rank", "Sci-Fi fan", "Children's fan"]
    assert sum(len(t.x) for t in fig.data) == len(preset["candidates"])
    import gradio as gr
    with pytest.raises(gr.Error, match="pick at least one candidate movie"):
        fn.fn("A", preset["a_liked"], [], "B", preset["b_liked"], [], [], None)


def test_ui_messages_speak_of_picking_movies(real_state, user):
    """The Recommend tab's candidate errors say what to pick, not the API's id syntax; /compare keeps its own."""
    table, _ = recommend.load_history(real_state, "user", user)
    with pytest.raises(InputError) as err:
        recommend.score(real_state, "user", user, table, [])
    assert "pick at least one candidate movie" in str(err.value) and 'e.g. "1, 50' not in str(err.value)
    with pytest.raises(InputError) as err:
        recommend.score(real_state, "user", user, table, ["50", "50"])
    assert "Star Wars" in str(err.value) and "item id" not in str(err.value)
    with pytest.raises(InputError, match='give at least one item id, e.g. "1, 50, 100"'):
        core.compare(real_state, "1", "")
    flipped = table.copy()
    flipped.loc[0, "liked"] = not bool(flipped.loc[0, "liked"])
    assert recommend.FOLD_IN in recommend.history_status(real_state, "user", user, flipped)  # fold-in explained


# ------------------------------------------------------------ issue 25: the tabs' contract

def test_profile_kind_is_an_enum_that_reads_as_before():
    """Profile.kind is a ProfileKind; a plain string is read as its kind, and a kind equals, hashes,
    prints and serialises as the old string (cache keys and JSON unchanged)."""
    import json

    from collm_demo.ui.values import ProfileKind

    old, new = Profile("user", "1", ["1"], [1]), Profile(ProfileKind.USER, "1", ("1",), (1,))
    assert old.kind is ProfileKind.USER and old == new and hash(old) == hash(new)
    assert old.kind == "user" and f"{old.kind}" == "user" and json.dumps(old.kind) == '"user"'
    with pytest.raises(ValueError):
        Profile("someone", None, ["1"], [1])


def test_guided_scenarios_use_the_selected_cf_model(real_state):
    """The Inside tab's scenarios look with the CF model of the current result, as "Look inside"
    does (they used the default one whatever was selected)."""
    from collm_demo.ui import inside as view

    other = next((b for b in real_state.hub.backends() if b != real_state.pipeline().cf_name), None)
    if other is None:
        pytest.skip("one CF model only: nothing else to select")
    result = dataclasses.replace(_synthetic_result(), cf=other)
    for name in ("warm", "cold", "composed"):
        _, (_, _, cf), _ = view.scenario(real_state, name)(result)
        assert cf == other
    assert view.scenario(real_state, "warm")(None)[1][2] is None  # nothing scored yet: the default
