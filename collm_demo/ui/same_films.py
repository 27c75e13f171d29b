"""Same films, different users tab: does the model rank the same films differently for different people?

A fixed set of films is ranked for 2 to 5 real users side by side, three ways: with the CF tokens
(CoLLM), without them (the text-only prompt) and by the CF model alone (MF by default), and the
page says how alike the users' rankings are under each (mean pairwise Spearman ρ, mean top-5
overlap) with a reading generated from those numbers. Everything is computed live by
``Pipeline.rank_for_users``: each user with the history and CF vector the Recommend tab gives a
real user, so a column here is that tab's ranking of the same films.

A tab of its own rather than a section of Recommend: that tab is about *one* profile (its history,
its truth colours, its prompts) and already holds the two-composed-profiles comparison; this view
asks a question across real users, with its own inputs (a user list and a film list), and needs
none of Recommend's controls but the CF model, which it takes from the last result like the Inside
tab. It runs on demand (seconds: one scoring per user); after a scoring it only fills an empty
user box with the default set, which needs the loaded CF model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import InputError
from ..personalization import UsersRanking
from .memo import memoize
from .page import Page, Refresh, Tab, gr_error
from .parsing import parse_cf, parse_item_ids, parse_user_ids
from .state import AppState
from .views import cf_label, shorten

if TYPE_CHECKING:
    import gradio as gr

MIN_USERS, MAX_USERS, DEFAULT_USERS = 2, 5, 4
MIN_FILMS, MAX_FILMS, DEFAULT_FILMS = 3, 20, 12  # 5 users x 20 films: a few seconds per user on 2 CPU cores
MIN_TRAIN = 20  # training interactions a default user has: a CF vector fitted to enough ratings
TOP_K = 5
IN_HISTORY = "†"  # marks a film that is in that user's prompt history
# The smallest gap of mean ρ the reading calls a difference: on 12 films, two films 4 places apart
# swapping in one ranking lower ρ by 6·2·4²/(12·143) ≈ 0.11. A judgement, not a test: smaller gaps
# are said to be none.
CLEAR_GAP = 0.1

DEFAULT_RULE = (f"**The default set.** Users: among the users the CF model was trained on with at least {MIN_TRAIN} "
                "training interactions, the two whose CF user vectors (centred on those users' mean) have the "
                f"lowest cosine, then, one at a time, the user least like any chosen one, up to {DEFAULT_USERS}: "
                "people the CF model sees as opposite tastes. Films: the genres ordered by their films' training "
                f"ratings, then each genre's most-rated warm film in turn, {DEFAULT_FILMS} in all.")


# ------------------------------------------------------------------ the default set

def farthest_apart(ids: list[str], vectors: np.ndarray, n: int) -> list[str]:
    """``n`` of ``ids`` whose vectors are far apart: centred on their mean (so a shared direction,
    such as MF's constant bias slot, counts for nothing), the pair with the lowest cosine, then
    greedily the one whose highest cosine to those chosen is lowest. Ties: the earlier id."""
    v = vectors - vectors.mean(axis=0)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    cos = v @ v.T
    i, j = np.unravel_index(int(np.argmin(cos)), cos.shape)
    chosen = sorted([int(i), int(j)])
    while len(chosen) < min(n, len(ids)):
        closest = cos[:, chosen].max(axis=1)
        closest[chosen] = np.inf
        chosen.append(int(np.argmin(closest)))
    return [ids[c] for c in chosen]


@memoize(8)
def default_users(state: AppState, cf_name: str | None = None, n: int = DEFAULT_USERS) -> tuple[str, ...]:
    """Users the CF model sees as opposite tastes (``DEFAULT_RULE``; ``farthest_apart`` of their CF
    user vectors). Fewer than ``n`` such users: any trained user with a history; a CF model without
    stored user vectors (none loaded, or one that only encodes histories): the most-trained users."""
    catalog, cf = state.catalog, state.pipeline(cf_name).cf
    trained = [u for u, info in catalog.users.items()
               if info.n_pretest and cf is not None and cf.has_user(u) and not cf.encodes_history]
    pool = [u for u in trained if catalog.users[u].n_train >= MIN_TRAIN]
    pool = pool if len(pool) >= n else trained
    if len(pool) < n:
        usable = sorted((u for u in catalog.users.values() if u.n_pretest), key=lambda u: (-u.n_train, len(u.user),
                                                                                             u.user))
        return tuple(u.user for u in usable[:n])
    return tuple(farthest_apart(pool, cf.user_vectors(pool).numpy(), n))


@memoize(4)
def default_films(state: AppState, n: int = DEFAULT_FILMS) -> tuple[str, ...]:
    """Popular warm films across genres (``DEFAULT_RULE``): the genres by their films' training
    interactions, most first; each genre's most-rated warm film not yet taken, round after round."""
    catalog, items = state.catalog, state.dataset.items
    warm = sorted((i for i in catalog.item_ids if catalog.item_warm(i)),
                  key=lambda i: (-catalog.item_train.get(i, 0), len(i), i))
    genres = {i: [g for g in str(items.at[i, "genres"]).split("|") if g and g != "unknown"] for i in warm}
    weight = Counter()
    for item in warm:
        weight.update({g: catalog.item_train.get(item, 0) for g in genres[item]})
    order = sorted(weight, key=lambda g: (-weight[g], g))
    picked: list[str] = []
    while len(picked) < min(n, len(warm)):
        before = len(picked)
        for genre in order:
            found = next((i for i in warm if genre in genres[i] and i not in picked), None)
            if found is not None and len(picked) < n:
                picked.append(found)
        if len(picked) == before:  # every genre used up: the most-rated films left
            picked += [i for i in warm if i not in picked][: n - len(picked)]
    return tuple(picked)


# ------------------------------------------------------------------------ the numbers

def rank_users(state: AppState, user_ids, item_ids, cf=None, progress=None) -> UsersRanking:
    """The view's numbers: the films ranked for every user (``Pipeline.rank_for_users``, memoised).
    An empty user or film list means the default set; anything else is read strictly."""
    cf = parse_cf(state, cf)
    cf_name = state.pipeline(cf).cf_name
    users = (default_users(state, cf_name) if _empty(user_ids)
             else tuple(parse_user_ids(state, user_ids, MIN_USERS, MAX_USERS)))
    films = default_films(state) if _empty(item_ids) else tuple(parse_item_ids(state, item_ids, "films"))
    if not MIN_FILMS <= len(films) <= MAX_FILMS:
        raise InputError(f"films: give {MIN_FILMS} to {MAX_FILMS} item ids (got {len(films)}): fewer rank "
                         f"nothing, more take too long for {len(users)} users")
    return _rank_users(state, users, films, cf_name, progress)


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple))
                                                                               and not value)


