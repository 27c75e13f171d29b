"""Reading what a user or an API client typed: ids, seeds, CF-model names and the history table.

Every reader returns a clean value or raises :class:`InputError` with a message that says what
to type instead; rejected text is echoed back cut short (``echo``), never in full. Nothing here
scores, draws or holds state: the catalogue (``AppState``) is only read to say which ids exist.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..config import MAX_CANDIDATES
from ..errors import InputError
from .state import AppState

__all__ = ["HISTORY_COLUMNS", "ID_DIGITS", "SEED_MAX", "echo", "is_id", "parse_cf", "parse_history",
           "parse_item_ids", "parse_seed", "parse_user_id", "parse_user_ids", "trim_history"]

# An id is 1 to 7 ASCII digits. str.isdigit() would take '²' or '①' (then int() fails) and
# read the full-width '１３' as 13; 7 digits leave room for any real catalogue.
ID_DIGITS = 7
ID_PATTERN = re.compile(rf"[0-9]{{1,{ID_DIGITS}}}", re.ASCII)
SEED_MAX = 2**32 - 1  # numpy's SeedSequence takes any non-negative int; the UI offers 0..2^32-1

# The editable history table's columns (``core.history_frame`` writes it, ``parse_history`` reads it).
HISTORY_COLUMNS = ["id", "title", "year", "genres", "liked", "date"]


def echo(value: str, limit: int = 40) -> str:
    """repr() of user input, cut so that an error never echoes a huge string back."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} characters)"


def is_id(token: str) -> bool:
    """Whether ``token`` reads as an id: 1 to ``ID_DIGITS`` ASCII digits."""
    return ID_PATTERN.fullmatch(token) is not None


def parse_seed(value, field_name: str = "seed") -> int:
    """A random seed from the UI or an API: a whole number from 0 to 2^32 - 1 (empty = 0)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value.strip(), re.ASCII):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        shown = echo(value) if isinstance(value, str) else echo(repr(value))
        raise InputError(f"{field_name} {shown} is not a whole number from 0 to {SEED_MAX}")
    return value


def _id_tokens(text_or_list, field_name: str) -> list[str]:
    """The non-empty, stripped tokens of comma- (or semicolon-) separated text or of a list."""
    if text_or_list is None:
        text_or_list = ""
    if isinstance(text_or_list, (int, float)):  # a bare number through the API: treat it as its text
        text_or_list = str(text_or_list)
    if isinstance(text_or_list, str):
        tokens = [t.strip() for t in text_or_list.replace(";", ",").split(",")]
        return [t for t in tokens if t]
    if isinstance(text_or_list, (list, tuple)):
        return [str(t).strip() for t in text_or_list if str(t).strip()]
    raise InputError(f"{field_name} must be text like \"1, 50, 100\", not {type(text_or_list).__name__}")


def parse_item_ids(state: AppState, text_or_list, field_name: str = "item_ids", ui: str | None = None) -> list[str]:
    """Validate candidate ids: numeric, known, unique, 1..MAX_CANDIDATES.

    ``ui``: the thing's name on screen (e.g. "candidate movie"): the messages then speak of
    picking movies from a list, as the app's dropdowns have the user do, instead of the API's
    comma-separated ids (whose wording /compare keeps)."""
    tokens = _id_tokens(text_or_list, field_name)
    if not tokens:
        raise InputError(f"The {ui} list is empty: pick at least one {ui} (type in the box to search)."
                         if ui else f"{field_name} is empty: give at least one item id, e.g. \"1, 50, 100\"")
    bad = [t for t in tokens if not is_id(t)]
    if bad:
        raise InputError(f"{', '.join(echo(b) for b in bad[:5])} is not a movie of this catalogue: pick each "
                         f"{ui} from the list." if ui else
                         f"{field_name}: {', '.join(echo(b) for b in bad[:5])} is not a numeric item id "
                         f"(use comma-separated numbers of 1 to {ID_DIGITS} digits 0-9, like \"1, 50, 100\")")
    tokens = [str(int(t)) for t in tokens]
    seen, dup = set(), []
    for t in tokens:
        if t in seen and t not in dup:
            dup.append(t)
        seen.add(t)
    if dup:
        raise InputError(f"{', '.join(state.dataset.title(t) for t in dup[:5])}: picked twice; pick each {ui} once."
                         if ui else f"{field_name}: duplicate item id(s) {', '.join(dup[:5])}; list each candidate once")
    if len(tokens) > MAX_CANDIDATES:
        raise InputError(f"{len(tokens)} {ui}s picked: at most {MAX_CANDIDATES} at a time." if ui else
                         f"{field_name}: {len(tokens)} candidates given; at most {MAX_CANDIDATES} per call")
    catalog = state.catalog
    unknown = [t for t in tokens if t not in catalog.item_title]
    if unknown:
        raise InputError(f"{', '.join(unknown[:5])} is not a movie of this catalogue: pick each {ui} from the list."
                         if ui else f"{field_name}: unknown item id(s) {', '.join(unknown[:5])} "
                         f"(this dataset has ids {catalog.item_ids[0]}..{catalog.item_ids[-1]})")
    return tokens


def parse_user_id(state: AppState, text) -> str:
    """A known user id with a pre-test history, from the API's text (or a bare number)."""
    if isinstance(text, bool) or not isinstance(text, (str, int, type(None))):
        raise InputError(f"user_id must be one id as text such as \"1\", not a {type(text).__name__}")
    user = str(text if text is not None else "").strip()
    if not user:
        raise InputError("user_id is empty: give a user id such as \"1\"")
    if not is_id(user):
        raise InputError(f"user_id {echo(user)} is not a numeric user id (1 to {ID_DIGITS} digits 0-9, "
                         "e.g. \"1\")")
    user = str(int(user))
    users = state.catalog.users
    if user not in users:
        raise InputError(f"unknown user_id {user} (this dataset has {len(users)} users)")
    if users[user].n_pretest == 0:
        raise InputError(f"user {user} has no interactions before the test period, so there is no "
                         "history to put in the prompt")
    return user


