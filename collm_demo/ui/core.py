"""What every tab shares: who the user is (a profile), their CF vector, scoring, and the map.

A *profile* is a history (items + liked/disliked) and where it came from: a real user's
last <= 10 interactions before the test period, that history edited in the app, or a
history composed from scratch. Its CF vector is the trained one for an unedited real user
the CF model knows, and is otherwise made from the history the way the engine makes it for
a prompt row (``CFModel.history_user_vector``: folded in, or encoded by a model that
``encodes_history``).

Scoring always runs both modes on the same candidates in one call of the pipeline's
``score_profile``: the text-only prompt (no CF slots) and the CoLLM prompt (the two slots filled
by the projected CF vectors), the history encoded once for both. The walkthrough's single prompt
goes through ``Pipeline.inspect``, the same path and the same float32 head. Nothing here builds a
prompt, runs the LLM or takes a model lock: the pipeline does all three. Results are memoised on
their arguments (``memo.memoize``). What the user typed is read in ``parsing``.
"""

from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd
import torch

from ..collm import ITEM_SLOT, USER_SLOT, Inspection
from ..config import MAX_CANDIDATES
from ..embedding_map import nearest_words, place
from ..errors import InputError
from .memo import memoize
from .parsing import HISTORY_COLUMNS, echo, parse_cf, parse_history, parse_item_ids, parse_user_id, trim_history
from .state import AppState
from .values import Profile, ProfileKind, ScoredResult, ScoredRow
from .views import cf_label

__all__ = ["HISTORY_COLUMNS", "InputError", "Profile", "ProfileKind", "ScoredResult", "ScoredRow", "answer_logits",
           "compare", "history_frame", "mode_names", "profile_from_inputs", "profile_of", "prompt_html",
           "real_profile", "score_both", "user_vector"]


# ------------------------------------------------------------------------- profiles


def real_profile(state: AppState, user: str) -> Profile:
    hist = state.catalog.real_history(user)
    dates = [pd.Timestamp(int(t), unit="s").strftime("%Y-%m-%d") for t in hist["timestamp"]]
    return Profile(ProfileKind.USER, user, [str(i) for i in hist["item"]], [int(y) for y in hist["label"]], dates)


def profile_of(state: AppState, result: ScoredResult | None) -> Profile:
    """The profile a result was scored for; before any scoring, the default user's."""
    if result:
        return result.profile
    return real_profile(state, state.catalog.default_user())


def history_frame(state: AppState, profile_or_rows) -> pd.DataFrame:
    """The editable history table (oldest first)."""
    if isinstance(profile_or_rows, Profile):
        p = profile_or_rows
        rows = list(zip(p.items, p.labels, p.dates or [""] * len(p.items)))
    else:
        rows = profile_or_rows
    items = state.dataset.items
    out = []
    for item, label, date in rows:
        year = items.at[item, "year"] if item in items.index else pd.NA
        genres = items.at[item, "genres"] if item in items.index else ""
        out.append([item, state.catalog.item_title.get(item, f"item {item}"), "" if pd.isna(year) else str(int(year)),
                    str(genres).replace("|", ", "), bool(label), date])
    return pd.DataFrame(out, columns=HISTORY_COLUMNS)


def profile_from_inputs(state: AppState, source: str, user: str | None, table) -> Profile:
    """The profile the UI's inputs describe. An edited real history becomes 'edited'.
    A table longer than the prompt's limit is cut to its latest 10 rows (``trim_history``)."""
    rows, _ = trim_history(state, parse_history(table))
    unknown = [i for i, _, _ in rows if i not in state.catalog.item_title]
    if unknown:
        raise InputError(f"Unknown movie id(s) in the history table: {', '.join(echo(u) for u in unknown[:5])}")
    if source == "composed" or not user:
        return Profile(ProfileKind.COMPOSED, None, [i for i, _, _ in rows], [y for _, y, _ in rows],
                       ["" for _ in rows])
    real = real_profile(state, user)
    edited = Profile(ProfileKind.EDITED, user, [i for i, _, _ in rows], [y for _, y, _ in rows], [d for _, _, d in rows])
    if edited.items == real.items and edited.labels == real.labels:
        return real
    return edited