@memoize(16, ignore=("progress",))
def _rank_users(state: AppState, users: tuple[str, ...], films: tuple[str, ...], cf_name: str,
                progress=None) -> UsersRanking:
    step = (lambda share, what: progress(0.05 + 0.9 * share, desc=what)) if progress else None
    return state.pipeline(cf_name).rank_for_users(users, films, top_k=TOP_K, progress=step)


def method_names(state: AppState, ranking: UsersRanking) -> dict[str, str]:
    """Short column names of the three methods."""
    label = cf_label(state.pipeline(ranking.cf_name)) if ranking.cf_name else "CF"
    text = "without CF" if ranking.text_mode == "text_only" else "zero-shot"
    return {"cf": "with CF", "text": text, "alone": f"{label} alone"}


def alike(rho: float) -> str:
    """A ρ between two rankings in words."""
    if rho is None or math.isnan(rho):
        return "not measurable (a method gave every film the same score)"
    for floor, words in ((0.9, "almost identical"), (0.7, "very alike"), (0.4, "fairly alike"),
                         (0.1, "only loosely alike"), (-0.1, "unrelated")):
        if rho >= floor:
            return words
    return "opposed"


def reading(state: AppState, ranking: UsersRanking) -> str:
    """One or two sentences for a learner, generated from the agreement numbers."""
    a, names, n = ranking.agreement, method_names(state, ranking), len(ranking.users)

    def part(method: str, what: str) -> str:
        g = a[method]
        return (f"{what} {alike(g.mean_rho)} (mean ρ = {g.mean_rho:.2f}; {g.mean_overlap:.1f} of the top {g.k} "
                "shared)")

    parts = [part("cf", f"with the CF tokens the {n} users' rankings are")] if "cf" in a else []
    parts.append(part("text", "without them" if "cf" in a else f"the {n} users' text-only rankings are"))
    if "alone" in a:
        parts.append(part("alone", f"{names['alone']}'s are"))
    out = "; ".join(parts) + "."
    verdicts = _verdicts(a, names["alone"])
    return out[0].upper() + out[1:] + (f" So {' and '.join(verdicts)}." if verdicts else "")