def parse_user_ids(state: AppState, text_or_list, low: int, high: int, field_name: str = "user_ids") -> list[str]:
    """``low`` to ``high`` distinct known user ids with a pre-test history, comma-separated (or a list);
    each read as ``parse_user_id`` reads one."""
    tokens = _id_tokens(text_or_list, field_name)
    if not low <= len(tokens) <= high:
        raise InputError(f"{field_name}: give {low} to {high} comma-separated user ids such as \"94, 738\" "
                         f"(got {len(tokens)})")
    users = []
    for token in tokens:
        try:
            user = parse_user_id(state, token)
        except InputError as err:  # name the field: the message of one id says "user_id"
            raise InputError(f"{field_name}: {str(err).removeprefix('user_id ')}") from None
        if user in users:
            raise InputError(f"{field_name}: user {user} is listed twice; list each user once")
        users.append(user)
    return users


def parse_cf(state: AppState, cf) -> str | None:
    """A CF backend name from the UI or the API; None/empty = the app's default."""
    if cf is None or (isinstance(cf, str) and not cf.strip()):
        return None
    if not isinstance(cf, str):
        raise InputError(f"cf_model must be a name such as \"mf\", not {type(cf).__name__}")
    name = cf.strip().lower()
    backends = state.hub.backends()
    if name not in backends:
        if not backends:  # the checkpoints were refused: say why, not "this app has: " and nothing
            raise InputError(f"cf_model {echo(cf)} is not available: {state.hub.notice or 'no CF model is loaded'}")
        raise InputError(f"cf_model {echo(cf)} is not available; this app has: {', '.join(backends)}")
    return name


# ----------------------------------------------------------------- the history table

def _truthy(value) -> bool:
    """A 'liked' cell as the browser may send it: a bool, or text such as "true" or "✓"."""
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
