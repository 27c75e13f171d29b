"""Recommend tab: a history (real or composed), candidates, and both scores side by side.

Handlers are plain functions of plain values (tests call them without a server); only
``build`` creates widgets (a :class:`RecommendTab`, one small dataclass per section of the page)
and the tab's ``wire`` attaches events. The tab's last section, two composed profiles side by
side, has its logic in ``profiles``.

A Score click: ``score_btn.click`` → ``on_score`` → :func:`score` (reads the inputs with
``parsing`` into a :class:`Profile` and candidate ids) → ``core.score_both`` → the pipeline's
``score_profile`` (both modes, one call) → a :class:`ScoredResult` in the page's ``gr.State`` →
``render`` draws this tab → ``Page.refresh_after`` brings the header and the other tabs up to date.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..config import MAX_CANDIDATES
from ..errors import InputError
from . import core, profiles
from .page import Page, Tab, gr_error
from .parsing import echo, parse_cf, parse_history, parse_item_ids, trim_history
from .state import AppState
from .values import (
    ProfileKind,
    ScoredResult,
    candidate_auc,
    focus_choices,
    ranks,
)
from .views import COLD_COLOUR, WARM_COLOUR, empty_figure, shorten

if TYPE_CHECKING:
    import gradio as gr

SORT_CHOICES = ["score with CF tokens", "score without CF tokens", "difference (with − without)"]
RESULT_COLUMNS = ["rank", "movie", "item (train)", "without CF", "with CF", "Δ", "rank w/o CF", "rank w/ CF",
                  "truth"]
COL_TEXT, COL_CF, COL_DELTA = "without CF", "with CF", "Δ"
LIKED_BG, DISLIKED_BG = "#d3f9d8", "#ffe3e3"  # truth cells: liked green, disliked red (pale: text stays legible)
LIKED_LINE, DISLIKED_LINE, UNKNOWN_LINE = "#2b8a3e", "#c92a2a", "#adb5bd"
TRUTH_LINE = {1: LIKED_LINE, 0: DISLIKED_LINE}
TRUTH_WORD = {1: "✓ liked", 0: "✗ disliked"}
# "fold-in" in one phrase, wherever the tab uses the word
FOLD_IN = "fold-in: a user vector fitted to the liked/disliked marks, the movie vectors held fixed"
DEFAULT_SET_SIZE = 20  # the page's first candidates and the one-click sets: enough for a within-user AUC


# ------------------------------------------------------------------------ history

def user_summary(state: AppState, user: str | None) -> str:
    if not user or user not in state.catalog.users:
        return "Pick a user."
    info = state.catalog.users[user]
    pipe = state.pipeline()
    in_cf = pipe.cf is not None and pipe.cf.has_user(user)
    status = ("**warm**" if info.warm else "**cold**") + f" (warm = at least {state.catalog.warm_min} training interactions)"
    if pipe.cf is None:
        vec = "no CF model is loaded, so there are no CF vectors"
    else:
        vec = ("has a trained CF vector" if in_cf else
               "has no trained CF vector: CoLLM folds one in from the history below (" + FOLD_IN + ")")
    test = (f"{info.n_test} movies rated in the test period ({info.n_test_pos} liked): use them as candidates "
            "and the true answers are known." if info.n_test else
            "No ratings in the test period, so no true answers for candidates.")
    return (f"User **{user}**: {info.n_train} training interactions, {status}; {vec}. {test} "
            f"The history shows their last {len(state.catalog.real_history(user))} ratings before the test period "
            f"(liked = rating ≥ {state.dataset.protocol.positive_rating:g}).")


def demo_users_note(state: AppState) -> str:
    """One line naming the curated demo users (catalog.DEMO_USERS) and their test items' answers."""
    demo = state.catalog.demo_users()
    if not demo:
        return ""
    return ("**Good demo users** (warm; their test items have both answers, and the CF tokens visibly "
            "reorder them): " + "; ".join(f"user {u.user} ({u.n_test_pos} liked / {u.n_test - u.n_test_pos} "
                                           "disliked test items)" for u in demo) + ".")


def composed_example(state: AppState) -> list[tuple[str, int, str]]:
    """A small starting history: popular Sci-Fi liked, a popular Romance disliked."""
    items = state.dataset.items
    pop = sorted(state.catalog.item_train.items(), key=lambda kv: -kv[1])
    scifi = [i for i, _ in pop if "Sci-Fi" in str(items.at[i, "genres"])][:3]
    romance = [i for i, _ in pop if "Romance" in str(items.at[i, "genres"]) and i not in scifi][:1]
    return [(i, 1, "") for i in scifi] + [(i, 0, "") for i in romance]


def load_history(state: AppState, source: str, user: str | None) -> tuple[pd.DataFrame, str]:
    """History table + explanation for the chosen source."""
    if source == "composed":
        table = core.history_frame(state, composed_example(state))
        note = ("**Composed user.** Edit the list freely: add movies below, tick or untick *liked*. "
                "This user is not in the training data, so their CF vector is *folded in* from this list "
                "(a small logistic regression against the frozen item vectors). At most "
                f"{state.dataset.protocol.history_len} movies, as in the paper's prompt.")
        return table, note
    if not user:
        return core.history_frame(state, []), "Pick a user."
    return core.history_frame(state, core.real_profile(state, user)), user_summary(state, user)