def _verdicts(a: dict, alone: str) -> list[str]:
    """What the ρ gaps say, where both sides have a ρ: the CF tokens against the text alone and
    against the CF model alone (a gap under ``CLEAR_GAP`` counts as none)."""
    def gap(method: str) -> float | None:
        if "cf" not in a or method not in a or any(math.isnan(a[m].mean_rho) for m in ("cf", method)):
            return None
        return a["cf"].mean_rho - a[method].mean_rho

    out = []
    if (d := gap("text")) is not None:
        out.append("the CF tokens make these users' rankings more alike than the text alone does" if d >= CLEAR_GAP
                   else "the CF tokens make these users' rankings more personal than the text alone"
                   if d <= -CLEAR_GAP else "the CF tokens barely change how personal the rankings are")
    if (d := gap("alone")) is not None:
        out.append(f"with them the LLM personalizes these films less than {alone} does" if d >= CLEAR_GAP
                   else f"with them the LLM personalizes these films more than {alone} does" if d <= -CLEAR_GAP
                   else f"with them the LLM is about as personal as {alone}")
    return out


# ----------------------------------------------------------------------------- views

def _cell(rank: int, score: float, in_history: bool) -> str:
    return f"{rank} · {score:.3f}" + (f" {IN_HISTORY}" if in_history else "")


def ranking_table(state: AppState, ranking: UsersRanking | None) -> pd.DataFrame:
    """Rows: films (by their mean rank with CF tokens, else the first method's); columns: per method,
    per user, "rank · score" (P(Yes); the CF model's probability in its own columns)."""
    if ranking is None:
        return pd.DataFrame(columns=["film"])
    names, methods = method_names(state, ranking), ranking.methods
    ranks = {(m, u.user): u.ranks(m) for m in methods for u in ranking.users}
    first = methods[0]
    order = sorted(range(len(ranking.candidates)),
                   key=lambda n: (np.mean([ranks[(first, u.user)][n] for u in ranking.users]), n))
    items, rows = state.dataset.items, []
    for n in order:
        item = ranking.candidates[n]
        genres = str(items.at[item, "genres"]).replace("|", ", ") if item in items.index else ""
        row = {"film": f"{shorten(state.dataset.title(item), 30)} · #{item}", "genres": shorten(genres, 28)}
        for m in methods:
            for u in ranking.users:
                row[f"{names[m]} · {u.user}"] = _cell(ranks[(m, u.user)][n], u.scores(m)[n], item in u.history)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_md(state: AppState, ranking: UsersRanking | None) -> str:
    if ranking is None:
        return ("Press **Rank for every user**: each film is scored for each user three ways (a few seconds per "
                "user). Empty boxes use the default set.")
    names, a = method_names(state, ranking), ranking.agreement
    head = "| | " + " | ".join(names[m] for m in ranking.methods) + " |"
    rho = "| mean Spearman ρ between two users' rankings (1 = the same order) | " + " | ".join(
        "—" if math.isnan(a[m].mean_rho) else f"{a[m].mean_rho:.2f}" for m in ranking.methods) + " |"
    overlap = f"| films two users share in their top {a[ranking.methods[0]].k} (mean) | " + " | ".join(
        f"{a[m].mean_overlap:.1f}" for m in ranking.methods) + " |"
    table = "\n".join([head, "|---|" + "---|" * len(ranking.methods), rho, overlap])
    users = " · ".join(f"**{u.user}** ({'trained' if u.trained_vector else 'folded-in'} CF vector; history of "
                       f"{len(u.history)}, {sum(u.labels)} liked)" for u in ranking.users)
    return (f"**{reading(state, ranking)}**\n\n{table}\n\nLower ρ and fewer shared films = more personal rankings. "
            f"Users: {users}. In the table each cell is *rank · score* (P(Yes); the CF model's own probability in "
            f"its columns); {IN_HISTORY} = the film is in that user's prompt history.")