def user_vector(state: AppState, profile: Profile, cf: str | None = None,
                for_tokens: bool = False) -> tuple[torch.Tensor | None, str]:
    """The profile's CF vector (from backend ``cf``) and a plain-words account of where it came from.

    ``for_tokens``: the vector CoLLM's user token is made from, folded in the way the projector
    was trained on; else the vector the CF model scores with alone (its own fold-in strength).
    The two differ only for folded-in profiles, and only when the two strengths differ.
    """
    pipe = state.pipeline(cf)
    if pipe.cf is None:
        return None, "no CF model is loaded, so there is no CF vector"
    token_l2 = pipe.token_foldin_l2() if for_tokens else None
    # The strength actually used (one cache entry when both uses agree).
    return _user_vector(state, profile, pipe.cf_name, token_l2 if token_l2 is not None else pipe.cf.foldin_l2)


@memoize(256)
def _user_vector(state: AppState, profile: Profile, cf_name: str, l2: float) -> tuple[torch.Tensor, str]:
    pipe = state.pipeline(cf_name)
    cf = pipe.cf
    n = len(profile.items)
    encodes_history = cf.encodes_history  # as in the evaluation: never a stored vector
    if profile.kind is ProfileKind.USER and cf.has_user(profile.user) and not encodes_history:
        return (pipe.user_token_vector(profile.user, profile.items, profile.labels),
                f"the trained {cf_label(pipe)} vector (this user is in the training data)")
    # The engine's per-row rule: fold-in, or the encoding for a model that encodes histories.
    vec = cf.history_user_vector(list(profile.items), list(profile.labels), l2=l2)
    if encodes_history:
        return vec, (f"encoded by the sequential model from the {n} movies of the history, in order, "
                     "with their liked/disliked marks (SASRec's user vector is always its history's encoding)")
    if profile.kind is ProfileKind.USER:
        why = (f"folded in from their {n} pre-test interactions (user {profile.user} has no trained "
               "vector: no training interactions)")
    elif profile.kind is ProfileKind.EDITED:
        why = (f"folded in from the edited history ({n} movies): the trained vector only knows the "
               "real history")
    else:
        why = f"folded in from your {n} movies"
    return vec, why + " — fold-in fits a vector to the liked/disliked labels against the frozen item vectors"


def project(state: AppState, vectors, cf: str | None = None, users: bool | list[bool] = False) -> np.ndarray:
    """CF vectors -> mapped tokens (the vectors that overwrite the slots); ``users``: which are users'."""
    return state.pipeline(cf).project(np.asarray(vectors, dtype=np.float32), users).numpy()


# -------------------------------------------------------------------------- scoring

def mode_names(pipe) -> tuple[str, str]:
    text = "text-only (LoRA)" if pipe.text_mode == "text_only" else "zero-shot LLM (no LoRA)"
    return text, f"CoLLM ({cf_label(pipe)} tokens)"


def score_both(state: AppState, profile: Profile, candidates: list[str], progress=None,
               cf: str | None = None) -> ScoredResult:
    """Score K candidates for one profile in both modes, the CF tokens coming from backend ``cf``."""
    if not profile.items:
        raise InputError("The history is empty: add at least one movie (liked or disliked) first.")
    if not candidates:
        raise InputError("No candidates: pick some movies to score, or use one of the one-click sets.")
    if len(candidates) > MAX_CANDIDATES:
        raise InputError(f"{len(candidates)} candidates: at most {MAX_CANDIDATES} per scoring call.")
    return _score_both(state, profile, tuple(candidates), state.pipeline(cf).cf_name, progress)