def add_to_history(state: AppState, table, items: list[str] | None, liked: str, warn=None) -> pd.DataFrame:
    """Append movies (newest last). Past the prompt's limit the oldest are dropped, and
    ``warn`` (gr.Warning in the app) says which."""
    rows = parse_history(table)
    have = {i for i, _, _ in rows}
    for item in items or []:
        item = str(item)
        if item not in state.catalog.item_title:
            raise InputError(f"Unknown movie id {echo(item)}")
        if item in have:
            rows = [(i, int(liked == "liked") if i == item else y, d) for i, y, d in rows]
            continue
        rows.append((item, int(liked == "liked"), ""))
        have.add(item)
    rows, note = trim_history(state, rows)
    if note and warn is not None:
        warn(note)
    return core.history_frame(state, rows)


def remove_from_history(state: AppState, table, items: list[str] | None) -> pd.DataFrame:
    drop = {str(i) for i in (items or [])}
    return core.history_frame(state, [r for r in parse_history(table) if r[0] not in drop])


def history_choices(state: AppState, table) -> list[tuple[str, str]]:
    return [(state.catalog.item_label(i), i) for i, _, _ in parse_history(table)]


def history_status(state: AppState, source: str, user: str | None, table) -> str:
    """One line under the table saying how the history will be used."""
    try:
        profile = core.profile_from_inputs(state, source, user, table)
    except InputError as err:
        return f"⚠️ {err}"
    liked = sum(profile.labels)
    _, trimmed = trim_history(state, parse_history(table))
    base = (trimmed + " " if trimmed else "") + f"{len(profile.items)} movies ({liked} liked, {len(profile.items) - liked} disliked)."
    if profile.kind is ProfileKind.EDITED:
        return (base + f" **Edited** — differs from user {user}'s real history, so their CF vector will be "
                "folded in from this table (" + FOLD_IN + ") instead of the trained one, and true "
                "answers are hidden.")
    if profile.kind is ProfileKind.USER:
        return base + " Unedited real history."
    return base + " Composed history."


# --------------------------------------------------------------------- candidates

def test_seed(user: str, n: int) -> int:
    """A seed fixed by (user, size): a rehearsed demo draws the same test items every time
    (crc32, not hash(), which Python salts per process)."""
    return zlib.crc32(f"{user}|{n}".encode())


