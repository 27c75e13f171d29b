"""What every tab shares: who the user is (a profile), their CF vector, and scoring.

A *profile* is a history (items + liked/disliked) and where it came from: a real user's
last <= 10 interactions before the test period, that history edited in the app, or a
history composed from scratch. Its CF vector is the trained one for an unedited real user
the CF model knows, and is otherwise folded in from the history (``foldin``); a sequential
model (SASRec) always encodes the history itself, as in the evaluation.

Scoring always runs both modes on the same candidates with the engine's shared-prefix
``score_candidates``: the text-only prompt (LoRA, no CF slots) and the CoLLM prompt (same
LoRA, the two slots filled by the projected CF vectors).
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from ..collm import ITEM_SLOT, USER_SLOT, prompt_text
from ..foldin import user_l2
from .state import MAX_CANDIDATES, AppState


class InputError(ValueError):
    """A user-facing problem with the input; the UI turns it into ``gr.Error``."""


# ------------------------------------------------------------------------- profiles

@dataclass
class Profile:
    kind: str  # "user" (a real user's unedited history), "edited" (a real user's, edited), "composed"
    user: str | None
    items: list[str]
    labels: list[int]
    dates: list[str] = field(default_factory=list)

    def key(self) -> tuple:
        return (self.kind, self.user, tuple(self.items), tuple(int(y) for y in self.labels))

    def describe(self) -> str:
        if self.kind == "user":
            return f"user {self.user}"
        if self.kind == "edited":
            return f"user {self.user} (edited history)"
        return "your composed user"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(**data)


HISTORY_COLUMNS = ["id", "title", "year", "genres", "liked", "date"]


def real_profile(state: AppState, user: str) -> Profile:
    hist = state.real_history(user)
    dates = [pd.Timestamp(int(t), unit="s").strftime("%Y-%m-%d") for t in hist["timestamp"]]
    return Profile("user", user, [str(i) for i in hist["item"]], [int(y) for y in hist["label"]], dates)


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
        out.append([item, state.item_title.get(item, f"item {item}"), "" if pd.isna(year) else str(int(year)),
                    str(genres).replace("|", ", "), bool(label), date])
    return pd.DataFrame(out, columns=HISTORY_COLUMNS)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "liked", "y", "x", "✓")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return bool(value)


def parse_history(table) -> list[tuple[str, int, str]]:
    """(item, label, date) rows from the history table (a DataFrame or a list of lists)."""
    if table is None:
        return []
    if isinstance(table, dict):  # gradio's raw {"headers", "data"} form
        table = pd.DataFrame(table.get("data", []), columns=table.get("headers"))
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table, columns=HISTORY_COLUMNS[: len(table[0])] if table else HISTORY_COLUMNS)
    rows = []
    for _, rec in table.iterrows():
        item = str(rec.get("id", "")).strip()
        if not item or item.lower() == "nan":
            continue
        rows.append((item, int(_truthy(rec.get("liked"))), str(rec.get("date", "") or "")))
    return rows


def trim_history(state: AppState, rows: list) -> tuple[list, str]:
    """Keep the latest ``history_len`` (10) rows, as the prompt does; say what was dropped."""
    limit = state.dataset.protocol.history_len
    if len(rows) <= limit:
        return rows, ""
    dropped = rows[: len(rows) - limit]
    titles = ", ".join(state.dataset.title(r[0]) for r in dropped[:3]) + (" …" if len(dropped) > 3 else "")
    return rows[-limit:], (f"The prompt holds at most {limit} movies: kept the latest {limit} and dropped "
                           f"the {len(dropped)} oldest ({titles}).")


def profile_from_inputs(state: AppState, source: str, user: str | None, table) -> Profile:
    """The profile the UI's inputs describe. An edited real history becomes 'edited'.
    A table longer than the prompt's limit is cut to its latest 10 rows (``trim_history``)."""
    rows, _ = trim_history(state, parse_history(table))
    unknown = [i for i, _, _ in rows if i not in state.item_title]
    if unknown:
        raise InputError(f"Unknown movie id(s) in the history table: {', '.join(unknown[:5])}")
    if source == "composed" or not user:
        return Profile("composed", None, [i for i, _, _ in rows], [y for _, y, _ in rows],
                       ["" for _ in rows])
    real = real_profile(state, user)
    items, labels = [i for i, _, _ in rows], [y for _, y, _ in rows]
    if items == real.items and labels == real.labels:
        return real
    return Profile("edited", user, items, labels, [d for _, _, d in rows])