@memoize(128, ignore=("progress",))
def _score_both(state: AppState, profile: Profile, candidates: tuple[str, ...], cf_name: str,
                progress=None) -> ScoredResult:
    started = time.time()
    step = progress or (lambda *a, **k: None)
    pipe = state.pipeline(cf_name)
    title, catalog = state.dataset.title, state.catalog
    uvec, vec_source = None, "no CF vector"
    if pipe.has_projector:
        uvec, vec_source = user_vector(state, profile, cf_name, for_tokens=True)
    elif pipe.cf is not None:
        _, vec_source = user_vector(state, profile, cf_name)
    step(0.1, desc="scoring with and without CF tokens" if pipe.has_projector else "scoring without CF tokens")
    scores = pipe.score_profile(profile.items, profile.labels, candidates, uvec)
    s_text, s_cf = scores.text, scores.cf or [None] * len(candidates)
    step(0.95, desc="ranking")
    labels = catalog.true_labels(profile.user) if profile.kind is ProfileKind.USER else {}
    items = state.dataset.items
    rows = []
    for n, item in enumerate(candidates):
        year = items.at[item, "year"] if item in items.index else pd.NA
        rows.append(ScoredRow(
            item=item, title=title(item), year=None if pd.isna(year) else int(year),
            genres=str(items.at[item, "genres"]) if item in items.index else "",
            n_train=int(catalog.item_train.get(item, 0)), warm=catalog.item_warm(item),
            score_text=float(s_text[n]), score_cf=None if s_cf[n] is None else float(s_cf[n]),
            label=labels.get(item), in_history=item in profile.items))
    text_name, cf_mode = mode_names(pipe)
    user_info = catalog.users.get(profile.user) if profile.user else None
    return ScoredResult(
        profile=profile, rows=tuple(rows), vector_source=vec_source, cf=cf_name, cf_label=cf_label(pipe),
        text_mode=text_name, cf_mode=cf_mode if pipe.has_projector else None,
        user_warm=bool(user_info.warm) if (user_info and profile.kind is ProfileKind.USER) else False,
        user_n_train=user_info.n_train if user_info else 0, seconds=round(time.time() - started, 2),
        warm_min=catalog.warm_min)


@memoize(4)
def warm_up(state: AppState, cf: str | None = None) -> float:
    """Score one composed profile on two items once per CF model, before any user asks: the
    first forward passes pay one-off costs (allocations, lazy initialisation) that would otherwise
    show up as a cold first scoring. Returns the seconds it took (the first call only)."""
    started = time.time()
    catalog = state.catalog
    items = sorted(catalog.item_ids, key=lambda i: -catalog.item_train.get(i, 0))[:4]
    profile = Profile(kind=ProfileKind.COMPOSED, user=None, items=tuple(items[:2]), labels=(1, 0))
    _score_both(state, profile, tuple(items[2:]), state.pipeline(cf).cf_name)
    return round(time.time() - started, 2)


def compare(state: AppState, user_id, item_ids, cf_model=None) -> list[dict]:
    """The /compare API: one object per candidate, in the order given."""
    user = parse_user_id(state, user_id)
    items = parse_item_ids(state, item_ids)
    cf = parse_cf(state, cf_model)
    return score_both(state, real_profile(state, user), items, cf=cf).to_api()


# --------------------------------------------------------------------------- prompts

def prompt_html(state: AppState, profile: Profile, item: str, with_cf: bool) -> str:
    """The exact prompt text, the two CF slots highlighted."""
    title = state.dataset.title
    text = state.pipeline().prompt_text(profile.items, profile.labels, item, with_cf)
    out = html.escape(text)
    out = out.replace(html.escape(USER_SLOT), f'<span class="slot slot-user" title="overwritten by the '
                      f'projected user CF vector">{html.escape(USER_SLOT)}</span>')
    out = out.replace(html.escape(ITEM_SLOT), f'<span class="slot slot-item" title="overwritten by the '
                      f'projected item CF vector">{html.escape(ITEM_SLOT)}</span>')
    target = html.escape(f'"{title(item)}"')
    out = out.replace(f"titled {target}", f'titled <span class="target">{target}</span>', 1)
    return f'<pre class="prompt">{out}</pre>'


def answer_logits(state: AppState, profile: Profile, item: str, with_cf: bool, cf: str | None = None) -> Inspection:
    """One prompt through the LLM (``CoLLM.inspect``: the scoring path and head), keeping the whole
    answer distribution: logits of " Yes" and " No" at the answer position and the top next tokens."""
    return _answer(state, profile, item, bool(with_cf), state.pipeline(cf).cf_name if with_cf else None)


@memoize(128)
def _answer(state: AppState, profile: Profile, item: str, with_cf: bool, cf_name: str | None) -> Inspection:
    pipe = state.pipeline(cf_name)
    uvec = user_vector(state, profile, cf_name, for_tokens=True)[0] if with_cf else None
    return pipe.inspect(profile.items, profile.labels, item, with_cf, uvec)