def balanced_test_items(test: pd.DataFrame, n: int, seed: int) -> list[str]:
    """At most ``n`` of a user's test items, half liked and half disliked where the user has both
    (the smaller side is taken whole and the other fills the rest), so an AUC always exists; oldest first."""
    test = test.drop_duplicates("item")
    if len(test) <= n:
        return [str(i) for i in test.sort_values("timestamp", kind="stable")["item"]]
    liked, disliked = test[test["label"] == 1], test[test["label"] == 0]
    n_liked = min(len(liked), max(n - len(disliked), n // 2))
    n_disliked = min(len(disliked), n - n_liked)
    picked = pd.concat([liked.sample(n=n_liked, random_state=seed),
                        disliked.sample(n=n_disliked, random_state=(seed + 1) % 2 ** 32)])
    return [str(i) for i in picked.sort_values("timestamp", kind="stable")["item"]]


def candidate_set(state: AppState, kind: str, n: int, source: str, user: str | None, table,
                  seed: int | None = None) -> list[str]:
    """One-click candidate sets: 'test', 'popular', 'cold' or 'random'.

    'test' is the same for the same (user, n) unless ``seed`` is given; 'random' and 'cold'
    draw anew on each click (their point is variety)."""
    n = int(max(1, min(MAX_CANDIDATES, n or 10)))
    in_history = {i for i, _, _ in parse_history(table)}
    if kind == "test":
        if source == "composed" or not user:
            raise InputError("A composed user has no test-period ratings; pick a real user for this set.")
        test = state.catalog.test_items(user)
        if test.empty:
            raise InputError(f"User {user} rated nothing in the test period; try another set.")
        return balanced_test_items(test, n, test_seed(user, n) if seed is None else int(seed))
    rng = np.random.default_rng(seed if seed is not None else time.time_ns() % (2 ** 32))
    pool = [i for i in state.catalog.item_ids if i not in in_history]
    if kind == "popular":
        pool = sorted(pool, key=lambda i: -state.catalog.item_train.get(i, 0))
        return [i for i in pool if state.catalog.item_warm(i)][:n]
    if kind == "cold":
        pool = [i for i in pool if not state.catalog.item_warm(i)]
    if not pool:
        raise InputError("No items left for this set.")
    return [str(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)]


def user_candidates(state: AppState, user: str | None, n: int) -> list[str]:
    """The candidates a newly picked user starts with: their (deterministic, balanced) test
    items, or none when they rated nothing in the test period."""
    if not user or user not in state.catalog.users or not state.catalog.users[user].n_test:
        return []
    return candidate_set(state, "test", n, "user", user, None)


def change_user(state: AppState, source: str, user: str | None, n: int) -> tuple[pd.DataFrame, str, list[str], None]:
    """A new user: their history, its note, their test items as candidates, and no result, so
    the previous user's table and chart are not left on screen under the new name."""
    table, note = load_history(state, source, user)
    return table, note, user_candidates(state, user, n), None


# ------------------------------------------------------------------------ scoring

def score(state: AppState, source: str, user: str | None, table, candidates: list[str] | None,
          progress=None, cf: str | None = None) -> ScoredResult:
    """Score the candidates for the described profile in both modes (cached); the CF tokens come
    from backend ``cf`` (None = the app's default)."""
    profile = core.profile_from_inputs(state, source, user, table)
    items = parse_item_ids(state, list(candidates or []), "candidates", ui="candidate movie")
    return core.score_both(state, profile, items, progress=progress, cf=parse_cf(state, cf))


def sort_key_for(inject: bool) -> str:
    return SORT_CHOICES[0] if inject else SORT_CHOICES[1]


def results_table(result: ScoredResult | None, sort_by: str = SORT_CHOICES[0], inject: bool = True) -> pd.DataFrame:
    if not result:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    rows = result.rows
    r_text = ranks([r.score_text for r in rows])
    r_cf = ranks([r.score_cf for r in rows])
    out = []
    for n, r in enumerate(rows):
        label = {1: "liked", 0: "disliked"}.get(r.label, "—")
        status = f"{'warm' if r.warm else 'cold'} · {r.n_train}"
        movie = (r.title + (f" ({r.year})" if r.year else "") + f" · #{r.item}"
                 + (" · in history" if r.in_history else ""))
        out.append([0, movie, status, round(r.score_text, 4),
                    None if r.score_cf is None else round(r.score_cf, 4),
                    None if r.delta is None else round(r.delta, 4),
                    r_text[n], r_cf[n], label])
    frame = pd.DataFrame(out, columns=RESULT_COLUMNS)
    column = {SORT_CHOICES[0]: COL_CF, SORT_CHOICES[1]: COL_TEXT, SORT_CHOICES[2]: COL_DELTA}.get(sort_by, COL_CF)
    if frame[column].isna().all():
        column = COL_TEXT
    frame = frame.sort_values(column, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    # "rank" is the position in the order shown, so the first column reads 1, 2, 3 under every
    # sort (by Δ too); the two modes' own ranks stay in their columns.
    frame["rank"] = range(1, len(frame) + 1)
    return frame


def styled_table(frame: pd.DataFrame):
    """The results table with the truth visible: the movie and truth cells of liked candidates
    green, of disliked ones red (a pandas Styler, which gr.Dataframe draws when not interactive)."""
    colour = {"liked": f"background-color: {LIKED_BG}", "disliked": f"background-color: {DISLIKED_BG}"}

    def row_style(row: pd.Series) -> list[str]:
        css = colour.get(row["truth"], "")
        return [css if c in ("movie", "truth") else "" for c in row.index]

    return frame.style.apply(row_style, axis=1).format(precision=4, subset=[COL_TEXT, COL_CF, COL_DELTA])


def rank_figure(result: ScoredResult | None) -> go.Figure:
    """'Rank without → rank with' CF tokens, one line per candidate coloured by its true answer:
    whether the liked films rise is seen at a glance."""
    if not result or not result.has_cf:
        msg = "Score some candidates first." if not result else "No projector loaded: no CF ranking to compare."
        return empty_figure(msg, height=260)
    rows = result.rows
    r_text = ranks([r.score_text for r in rows])
    r_cf = ranks([r.score_cf for r in rows])
    fig = go.Figure()
    seen = set()
    for n, r in sorted(enumerate(rows), key=lambda nr: {1: 2, 0: 1}.get(nr[1].label, 0)):  # liked drawn on top
        name, colour = {1: ("liked", LIKED_LINE), 0: ("disliked", DISLIKED_LINE)}.get(
            r.label, ("answer unknown", UNKNOWN_LINE))
        fig.add_trace(go.Scatter(
            x=["without CF tokens", "with CF tokens"], y=[r_text[n], r_cf[n]], mode="lines+markers",
            line=dict(color=colour, width=3 if r.label == 1 else 2), marker=dict(size=9),
            name=name, legendgroup=name, showlegend=name not in seen,
            hovertemplate=f"{shorten(r.title)} · #{r.item}<br>rank %{{y}}<extra>{name}</extra>"))
        seen.add(name)
    fig.update_layout(
        height=max(300, 18 * len(rows) + 140), template="plotly_white",
        title=dict(text="1 = top · green = liked · red = disliked", font_size=14),  # the plot label names it
        yaxis=dict(range=[len(rows) + 0.5, 0.5], title="rank", dtick=1 if len(rows) <= 20 else 5),
        xaxis=dict(title=""), legend=dict(orientation="h", y=-0.15, x=0), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def summary(state: AppState, result: ScoredResult | None, inject: bool = True) -> str:
    if not result:
        return "Press **Score candidates** to run the model."
    profile = result.profile
    rows = result.rows
    has_cf = result.has_cf
    use_cf = result.ranks_by_cf(inject)
    top = sorted(rows, key=lambda r: -r.score(use_cf))[:3]
    who = profile.describe()
    if profile.kind is ProfileKind.USER:
        who += f" ({'warm' if result.user_warm else 'cold'}, {result.user_n_train} training interactions)"
    lines = [f"**{who}** · {len(rows)} candidates scored in {result.seconds} s "
             f"(both modes; repeated requests come from a cache)."]
    if has_cf:
        lines.append(f"CF model: **{result.cf_label}**. CF user vector: {result.vector_source}.")
    mode = result.cf_mode if use_cf else result.text_mode
    lines.append(f"**Top picks — {mode}:** " + "; ".join(f"{n}. {r.title}" for n, r in enumerate(top, 1)))
    if inject and not has_cf:
        lines.append("⚠️ No projector is loaded, so CF tokens cannot be injected: ranking by the text-only score.")
    auc_t, auc_c = candidate_auc(rows, False), candidate_auc(rows, True)
    known = sum(r.label is not None for r in rows)
    if auc_t is not None:
        cf_part = f", with CF **{auc_c:.2f}**" if auc_c is not None else ""
        lines.append(f"On the {known} candidates whose true answer is known, AUC without CF **{auc_t:.2f}**"
                     f"{cf_part} (one user, few items: a noisy number; the Warm vs cold tab has the full test set).")
    if has_cf:
        deltas = [r.delta for r in rows]
        warm = [r.delta for r in rows if r.warm]
        cold = [r.delta for r in rows if not r.warm]
        parts = [f"mean Δ {np.mean(deltas):+.3f}"]
        if warm:
            parts.append(f"warm items {np.mean(warm):+.3f}")
        if cold:
            parts.append(f"cold items {np.mean(cold):+.3f}")
        lines.append("Effect of the CF tokens: " + ", ".join(parts) + ".")
        lines.append("*Only the ranking matters:* most Δ can be negative because the tokens shift the level "
                     "of P(Yes) for every movie; what counts is whether the liked films move above the "
                     "disliked ones (the AUC, and the rank chart).")
    return "\n\n".join(lines)


def bar_label(row) -> str:
    """A bar's name with its true answer in front ('✓ liked', '✗ disliked'), where known."""
    mark = TRUTH_WORD.get(row.label)
    return (mark + " · " if mark else "") + shorten(row.title) + f" · #{row.item}"


def delta_figure(result: ScoredResult | None, inject: bool = True) -> go.Figure:
    if not result or not result.has_cf:
        msg = "Score some candidates first." if not result else "No projector loaded: no CF scores to compare."
        return empty_figure(msg, height=260)
    fig = go.Figure()
    rows = sorted(result.rows, key=lambda r: r.delta)
    for warm, color, name in ((True, WARM_COLOUR, f"warm item (≥{result.warm_min} training interactions)"),
                              (False, COLD_COLOUR, f"cold item (<{result.warm_min} training interactions)")):
        part = [r for r in rows if r.warm == warm]
        if not part:
            continue
        fig.add_trace(go.Bar(
            x=[r.delta for r in part], y=[bar_label(r) for r in part],
            orientation="h", marker_color=color, name=name,
            # the true answer on each bar: a green / red outline and its word
            marker_line=dict(color=[TRUTH_LINE.get(r.label, "rgba(0,0,0,0)") for r in part], width=3),
            customdata=[[r.score_text, r.score_cf, r.n_train] for r in part], showlegend=True,
            hovertemplate="%{y}<br>without CF %{customdata[0]:.3f} → with CF %{customdata[1]:.3f}"
                          "<br>Δ %{x:+.3f}<br>training interactions: %{customdata[2]}<extra></extra>"))
    fig.update_layout(
        height=max(280, 26 * len(rows) + 130), barmode="relative",
        title=dict(text="What the CF tokens change: score with CF − score without CF (outline: true answer)",
                   font_size=14),
        xaxis_title="Δ score (positive = CF tokens make “Yes” more likely)",
        yaxis=dict(categoryorder="array", categoryarray=[bar_label(r) for r in rows],
                   automargin=True),
        legend=dict(orientation="h", y=-0.25, x=0), margin=dict(l=10, r=10, t=50, b=10),
        template="plotly_white")
    fig.add_vline(x=0, line_color="#555", line_width=1)
    return fig


def prompts_html(state: AppState, result: ScoredResult | None, item: str | None, inject: bool = True
                 ) -> tuple[str, str]:
    """The two prompts for one candidate, slots highlighted; the one used for ranking marked."""
    if not result or not item:
        return "<p class='muted'>Score candidates to see the prompts.</p>", ""
    profile = result.profile
    has_cf = result.has_cf
    used = "<span class='badge'>used for the ranking</span>"
    text = (f"<h4>Without CF tokens — {result.text_mode} {used if not result.ranks_by_cf(inject) else ''}</h4>"
            + core.prompt_html(state, profile, item, False))
    if has_cf:
        cf = (f"<h4>With CF tokens — CoLLM {used if inject else ''}</h4>"
              + core.prompt_html(state, profile, item, True)
              + "<p class='muted'>The two highlighted placeholders are single token positions. Before the LLM "
                "runs, their input embeddings are overwritten by the projector's output for this user's and "
                "this movie's CF vectors; no words are ever written there.</p>")
    else:
        cf = "<p class='muted'>No projector loaded: there is no CF prompt.</p>"
    return text, cf


# ------------------------------------------------------------------------- rendering

def render(state: AppState, result: ScoredResult | None, sort_by: str, inject: bool) -> tuple:
    """Everything the Results section shows for ``result`` (in ``ResultViews.outputs`` order)."""
    import gradio as gr

    choices, value = focus_choices(result, inject)
    text, cf = prompts_html(state, result, value, inject)
    return (summary(state, result, inject), styled_table(results_table(result, sort_by, inject)),
            delta_figure(result, inject), gr.update(choices=choices, value=value), text, cf,
            rank_figure(result))


def first_example(state: AppState) -> tuple:
    """The page's first example, once the model has loaded (``RecommendTab.first_example_outputs``):
    the first demo user, their history, their test items as candidates, and the CF selector."""
    import gradio as gr

    user = state.catalog.default_user()
    table, note = load_history(state, "user", user)
    cands = user_candidates(state, user, DEFAULT_SET_SIZE)  # = the button's set
    # The CF selector again, now that the model has loaded: a refusal that only the loaded
    # LLM can reveal (its hidden size, see hub.py) must not leave its backends offered.
    choices = state.hub.backend_choices()
    return (user, table, note, gr.update(choices=history_choices(state, table), value=[]), cands,
            gr.update(choices=choices, value=choices[0][1], interactive=len(choices) > 1))


# ------------------------------------------------------------------------- widgets

@dataclass(frozen=True)
class HistoryInputs:
    """Section 1, whose history: a real user or a composed one, in an editable table."""

    source: gr.Radio  # "user" (a real MovieLens user) or "composed"
    user: gr.Dropdown
    user_md: gr.Markdown  # who the user is, or how a composed history is used
    history: gr.Dataframe
    history_md: gr.Markdown  # how the table will be used (unedited, edited, trimmed)
    edit_box: gr.Accordion
    add_items: gr.Dropdown
    add_liked: gr.Radio
    add_btn: gr.Button
    remove_items: gr.Dropdown
    remove_btn: gr.Button
    reset_btn: gr.Button


@dataclass(frozen=True)
class CandidateInputs:
    """Section 2, which candidates: picked one by one or as a one-click set."""

    candidates: gr.Dropdown
    n_set: gr.Slider  # the size of a one-click set
    set_test: gr.Button
    set_popular: gr.Button
    set_cold: gr.Button
    set_random: gr.Button

    @property
    def set_buttons(self) -> dict[str, gr.Button]:
        """Each one-click set's button by its ``candidate_set`` kind."""
        return {"test": self.set_test, "popular": self.set_popular, "cold": self.set_cold,
                "random": self.set_random}


@dataclass(frozen=True)
class ScoreControls:
    """Section 3: which score ranks, which CF model makes the tokens, and the Score button."""

    inject: gr.Checkbox
    cf_model: gr.Dropdown
    score_btn: gr.Button


@dataclass(frozen=True)
class ResultViews:
    """The Results section and the exact prompts: what ``render`` fills."""

    summary: gr.Markdown
    rank_chart: gr.Plot
    sort_by: gr.Radio
    table: gr.Dataframe
    chart: gr.Plot
    focus: gr.Dropdown  # the candidate whose prompts are shown
    prompt_text: gr.HTML
    prompt_cf: gr.HTML

    @property
    def outputs(self) -> list:
        """The components ``render`` fills, in its order."""
        return [self.summary, self.table, self.chart, self.focus, self.prompt_text, self.prompt_cf,
                self.rank_chart]


@dataclass(frozen=True)
class ProfileInputs:
    """One side of the comparison: a named composed profile."""

    name: gr.Textbox
    liked: gr.Dropdown
    disliked: gr.Dropdown


@dataclass(frozen=True)
class ComparisonPanel:
    """The fold comparing two composed profiles on the same candidates (logic in ``profiles``)."""

    a: ProfileInputs
    b: ProfileInputs
    candidates: gr.Dropdown
    button: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe
    chart: gr.Plot


def build(state: AppState) -> RecommendTab:
    """Create the tab's widgets (inside an open gr.Tab)."""
    import gradio as gr

    gr.Markdown("Pick **whose history** the LLM reads, pick **candidate movies**, and score them twice: "
                "once from the text alone and once with the two **CF tokens** injected. "
                "Scores are P(“Yes”) when the LLM is asked whether the user would enjoy the movie.",
                elem_classes=["lead"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=480):  # side by side at 1280 px, stacked at 125 % zoom
            history = _build_history(state)
        with gr.Column(scale=5, min_width=480):  # side by side at 1280 px, stacked at 125 % zoom
            candidates = _build_candidates(state)
            controls = _build_score_controls(state)
    return RecommendTab(history=history, candidates=candidates, controls=controls, results=_build_results(),
                        comparison=_build_comparison(state))


def _build_history(state: AppState) -> HistoryInputs:
    import gradio as gr

    gr.Markdown("### 1 · Whose history?")
    source = gr.Radio([("A real MovieLens user", "user"), ("Compose your own", "composed")],
                      value="user", label="History from", elem_id="source")
    user = gr.Dropdown(state.catalog.user_choices(), value=None, label="User (type to search, e.g. “warm” or an id)",
                       filterable=True, elem_id="user-dropdown")
    gr.Markdown(demo_users_note(state), elem_classes=["note"], elem_id="demo-users")
    user_md = gr.Markdown(elem_classes=["note"])
    history = gr.Dataframe(
        value=core.history_frame(state, []), headers=core.HISTORY_COLUMNS,
        datatype=["str", "str", "str", "str", "bool", "str"], interactive=True,
        static_columns=[0, 1, 2, 3, 5],
        label="History in the prompt (oldest first) — tick/untick “liked” to edit",
        column_widths=["9%", "25%", "12%", "21%", "16%", "17%"], max_height=1000, wrap=True,
        elem_id="history-table")
    history_md = gr.Markdown(elem_classes=["note"])
    with gr.Accordion("Add or remove movies", open=False, elem_id="history-edit") as edit_box:
        add_items = gr.Dropdown(state.catalog.item_choices(), multiselect=True, label="Add movies", filterable=True)
        with gr.Row():
            add_liked = gr.Radio(["liked", "disliked"], value="liked", label="as", min_width=160)
            add_btn = gr.Button("Add to history", size="sm", min_width=120)
        remove_items = gr.Dropdown([], multiselect=True, label="Remove movies", filterable=True)
        with gr.Row():
            remove_btn = gr.Button("Remove", size="sm", min_width=100)
            reset_btn = gr.Button("Reset to the real history / example", size="sm", min_width=160)
    return HistoryInputs(source=source, user=user, user_md=user_md, history=history, history_md=history_md,
                         edit_box=edit_box, add_items=add_items, add_liked=add_liked, add_btn=add_btn,
                         remove_items=remove_items, remove_btn=remove_btn, reset_btn=reset_btn)


def _build_candidates(state: AppState) -> CandidateInputs:
    import gradio as gr

    gr.Markdown("### 2 · Which candidates?")
    candidates = gr.Dropdown(state.catalog.item_choices(), multiselect=True, max_choices=MAX_CANDIDATES,
                             label=f"Candidate movies (type to search; up to {MAX_CANDIDATES})",
                             filterable=True, elem_id="candidates")
    n_set = gr.Slider(3, MAX_CANDIDATES, value=DEFAULT_SET_SIZE, step=1, label="Size of a one-click set")
    with gr.Row():
        set_test = gr.Button("This user's test items", size="sm", min_width=140, elem_id="set-test")
        set_popular = gr.Button("Popular warm items", size="sm", min_width=140, elem_id="set-popular")
    with gr.Row():
        set_cold = gr.Button("Cold items", size="sm", min_width=140, elem_id="set-cold")
        set_random = gr.Button("Random", size="sm", min_width=140, elem_id="set-random")
    gr.Markdown("*Test items* are movies this user rated in the test period, after everything the "
                "models were trained on, so their true answers are shown. *Cold* items have fewer "
                f"than {state.catalog.warm_min} training interactions.", elem_classes=["note"])
    return CandidateInputs(candidates=candidates, n_set=n_set, set_test=set_test, set_popular=set_popular,
                           set_cold=set_cold, set_random=set_random)


def _build_score_controls(state: AppState) -> ScoreControls:
    import gradio as gr

    gr.Markdown("### 3 · Score")
    inject = gr.Checkbox(True, label="Inject CF tokens (CoLLM)", elem_id="inject",
                         info="Both scores are always computed so you can compare them; this switch chooses "
                              "which one ranks the recommendations (and which prompt is the one 'sent').")
    choices = state.hub.backend_choices()
    cf_model = gr.Dropdown(
        choices, value=choices[0][1], label="CF model that makes the tokens",
        info="Same frozen LLM and LoRA; each CF model has its own small projector. Changing it "
             "re-scores, and the map and the walkthrough follow.",
        interactive=len(choices) > 1, elem_id="cf-model")
    score_btn = gr.Button("Score candidates", variant="primary", elem_id="score-btn")
    return ScoreControls(inject=inject, cf_model=cf_model, score_btn=score_btn)


def _build_results() -> ResultViews:
    import gradio as gr

    # A presenter's screen: on Score the page scrolls here (SCROLL_TO_RESULTS), and the headline
    # (the reading and the rank chart) fills it; the table and the bars follow below.
    gr.Markdown("### Results", elem_id="results-heading")
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=360):
            summary_md = gr.Markdown(elem_id="summary")
        with gr.Column(scale=5, min_width=360):
            rank_chart = gr.Plot(rank_figure(None), label="Rank without → rank with CF tokens", elem_id="rank-chart")
    sort_by = gr.Radio(SORT_CHOICES, value=SORT_CHOICES[0], label="Sort the table by", elem_id="sort-by")
    # Widths in % so the nine columns fit at 1280 px and at 125 % zoom (1024 px) without a
    # sideways scroll; each is wide enough for its longest word ("disliked", "0.8831").
    table = gr.Dataframe(value=results_table(None), interactive=False, wrap=True, max_height=1400,
                         label="Both modes side by side: scores are P(Yes); Δ = with CF − without CF; "
                               "rank = place in the order shown (1 = top); item (train) = warm/cold and its "
                               "training interactions; truth = what the user actually did (test items only)",
                         column_widths=["6%", "31%", "10%", "9%", "9%", "9%", "8%", "8%", "10%"],
                         elem_id="results-table")
    chart = gr.Plot(delta_figure(None), label="Difference per candidate", elem_id="delta-chart")
    gr.Markdown("### The exact prompts")
    focus = gr.Dropdown([], label="Show the prompts for", elem_id="prompt-candidate")
    with gr.Row(equal_height=False):
        prompt_text = gr.HTML(elem_id="prompt-text", min_height=60)
        prompt_cf = gr.HTML(elem_id="prompt-cf", min_height=60)
    return ResultViews(summary=summary_md, rank_chart=rank_chart, sort_by=sort_by, table=table, chart=chart,
                       focus=focus, prompt_text=prompt_text, prompt_cf=prompt_cf)


def _build_comparison(state: AppState) -> ComparisonPanel:
    import gradio as gr

    preset = profiles.compare_presets(state)
    with gr.Accordion("Compare two composed profiles side by side", open=False, elem_id="compare-box"):
        gr.Markdown("Two made-up users, each " + FOLD_IN.replace("fold-in: ", "given a CF vector by fold-in (")
                    + "), score the **same** candidates. If the user token carried their taste, the two "
                    "rankings would differ; if they come out alike, the tokens mostly carry each movie's "
                    "general appeal. Edit either profile freely.", elem_classes=["note"])
        items = state.catalog.item_choices()
        sides = {}
        with gr.Row(equal_height=False):
            for side in ("a", "b"):
                with gr.Column(min_width=300):
                    sides[side] = ProfileInputs(
                        name=gr.Textbox(preset[f"{side}_name"], label="Profile", max_lines=1,
                                        elem_id=f"compare-{side}-name"),
                        liked=gr.Dropdown(items, value=preset[f"{side}_liked"], multiselect=True,
                                          label="Liked movies", filterable=True, elem_id=f"compare-{side}-liked"),
                        disliked=gr.Dropdown(items, value=preset[f"{side}_disliked"], multiselect=True,
                                             label="Disliked movies", filterable=True,
                                             elem_id=f"compare-{side}-disliked"))
        candidates = gr.Dropdown(items, value=preset["candidates"], multiselect=True, max_choices=MAX_CANDIDATES,
                                 filterable=True, label="Candidates scored for both (preset: the next most popular "
                                                        "films of the two genres, half each)",
                                 elem_id="compare-candidates")
        button = gr.Button("Compare the two profiles", variant="primary", elem_id="compare-btn")
        summary_md = gr.Markdown(profiles.comparison_md(state, None), elem_id="compare-summary")
        with gr.Row(equal_height=False):
            table = gr.Dataframe(profiles.comparison_table(None), interactive=False, wrap=True,
                                 label="Top picks of each (CoLLM's ranking)", elem_id="compare-table",
                                 column_widths=["10%", "45%", "45%"], max_height=600)
            chart = gr.Plot(profiles.comparison_figure(None), label="Both profiles' scores", elem_id="compare-chart")
    return ComparisonPanel(a=sides["a"], b=sides["b"], candidates=candidates, button=button, summary=summary_md,
                           table=table, chart=chart)


# ------------------------------------------------------------------------- events

# After a scoring's results are drawn: bring them into view (the Score button sits low on a
# 1280x800 screen, and the results below it). A front-end step only (no queue, no server call).
SCROLL_TO_RESULTS = ("() => { document.getElementById('results-heading')"
                     "?.scrollIntoView({behavior: 'smooth', block: 'start'}); }")


@dataclass(frozen=True)
class RecommendTab(Tab):
    """The Recommend tab: it scores, and every other tab follows its result (``Page.refresh_after``)."""

    history: HistoryInputs
    candidates: CandidateInputs
    controls: ScoreControls
    results: ResultViews
    comparison: ComparisonPanel

    @property
    def score_inputs(self) -> list:
        """What ``score`` reads: source, user, history table, candidates, CF model."""
        h = self.history
        return [h.source, h.user, h.history, self.candidates.candidates, self.controls.cf_model]

    @property
    def first_example_outputs(self) -> list:
        """What ``first_example`` fills on page load, in its order."""
        h = self.history
        return [h.user, h.history, h.user_md, h.remove_items, self.candidates.candidates, self.controls.cf_model]

    def wire(self, page: Page) -> None:
        self._wire_history(page)
        self._wire_candidate_sets(page)
        self._wire_scoring(page)
        self._wire_comparison(page)
        self._wire_results(page)

    def score_first_example(self, page: Page, loaded) -> None:
        """Once ``loaded`` has filled the inputs (``first_example``): score them, draw, refresh the page."""
        import gradio as gr

        state = page.state

        @gr_error
        def initial_score(source, user, table, candidates, cf, progress=gr.Progress()):
            return score(state, source, user, table, candidates, progress=progress, cf=cf)

        first = loaded.then(initial_score, self.score_inputs, page.result)
        page.refresh_after(first.success(self._render(page), self._render_inputs(page), self.results.outputs))

    def _render(self, page: Page):
        state = page.state

        def render_result(result, sort_by, inject):
            return render(state, result, sort_by, inject)
        return render_result

    def _render_inputs(self, page: Page) -> list:
        return [page.result, self.results.sort_by, self.controls.inject]

    def _wire_history(self, page: Page) -> None:
        import gradio as gr

        state, h, render_result = page.state, self.history, self._render(page)

        def on_source(source, user):
            table, note = load_history(state, source, user)
            return (gr.update(visible=source == "user"), table, note,
                    gr.update(choices=history_choices(state, table), value=[]),
                    gr.update(interactive=source == "user"), gr.update(open=source == "composed"))

        def on_user(source, user):
            table, note = load_history(state, source, user)
            return table, note, gr.update(choices=history_choices(state, table), value=[])

        def on_pick_user(source, user, n, sort_by, inject):
            table, note, cands, result = change_user(state, source, user, n)
            return ((table, note, gr.update(choices=history_choices(state, table), value=[]), cands, result)
                    + render_result(result, sort_by, inject))

        def on_table(source, user, table):
            return history_status(state, source, user, table), gr.update(choices=history_choices(state, table))

        @gr_error
        def on_add(table, items, liked):
            return add_to_history(state, table, items, liked, warn=gr.Warning), []

        @gr_error
        def on_remove(table, items):
            return remove_from_history(state, table, items), []

        h.source.change(on_source, [h.source, h.user],
                        [h.user, h.history, h.user_md, h.remove_items, self.candidates.set_test, h.edit_box])
        h.history.change(on_table, [h.source, h.user, h.history], [h.history_md, h.remove_items])
        h.add_btn.click(on_add, [h.history, h.add_items, h.add_liked], [h.history, h.add_items])
        h.remove_btn.click(on_remove, [h.history, h.remove_items], [h.history, h.remove_items])
        h.reset_btn.click(on_user, [h.source, h.user], [h.history, h.user_md, h.remove_items])
        h.user.input(on_pick_user, [h.source, h.user, self.candidates.n_set, self.results.sort_by,
                                    self.controls.inject],
                     [h.history, h.user_md, h.remove_items, self.candidates.candidates, page.result]
                     + self.results.outputs)

    def _wire_candidate_sets(self, page: Page) -> None:
        state, h, c = page.state, self.history, self.candidates

        def make_set(kind):
            @gr_error
            def handler(n, source, user, table):
                return candidate_set(state, kind, n, source, user, table)
            return handler

        for kind, button in c.set_buttons.items():
            button.click(make_set(kind), [c.n_set, h.source, h.user, h.history], c.candidates)

    def _wire_scoring(self, page: Page) -> None:
        """The Score button and the CF-model selector: score, draw, scroll to the results, refresh the page."""
        import gradio as gr

        state = page.state

        @gr_error
        def on_score(source, user, table, candidates, cf, progress=gr.Progress()):
            return score(state, source, user, table, candidates, progress=progress, cf=cf)

        for trigger in (self.controls.score_btn.click, self.controls.cf_model.input):
            chain = trigger(on_score, self.score_inputs, page.result)
            rendered = chain.success(self._render(page), self._render_inputs(page), self.results.outputs)
            rendered.then(None, None, None, js=SCROLL_TO_RESULTS)
            page.refresh_after(rendered)

    def _wire_comparison(self, page: Page) -> None:
        state, c = page.state, self.comparison

        @gr_error
        def on_compare(a_name, a_liked, a_disliked, b_name, b_liked, b_disliked, candidates, cf):
            names = ((a_name or "").strip()[:40] or "Profile A", (b_name or "").strip()[:40] or "Profile B")
            comp = profiles.compare_profiles(state, a_liked, a_disliked, b_liked, b_disliked, candidates, cf=cf,
                                             names=names)
            return (profiles.comparison_md(state, comp, names), profiles.comparison_table(comp, names),
                    profiles.comparison_figure(comp, names))

        c.button.click(on_compare, [c.a.name, c.a.liked, c.a.disliked, c.b.name, c.b.liked, c.b.disliked,
                                    c.candidates, self.controls.cf_model], [c.summary, c.table, c.chart])

    def _wire_results(self, page: Page) -> None:
        state, r, render_result = page.state, self.results, self._render(page)

        def on_inject(result, inject):
            sort_by = sort_key_for(inject)
            return (sort_by,) + render_result(result, sort_by, inject)

        def on_sort(result, sort_by, inject):
            return styled_table(results_table(result, sort_by, inject))

        def on_focus(result, item, inject):
            return prompts_html(state, result, item, inject)

        self.controls.inject.input(on_inject, [page.result, self.controls.inject], [r.sort_by] + r.outputs)
        r.sort_by.input(on_sort, [page.result, r.sort_by, self.controls.inject], r.table)
        r.focus.input(on_focus, [page.result, r.focus, self.controls.inject], [r.prompt_text, r.prompt_cf])