def cf_name(pipe) -> str:
    """'MF', 'LightGCN', ... for the loaded CF model."""
    if pipe.cf is None:
        return "CF"
    kind = str(pipe.cf.meta.get("kind") or getattr(pipe.cf, "kind", "") or "CF")
    if kind.startswith("imported:"):
        return f"{kind.split(':', 1)[1]} (imported)"
    return {"mf": "MF", "lightgcn": "LightGCN", "sasrec": "SASRec", "vectors": "CF"}.get(kind.lower(), kind)


def result_cf(result: dict | None) -> str | None:
    """The CF backend a scored result was computed with (None = the app's default)."""
    return (result or {}).get("cf")


def user_vector(state: AppState, profile: Profile, cf: str | None = None,
                for_tokens: bool = False) -> tuple[torch.Tensor | None, str]:
    """The profile's CF vector (from backend ``cf``) and a plain-words account of where it came from.

    ``for_tokens``: the vector CoLLM's user token is made from, folded in the way the projector
    was trained on; else the vector the CF model scores with alone (its own fold-in strength).
    The two differ only for folded-in profiles, and only when the two strengths differ.
    """
    pipe = state.pipeline(cf)
    cf = pipe.cf
    if cf is None:
        return None, "no CF model is loaded, so there is no CF vector"
    # The strength actually used (one cache entry when both uses agree).
    token_l2 = pipe.token_foldin_l2() if for_tokens else None
    l2 = token_l2 if token_l2 is not None else user_l2(cf)

    def make():
        n = len(profile.items)
        encodes_history = getattr(cf, "kind", "") == "sasrec"  # as in the evaluation: never a stored vector
        if profile.kind == "user" and cf.has_user(profile.user) and not encodes_history:
            return (cf.user_vectors([profile.user])[0],
                    f"the trained {cf_name(pipe)} vector (this user is in the training data)")
        # The engine's per-row rule: fold-in for MF / LightGCN / imported vectors, the encoding for SASRec.
        vec = cf.row_user_vectors(["\x00app-profile"], [list(profile.items)], [list(profile.labels)], l2=l2)[0]
        if encodes_history:
            return vec, (f"encoded by the sequential model from the {n} movies of the history, in order, "
                         "with their liked/disliked marks (SASRec's user vector is always its history's encoding)")
        if profile.kind == "user":
            why = (f"folded in from their {n} pre-test interactions (user {profile.user} has no trained "
                   "vector: no training interactions)")
        elif profile.kind == "edited":
            why = (f"folded in from the edited history ({n} movies): the trained vector only knows the "
                   "real history")
        else:
            why = f"folded in from your {n} movies"
        return vec, why + " — fold-in fits a vector to the liked/disliked labels against the frozen item vectors"

    return state.cache("user_vector", 256).get_or(profile.key() + (pipe.cf_name, l2), make)


# -------------------------------------------------------------------------- scoring

def _short(value: str, limit: int = 40) -> str:
    """repr() of user input, cut so that an error never echoes a huge string back."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} characters)"


def parse_item_ids(state: AppState, text_or_list, field_name: str = "item_ids") -> list[str]:
    """Validate candidate ids: numeric, known, unique, 1..MAX_CANDIDATES."""
    if text_or_list is None:
        text_or_list = ""
    if isinstance(text_or_list, (int, float)):  # a bare number through the API: treat it as its text
        text_or_list = str(text_or_list)
    if isinstance(text_or_list, str):
        tokens = [t.strip() for t in text_or_list.replace(";", ",").split(",")]
        tokens = [t for t in tokens if t]
    elif isinstance(text_or_list, (list, tuple)):
        tokens = [str(t).strip() for t in text_or_list if str(t).strip()]
    else:
        raise InputError(f"{field_name} must be text like \"1, 50, 100\", not {type(text_or_list).__name__}")
    if not tokens:
        raise InputError(f"{field_name} is empty: give at least one item id, e.g. \"1, 50, 100\"")
    bad = [t for t in tokens if not t.isdigit()]
    if bad:
        raise InputError(f"{field_name}: {', '.join(_short(b) for b in bad[:5])} is not a numeric item id "
                         "(use comma-separated numbers like \"1, 50, 100\")")
    tokens = [str(int(t)) for t in tokens]
    seen, dup = set(), []
    for t in tokens:
        if t in seen and t not in dup:
            dup.append(t)
        seen.add(t)
    if dup:
        raise InputError(f"{field_name}: duplicate item id(s) {', '.join(dup[:5])}; list each candidate once")
    if len(tokens) > MAX_CANDIDATES:
        raise InputError(f"{field_name}: {len(tokens)} candidates given; at most {MAX_CANDIDATES} per call")
    unknown = [t for t in tokens if t not in state.item_title]
    if unknown:
        raise InputError(f"{field_name}: unknown item id(s) {', '.join(unknown[:5])} "
                         f"(this dataset has ids {state.item_ids[0]}..{state.item_ids[-1]})")
    return tokens


def parse_user_id(state: AppState, text) -> str:
    user = str(text if text is not None else "").strip()
    if not user:
        raise InputError("user_id is empty: give a user id such as \"1\"")
    if not user.isdigit():
        raise InputError(f"user_id {_short(user)} is not a numeric user id (e.g. \"1\")")
    user = str(int(user))
    if user not in state.users:
        raise InputError(f"unknown user_id {user} (this dataset has {len(state.users)} users)")
    if state.users[user].n_pretest == 0:
        raise InputError(f"user {user} has no interactions before the test period, so there is no "
                         "history to put in the prompt")
    return user


def mode_names(pipe) -> tuple[str, str]:
    text = "text-only (LoRA)" if pipe.has_lora else "zero-shot LLM (no LoRA)"
    return text, f"CoLLM ({cf_name(pipe)} tokens)"


def parse_cf(state: AppState, cf) -> str | None:
    """A CF backend name from the UI or the API; None/empty = the app's default."""
    if cf is None or (isinstance(cf, str) and not cf.strip()):
        return None
    if not isinstance(cf, str):
        raise InputError(f"cf_model must be a name such as \"mf\", not {type(cf).__name__}")
    name = cf.strip().lower()
    if name not in state.backends():
        raise InputError(f"cf_model {_short(cf)} is not available; this app has: {', '.join(state.backends())}")
    return name


