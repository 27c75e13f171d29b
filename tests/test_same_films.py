"""Same films, different users (issue 26): ``Pipeline.rank_for_users``, its agreement numbers and the
tab's handlers, called without a server on the tiny LLM, data and quick checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collm_demo.config import AppConfig
from collm_demo.errors import InputError
from collm_demo.personalization import agreement, rank_order
from collm_demo.ui import core, same_films
from collm_demo.ui.state import AppState

pytestmark = pytest.mark.fp32  # the app's scores are compared for equality


@pytest.fixture(scope="module")
def state(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path_factory) -> AppState:
    """The app's state on the tiny models (float32 on the CPU), the model loaded."""
    folder = tmp_path_factory.mktemp("same_films")
    state = AppState(AppConfig(checkpoint_dir=tiny_checkpoints, llm=str(tiny_llm_dir), data=str(tiny_data_dir),
                               device="cpu", precision="fp32", layout_path=folder / "none.json",
                               results_path=folder / "none.json"))
    assert state.pipeline().has_projector  # all three stages trained: every method is scored
    return state


FILMS = "1, 2, 3, 4, 5, 6"


# ------------------------------------------------------------------ the numbers, no model

def test_agreement_of_hand_made_rankings():
    same = agreement([[0.9, 0.5, 0.1, 0.3], [0.8, 0.6, 0.2, 0.4]], k=2)
    assert same.mean_rho == pytest.approx(1.0) and same.mean_overlap == 2 and same.overlap_share == 1
    reverse = agreement([[4, 3, 2, 1], [1, 2, 3, 4]], k=2)
    assert reverse.mean_rho == pytest.approx(-1.0) and reverse.mean_overlap == 0
    three = agreement([[4, 3, 2, 1], [4, 3, 2, 1], [1, 2, 3, 4]], k=2)
    assert three.rhos == pytest.approx((1.0, -1.0, -1.0)) and three.mean_rho == pytest.approx(-1 / 3)
    assert np.isnan(agreement([[1, 1, 1], [1, 2, 3]]).mean_rho)  # a constant ranking has no ρ
    assert rank_order([0.2, 0.9, 0.2]) == [2, 1, 3]  # ties keep the given order


def test_farthest_apart_takes_one_of_each_taste():
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
    picked = same_films.farthest_apart(["a", "b", "c", "d"], vectors, 2)
    assert len(set(picked) & {"a", "b"}) == 1 and len(set(picked) & {"c", "d"}) == 1


# ------------------------------------------------------------------ the engine

def test_scores_are_the_apps_own_and_mf_is_the_cf_models(state):
    """Each column is what the Recommend tab shows for that real user, and the CF model's column is
    the CF model's own probability for that user's vector."""
    pipe, films = state.pipeline(), FILMS.replace(" ", "").split(",")
    ranking = same_films.rank_users(state, "1, 2", FILMS)
    assert [u.user for u in ranking.users] == ["1", "2"] and ranking.candidates == tuple(films)
    assert ranking.methods == ["cf", "text", "alone"] and ranking.cf_name == pipe.cf_name
    for ranked in ranking.users:
        profile = core.real_profile(state, ranked.user)
        assert ranked.history == profile.items and ranked.labels == profile.labels
        scored = core.score_both(state, profile, films)
        assert ranked.text == pytest.approx([r.score_text for r in scored.rows], abs=1e-6)
        assert ranked.cf == pytest.approx([r.score_cf for r in scored.rows], abs=1e-6)
        vec, _ = core.user_vector(state, profile)  # what the CF model alone scores with
        own = pipe.cf.score_vectors(vec.view(1, -1).expand(len(films), -1), pipe.cf.item_vectors(films))
        assert ranked.alone == pytest.approx(own.tolist(), abs=1e-6)
        assert ranked.ranks("alone") == [sorted(own.tolist(), reverse=True).index(s) + 1 for s in own.tolist()]


def test_a_composed_history_is_scored_by_the_cf_model_alone_as_a_new_user(state):
    """``score_profile_alone``: the history folded in at the CF model's own strength (as the
    evaluation folds in a user it was not trained on), then the CF model's own probability."""
    pipe, films = state.pipeline(), FILMS.replace(" ", "").split(",")
    history, labels = ["4", "5", "6"], [1, 0, 1]
    vec = pipe.cf.fold_in_user(history, labels)
    own = pipe.cf.score_vectors(vec.view(1, -1).expand(len(films), -1), pipe.cf.item_vectors(films))
    assert pipe.score_profile_alone(history, labels, films) == pytest.approx(own.tolist(), abs=1e-6)


def test_identical_users_rank_alike(state):
    ranking = state.pipeline().rank_for_users(["3", "3"], FILMS.split(", "))
    assert ranking.users[0] == ranking.users[1]
    for method in ranking.methods:
        agreed = ranking.agreement[method]
        assert agreed.mean_rho == pytest.approx(1.0) and agreed.mean_overlap == agreed.k == 5