def ranking_json(state: AppState, ranking: UsersRanking) -> dict:
    """The /same_films answer: plain JSON (nan as null)."""
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 6)

    return {"cf_model": ranking.cf_name, "text_mode": ranking.text_mode,
            "films": [{"id": c, "title": state.dataset.title(c)} for c in ranking.candidates],
            "users": [{"user": u.user, "history": list(u.history), "trained_vector": u.trained_vector}
                      | {m: {"scores": [num(s) for s in u.scores(m)], "ranks": u.ranks(m)} for m in ranking.methods}
                      for u in ranking.users],
            "agreement": {m: {"mean_rho": num(g.mean_rho), "pair_rhos": [num(r) for r in g.rhos],
                              "mean_top_overlap": num(g.mean_overlap), "k": g.k} for m, g in ranking.agreement.items()},
            "reading": reading(state, ranking)}


def same_films_json(state: AppState, user_ids, item_ids, cf_model=None) -> dict:
    """The /same_films API: ``rank_users`` as JSON."""
    return ranking_json(state, rank_users(state, user_ids, item_ids, cf_model))


def view(state: AppState, user_ids, item_ids, cf=None, progress=None) -> list:
    """The tab's outputs for the boxes' text (``SameFilmsTab.outputs`` order); the boxes get the
    ids actually ranked, so an empty box shows the default set it stood for."""
    ranking = rank_users(state, user_ids, item_ids, cf, progress)
    return [summary_md(state, ranking), ranking_table(state, ranking), ", ".join(u.user for u in ranking.users),
            ", ".join(ranking.candidates)]


# ------------------------------------------------------------------------- widgets

@dataclass(frozen=True)
class SameFilmsTab(Tab):
    """The user and film boxes, the button, the summary and the side-by-side table."""

    users: gr.Textbox
    films: gr.Textbox
    run: gr.Button
    summary: gr.Markdown
    table: gr.Dataframe

    @property
    def outputs(self) -> list:
        return [self.summary, self.table, self.users, self.films]

    def after_scoring(self, page: Page) -> Refresh:
        """Fill an empty user box with the default set (it needs the loaded CF model, so not at build)."""
        state = page.state

        def fill(users, result):
            return users if not _empty(users) else ", ".join(default_users(state, result.cf if result else None))
        return Refresh(fill, [self.users, page.result], [self.users])

    def wire(self, page: Page) -> None:
        import gradio as gr

        state = page.state

        @gr_error
        def on_rank(users, films, result, progress=gr.Progress()):
            return view(state, users, films, result.cf if result else None, progress)

        self.run.click(on_rank, [self.users, self.films, page.result], self.outputs, api_name="same_films_view",
                       queue=True)


def build(state: AppState) -> SameFilmsTab:
    import gradio as gr

    gr.Markdown("Does the model rank the **same films** differently for **different people**? Each film is "
                "scored for each user with the CF tokens, without them, and by the CF model alone; the numbers "
                "say how alike the users' rankings are. Each user is prompted with their real history (the "
                "latest 10 ratings before the test period), as on the Recommend tab.", elem_classes=["lead"])
    with gr.Row():
        users = gr.Textbox(label=f"Users ({MIN_USERS} to {MAX_USERS} ids, comma-separated; empty = the default set)",
                           placeholder="e.g. 94, 738, 58 (filled with the default set once the model is loaded)",
                           min_width=280, elem_id="same-users")
        films = gr.Textbox(", ".join(default_films(state)), min_width=320, elem_id="same-films",
                           label=f"Films ({MIN_FILMS} to {MAX_FILMS} item ids, comma-separated; empty = the default set)")
    run = gr.Button("Rank for every user", variant="primary", elem_id="same-run")
    gr.Markdown(DEFAULT_RULE + " The CF model is the one selected on the Recommend tab.", elem_classes=["note"])
    summary = gr.Markdown(summary_md(state, None), elem_id="same-summary")
    table = gr.Dataframe(ranking_table(state, None), interactive=False, wrap=True, elem_id="same-table",
                         label="Each film's rank · score for each user (films by their mean rank in the first columns)")
    return SameFilmsTab(users=users, films=films, run=run, summary=summary, table=table)