# ------------------------------------------------------------------ the embedding map

def map_unavailable(state: AppState, cf: str | None = None) -> str | None:
    """Why the map of backend ``cf`` cannot be shown, or None."""
    pipe = state.pipeline(cf)
    if not pipe.has_projector:
        return "The embedding map needs a CF model and a trained projector (none loaded)."
    if state.assets.layout(pipe.cf_name) is None:
        return (f"No embedding-map layout for the {cf_label(pipe)} tokens at {state.assets.layout_path(pipe.cf_name)}. "
                f"Compute it once with `python -m collm_demo embedding-map{pipe.backend.cli_flag}` (about a minute), "
                "then reload the app.")
    return None


@memoize(8)
def layout_index(state: AppState, cf_name: str) -> dict:
    """Fitted positions of backend ``cf_name``'s layout by (kind, key)."""
    return {(p["kind"], p["key"]): (p["x"], p["y"]) for p in state.assets.layout(cf_name)["points"]}


def placed(state: AppState, cf_name: str, vectors, users: bool = False) -> np.ndarray:
    """Map positions of CF vectors not in the fitted layout (``embedding_map.place``)."""
    pipe = state.pipeline(cf_name)
    return place(pipe, state.assets.layout(cf_name), project(state, vectors, cf_name, users))


def user_position(state: AppState, profile: Profile, cf: str | None = None) -> tuple[tuple[float, float], str]:
    """The user's map position and how it was obtained."""
    pipe = state.pipeline(cf)
    index = layout_index(state, pipe.cf_name)
    # A model that encodes histories has no stored vector for a profile: the layout's is not it.
    if profile.kind is ProfileKind.USER and ("user", profile.user) in index and not pipe.cf.encodes_history:
        return index[("user", profile.user)], "fitted in the layout (trained vector)"
    x, y = _placed_user(state, profile, pipe.cf_name)
    return (x, y), ("placed (approximate): not in the fitted layout, so drawn at the "
                    "similarity-weighted mean position of its 10 nearest fitted points")


@memoize(256)
def _placed_user(state: AppState, profile: Profile, cf_name: str) -> tuple[float, float]:
    vec, _ = user_vector(state, profile, cf_name, for_tokens=True)
    xy = placed(state, cf_name, vec, users=True)[0]
    return float(xy[0]), float(xy[1])


def item_positions(state: AppState, items: list[str], cf: str | None = None
                   ) -> tuple[list[tuple[float, float]], list[bool]]:
    """Map positions of items (fitted, or placed when not in the layout) and which were placed."""
    cf_name = state.pipeline(cf).cf_name
    index = layout_index(state, cf_name)
    missing = tuple(i for i in items if ("item", i) not in index)
    extra = _placed_items(state, missing, cf_name) if missing else {}
    return ([index[("item", i)] if ("item", i) in index else extra[i] for i in items],
            [("item", i) not in index for i in items])


@memoize(256)
def _placed_items(state: AppState, items: tuple[str, ...], cf_name: str) -> dict[str, tuple[float, float]]:
    xy = placed(state, cf_name, state.pipeline(cf_name).cf.item_vectors(list(items)))
    return {i: (float(x), float(y)) for i, (x, y) in zip(items, xy)}


@memoize(256)
def nearest(state: AppState, profile: Profile, item: str, cf_name: str, k: int = 8
            ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
    """The two mapped CF tokens (user, item) of a prompt and their ``k`` nearest vocabulary tokens."""
    pipe = state.pipeline(cf_name)
    uvec, _ = user_vector(state, profile, cf_name, for_tokens=True)
    tokens = project(state, np.stack([uvec.numpy(), pipe.cf.item_vectors([item])[0].numpy()]), cf_name,
                     [True, False])
    return tokens, nearest_words(pipe, tokens, k)


def word_norm(state: AppState, cf: str | None = None) -> float:
    """A typical word embedding's norm: the layout's record, else computed from the LLM."""
    pipe = state.pipeline(cf)
    norms = (state.assets.layout(pipe.cf_name) or {}).get("meta", {}).get("norms", {})
    if "word_norm_mean" in norms:
        return float(norms["word_norm_mean"])
    return state.assets.word_norm_mean(pipe)