def test_the_engine_refuses_what_it_cannot_rank(state):
    pipe = state.pipeline()
    with pytest.raises(InputError, match="unknown user 999"):
        pipe.rank_for_users(["1", "999"], ["1", "2", "3"])
    with pytest.raises(InputError, match="unknown candidate item"):
        pipe.rank_for_users(["1", "2"], ["1", "2", "999"])


# ------------------------------------------------------------------ the tab

def test_view_on_the_default_set(state):
    summary, table, users, films = same_films.view(state, "", "")
    default_users = same_films.default_users(state, state.pipeline().cf_name)
    default_films = same_films.default_films(state)
    assert users == ", ".join(default_users) and films == ", ".join(default_films)
    assert len(set(default_users)) == same_films.DEFAULT_USERS and len(set(default_films)) == len(default_films) > 3
    assert all(state.catalog.item_warm(i) for i in default_films)
    assert len(table) == len(default_films)  # one row per film, one column per method and user
    assert list(table.columns[:2]) == ["film", "genres"] and len(table.columns) == 2 + 3 * len(default_users)
    assert all(" · " in cell for cell in table.iloc[:, 2])  # "rank · score"
    assert "mean Spearman ρ" in summary and "MF alone" in summary
    assert same_films.view(state, users, films)[1].equals(table)  # the boxes' text reads back the same set


def test_reading_follows_the_numbers(state):
    ranking = same_films.rank_users(state, "1, 2, 3", FILMS)
    text = same_films.reading(state, ranking)
    for method in ranking.methods:
        assert f"mean ρ = {ranking.agreement[method].mean_rho:.2f}" in text
    assert text.startswith("With the CF tokens the 3 users' rankings are")


def test_api_answer_is_plain_json(state):
    from collm_demo.ui import same_films_api

    out = same_films_api(state, "1, 2", "1, 2, 3")
    json.dumps(out, allow_nan=False)
    assert [f["id"] for f in out["films"]] == ["1", "2", "3"] and [u["user"] for u in out["users"]] == ["1", "2"]
    assert set(out["users"][0]) >= {"cf", "text", "alone", "history", "trained_vector"}
    assert sorted(out["users"][0]["cf"]["ranks"]) == [1, 2, 3]
    assert set(out["agreement"]) == {"cf", "text", "alone"} and out["reading"]


@pytest.mark.parametrize("users, films, message", [
    ("1", "", "give 2 to 5 comma-separated user ids"),
    ("1, 2, 3, 4, 5, 6", "", "give 2 to 5 comma-separated user ids"),
    ("1, 1", "", "user 1 is listed twice"),
    ("1, abc", "", "'abc' is not a numeric user id"),
    ("1, 999", "", "unknown user_id 999"),
    ("1, 2", "1, 2", "films: give 3 to 20 item ids"),
    ("1, 2", "1, 2, 999", "films: unknown item id"),
    ("1, 2", "1, x", "films: 'x' is not a numeric item id"),
])
def test_bad_input_is_said_plainly(state, users, films, message):
    import gradio as gr

    from collm_demo.ui import same_films_api

    with pytest.raises(InputError, match=message):
        same_films.view(state, users, films)
    with pytest.raises(gr.Error) as shown:  # what the page and the API show: a toast, not a traceback
        same_films_api(state, users, films)
    assert message in shown.value.message


def test_after_a_scoring_an_empty_user_box_gets_the_default_set(state):
    from collm_demo.ui.page import Page

    tab = same_films.SameFilmsTab(users=None, films=None, run=None, summary=None, table=None)
    fill = tab.after_scoring(Page(state, result=None, tabs=None, header=None)).fn
    assert fill("", None) == ", ".join(same_films.default_users(state, state.pipeline().cf_name))
    assert fill("2, 3", None) == "2, 3"  # what the user typed stays


def test_the_page_has_the_tab_and_its_endpoint(state):
    from collm_demo.ui import TABS, build_demo

    assert "samefilms" in [spec.id for spec in TABS]
    demo = build_demo(state)
    public = sorted(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public")
    assert public == ["compare", "inside", "same_films"]


def test_without_checkpoints_only_the_text_ranking_is_shown(tiny_llm_dir, tiny_data_dir, tmp_path):
    """No CF model, no projector: the text-only rankings alone, and a default set all the same."""
    state = AppState(AppConfig(checkpoint_dir=tmp_path, llm=str(tiny_llm_dir), data=str(tiny_data_dir), device="cpu",
                               precision="fp32", layout_path=tmp_path / "none.json", results_path=tmp_path / "none.json"))
    ranking = same_films.rank_users(state, "", FILMS)
    assert ranking.methods == ["text"] and ranking.cf_name is None and len(ranking.users) == same_films.DEFAULT_USERS
    summary, table, _, _ = same_films.view(state, "1, 2", FILMS)
    assert len(table.columns) == 2 + 2 and "text-only rankings are" in summary