def score_both(state: AppState, profile: Profile, candidates: list[str], progress=None,
               cf: str | None = None) -> dict:
    """Score K candidates for one profile in both modes, the CF tokens coming from backend ``cf``.
    Returns a plain dict (JSON-able)."""
    if not profile.items:
        raise InputError("The history is empty: add at least one movie (liked or disliked) first.")
    if not candidates:
        raise InputError("No candidates: pick some movies to score, or use one of the one-click sets.")
    if len(candidates) > MAX_CANDIDATES:
        raise InputError(f"{len(candidates)} candidates: at most {MAX_CANDIDATES} per scoring call.")
    pipe = state.pipeline(cf)
    key = (profile.key(), tuple(candidates), pipe.cf_name, pipe.has_lora, pipe.has_projector)

    def make():
        return _score_both(state, pipe, profile, candidates, progress)

    result = state.cache("scores", 128).get_or(key, make)
    return dict(result)


def _score_both(state, pipe, profile, candidates, progress) -> dict:
    started = time.time()
    step = progress or (lambda *a, **k: None)
    model, title = pipe.model, state.dataset.title
    hist_titles = [title(i) for i in profile.items]
    text_prompts = [model.builder.build(hist_titles, profile.labels, title(c), False) for c in candidates]
    step(0.1, desc="scoring without CF tokens")
    with state.model_lock:
        s_text = model.score_candidates(text_prompts, use_lora=pipe.has_lora).tolist()
    s_cf = [None] * len(candidates)
    vec_source = "no CF vector"
    if pipe.has_projector:
        step(0.5, desc="scoring with CF tokens")
        uvec, vec_source = user_vector(state, profile, pipe.cf_name, for_tokens=True)
        cf_prompts = [model.builder.build(hist_titles, profile.labels, title(c), True) for c in candidates]
        with state.model_lock:
            s_cf = model.score_candidates(cf_prompts, uvec, pipe.cf.item_vectors(candidates),
                                          use_lora=True).tolist()
    elif pipe.cf is not None:
        _, vec_source = user_vector(state, profile, pipe.cf_name)
    step(0.95, desc="ranking")
    labels = state.true_labels(profile.user) if profile.kind == "user" else {}
    rows = []
    for n, item in enumerate(candidates):
        items = state.dataset.items
        year = items.at[item, "year"] if item in items.index else pd.NA
        rows.append({
            "item": item, "title": title(item), "year": None if pd.isna(year) else int(year),
            "genres": str(items.at[item, "genres"]) if item in items.index else "",
            "n_train": int(state.item_train.get(item, 0)), "warm": state.item_warm(item),
            "score_text": float(s_text[n]),
            "score_cf": None if s_cf[n] is None else float(s_cf[n]),
            "delta": None if s_cf[n] is None else float(s_cf[n]) - float(s_text[n]),
            "label": labels.get(item), "in_history": item in profile.items,
        })
    text_name, cf_mode = mode_names(pipe)
    user_info = state.users.get(profile.user) if profile.user else None
    return {"profile": profile.to_dict(), "rows": rows, "vector_source": vec_source,
            "cf": pipe.cf_name, "cf_label": cf_name(pipe),
            "text_mode": text_name, "cf_mode": cf_mode if pipe.has_projector else None,
            "user_warm": bool(user_info.warm) if (user_info and profile.kind == "user") else False,
            "user_n_train": user_info.n_train if user_info else 0,
            "seconds": round(time.time() - started, 2)}


