"""The app's handlers, called directly (no server), on the real embedded LLM and ML-100K.

Kept fast: a handful of candidates per call; scoring results are cached by the app, so
repeated calls are free.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from collm_demo.config import MAX_CANDIDATES, AppConfig
from collm_demo.errors import InputError
from collm_demo.ui import core, embedding, explain, recommend, warm_cold
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


def test_scores_match_the_plain_forward(real_state, scored):
    """Shared-prefix scores (the table) agree with one full forward per prompt (How it works)."""
    profile = scored.profile
    row = scored.rows[0]
    text = core.answer_logits(real_state, profile, row.item, False)
    cf = core.answer_logits(real_state, profile, row.item, True)
    assert text.score == pytest.approx(row.score_text, abs=2e-3)
    assert cf.score == pytest.approx(row.score_cf, abs=2e-3)


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
        assert f"strength {pipe.cf.foldin_l2:g}" in walk["step1_md"]
        assert f"uses {pipe.token_foldin_l2():g}" in walk["step1_md"]


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
    item = warm_cold.default_sim_item(real_state, scored)
    sim = warm_cold.simulate(real_state, scored, item, seed=0)
    rows = sim["rows"]
    assert [r["k"] for r in rows[:3]] == [0, 1, 3]
    assert len({round(r["text"], 6) for r in rows}) == 1  # the text-only score cannot move
    # k = 0 is the no-information item vector
    zero = real_state.pipeline().cf.default_item
    assert rows[0]["norm"] == pytest.approx(float(zero.norm()), abs=1e-5)
    assert all(r["xy"] is not None for r in rows)
    table = warm_cold.simulation_table(sim)
    assert len(table) == len(warm_cold.K_CHOICES) + 1
    assert warm_cold.simulation_figure(sim, "3").layout.height == 360
    assert "text-only score stays" in warm_cold.simulation_text(sim, "3")


def test_explain_walkthrough(real_state, scored):
    item = scored.rows[0].item
    data = explain.explain(real_state, scored, item)
    assert set(explain.OUTPUT_KEYS) <= set(data)
    assert list(data["step1_table"]["vector"])[0].startswith("user")
    assert data["step1_table"]["dims"].iloc[0] == real_state.pipeline().cf.dim
    assert "position" in data["step3_md"] and 'class="tok tok-user"' in data["step3_html"]
    table = data["step4_table"]
    assert len(table) == 2
    assert table["score = sigmoid(Yes − No)"].iloc[1] == pytest.approx(scored.rows[0].score_cf, abs=2e-3)
    assert "rank" in data["step5_md"]


def test_build_demo_has_only_the_designed_endpoints_public(real_state):
    from collm_demo.ui import build_demo

    demo = build_demo(real_state)
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")
    assert public == ["compare", "inside"]


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
        warm_cold.simulate(state, result, "1")
    data = explain.explain(state, result, "1")
    assert len(data["step4_table"]) == 1
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