def compare(state: AppState, user_id, item_ids, cf_model=None) -> list[dict]:
    """The /compare API: one object per candidate, in the order given."""
    user = parse_user_id(state, user_id)
    items = parse_item_ids(state, item_ids)
    cf = parse_cf(state, cf_model)
    result = score_both(state, real_profile(state, user), items, cf=cf)
    return [{"id": r["item"], "title": r["title"], "warm": bool(r["warm"]),
             "score_text": round(r["score_text"], 6),
             "score_cf": None if r["score_cf"] is None else round(r["score_cf"], 6),
             "delta": None if r["delta"] is None else round(r["delta"], 6)} for r in result["rows"]]


def ranks(values: list[float | None]) -> list[int | None]:
    """1 = highest score."""
    order = sorted((v, n) for n, v in enumerate(values) if v is not None)
    out: list[int | None] = [None] * len(values)
    for rank, (_, n) in enumerate(reversed(order), 1):
        out[n] = rank
    return out


def candidate_auc(rows: list[dict], key: str) -> float | None:
    """AUC of one mode on the candidates whose true label is known (None if one class only)."""
    known = [(r[key], r["label"]) for r in rows if r["label"] is not None and r[key] is not None]
    pos = [s for s, y in known if y == 1]
    neg = [s for s, y in known if y == 0]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


# --------------------------------------------------------------------------- prompts

def prompt_html(state: AppState, profile: Profile, item: str, with_cf: bool) -> str:
    """The exact prompt text, the two CF slots highlighted."""
    title = state.dataset.title
    text = prompt_text([title(i) for i in profile.items], profile.labels, title(item), with_cf)
    out = html.escape(text)
    out = out.replace(html.escape(USER_SLOT), f'<span class="slot slot-user" title="overwritten by the '
                      f'projected user CF vector">{html.escape(USER_SLOT)}</span>')
    out = out.replace(html.escape(ITEM_SLOT), f'<span class="slot slot-item" title="overwritten by the '
                      f'projected item CF vector">{html.escape(ITEM_SLOT)}</span>')
    target = html.escape(f'"{title(item)}"')
    out = out.replace(f"titled {target}", f'titled <span class="target">{target}</span>', 1)
    return f'<pre class="prompt">{out}</pre>'


# ---------------------------------------------------------------------- the answer

def answer_logits(state: AppState, profile: Profile, item: str, with_cf: bool, cf: str | None = None) -> dict:
    """One prompt through the LLM, as the engine does it, keeping the whole answer distribution:
    logits of " Yes" and " No" at the answer position and the top next tokens (cached)."""
    cf = state.pipeline(cf).cf_name
    key = ("answer",) + profile.key() + (item, bool(with_cf), cf if with_cf else None)
    return state.cache("answers", 128).get_or(key, lambda: _answer_logits(state, profile, item, with_cf, cf))


@torch.no_grad()
def _answer_logits(state: AppState, profile: Profile, item: str, with_cf: bool, cf: str | None = None) -> dict:
    pipe = state.pipeline(cf)
    model, title = pipe.model, state.dataset.title
    prompt = model.builder.build([title(i) for i in profile.items], profile.labels, title(item), with_cf)
    rows, cols, vecs = [], [], []
    if with_cf:
        uvec, _ = user_vector(state, profile, cf, for_tokens=True)
        rows += [0, 0]
        cols += [prompt.user_slot, len(prompt.prefix) + prompt.item_slot]
        vecs += [uvec, pipe.cf.item_vectors([item])[0]]
    ids = torch.tensor([prompt.ids])
    use_lora = True if with_cf else pipe.has_lora
    with state.model_lock, model.adapter(use_lora), model.autocast():
        embeds = model.embed(ids, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                             torch.stack(vecs) if vecs else None)
        out = model.llm(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False,
                        logits_to_keep=1)
    logits = out.logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    top = torch.topk(probs, 5)
    decode = model.tokenizer.decode
    yes, no = float(logits[model.yes_id]), float(logits[model.no_id])
    return {"prompt": prompt, "yes": yes, "no": no, "diff": yes - no,
            "score": float(torch.sigmoid(torch.tensor(yes - no))),
            "p_yes": float(probs[model.yes_id]), "p_no": float(probs[model.no_id]),
            "top": [(decode([int(t)]), float(p)) for p, t in zip(top.values, top.indices)]}
