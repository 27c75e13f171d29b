"""The values the tabs pass to each other: who the user is (:class:`Profile`) and what was scored
(:class:`ScoredResult`, one :class:`ScoredRow` per candidate). Frozen and hashable, so they can key
caches and sit in ``gr.State``; no model, no state."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import stats


class ProfileKind(StrEnum):
    """Where a profile's history came from. A StrEnum: each kind equals, hashes and prints as its
    old string ("user" ...), so cache keys and anything already written with it read the same."""

    USER = "user"  # a real user's unedited history: the trained CF vector and the true answers apply
    EDITED = "edited"  # a real user's history edited in the app: folded in, true answers hidden
    COMPOSED = "composed"  # a history composed from scratch: folded in, no answers


@dataclass(frozen=True)
class Profile:
    """A history (items + liked/disliked) and where it came from."""

    kind: ProfileKind  # a plain string ("user", "edited", "composed") is read as its kind
    user: str | None
    items: tuple[str, ...]
    labels: tuple[int, ...]
    dates: tuple[str, ...] = field(default=(), compare=False)  # shown only: not part of the identity

    def __post_init__(self):
        object.__setattr__(self, "kind", ProfileKind(self.kind))
        object.__setattr__(self, "items", tuple(str(i) for i in self.items))
        object.__setattr__(self, "labels", tuple(int(y) for y in self.labels))
        object.__setattr__(self, "dates", tuple(self.dates))

    def describe(self) -> str:
        if self.kind is ProfileKind.USER:
            return f"user {self.user}"
        if self.kind is ProfileKind.EDITED:
            return f"user {self.user} (edited history)"
        return "your composed user"


@dataclass(frozen=True)
class ScoredRow:
    """One candidate scored in both modes."""

    item: str
    title: str
    year: int | None
    genres: str
    n_train: int  # the item's training interactions
    warm: bool
    score_text: float  # P(Yes) from the text-only prompt
    score_cf: float | None  # P(Yes) with the CF tokens (None without a projector)
    label: int | None  # the user's true answer, when known (test items of an unedited real user)
    in_history: bool

    @property
    def delta(self) -> float | None:
        return None if self.score_cf is None else self.score_cf - self.score_text

    def score(self, with_cf: bool) -> float | None:
        return self.score_cf if with_cf else self.score_text

    def to_api(self) -> dict:
        """One object of the /compare answer."""
        return {"id": self.item, "title": self.title, "warm": bool(self.warm),
                "score_text": round(self.score_text, 6),
                "score_cf": None if self.score_cf is None else round(self.score_cf, 6),
                "delta": None if self.delta is None else round(self.delta, 6)}


@dataclass(frozen=True)
class ScoredResult:
    """K candidates scored for one profile in both modes, with one CF backend."""

    profile: Profile
    rows: tuple[ScoredRow, ...]
    vector_source: str  # where the CF user vector came from, in words
    cf: str  # the CF backend's name
    cf_label: str  # 'MF', 'LightGCN', ...
    text_mode: str  # 'text-only (LoRA)' or 'zero-shot LLM (no LoRA)'
    cf_mode: str | None  # 'CoLLM (MF tokens)'; None without a projector
    user_warm: bool
    user_n_train: int
    seconds: float
    warm_min: int = 3  # the protocol's warm threshold (training interactions)

    @property
    def has_cf(self) -> bool:
        return self.cf_mode is not None

    def ranks_by_cf(self, inject: bool) -> bool:
        """Whether the CF score ranks (injection asked for and possible)."""
        return inject and self.has_cf

    @property
    def items(self) -> list[str]:
        return [r.item for r in self.rows]

    def row(self, item: str) -> ScoredRow | None:
        return next((r for r in self.rows if r.item == item), None)

    def to_api(self) -> list[dict]:
        """The /compare answer: one object per candidate, in the order given."""
        return [r.to_api() for r in self.rows]


def ranks(values: list[float | None]) -> list[int | None]:
    """1 = highest score."""
    order = sorted((v, n) for n, v in enumerate(values) if v is not None)
    out: list[int | None] = [None] * len(values)
    for rank, (_, n) in enumerate(reversed(order), 1):
        out[n] = rank
    return out


def candidate_auc(rows, with_cf: bool) -> float | None:
    """AUC of one mode on the candidates whose true label is known (None if one class only).

    The AUC is the Mann-Whitney U of the liked against the disliked scores over their number of
    pairs (ties count one half): scipy computes U exactly, so the value is the exact fraction.
    sklearn's ``roc_auc_score`` sums trapezoids and differs in the last bit for about a quarter
    of small candidate lists, which can flip the shown 2-decimal AUC at an exact half (0.125)."""
    known = [(r.score(with_cf), r.label) for r in rows if r.label is not None and r.score(with_cf) is not None]
    pos = [s for s, y in known if y == 1]
    neg = [s for s, y in known if y == 0]
    if not pos or not neg:
        return None
    return float(stats.mannwhitneyu(pos, neg, method="asymptotic").statistic) / (len(pos) * len(neg))


def focus_choices(result: ScoredResult | None, inject: bool = True) -> tuple[list[tuple[str, str]], str | None]:
    """Dropdown choices (candidates, best first in the active mode) and the default pick."""
    if not result:
        return [], None
    with_cf = result.ranks_by_cf(inject)
    rows = sorted(result.rows, key=lambda r: -r.score(with_cf))
    return [(f"{r.title} · #{r.item}", r.item) for r in rows], rows[0].item


def spearman(a, b) -> float:
    """Spearman's rank correlation (scipy; ties get their mean rank); nan when either side is constant."""
    return _correlation(stats.spearmanr, a, b)


def kendall(a, b) -> float:
    """Kendall's tau-b (scipy); nan when either side is constant."""
    return _correlation(stats.kendalltau, a, b)


def _correlation(method, a, b) -> float:
    a, b = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:  # undefined: scipy would warn and give nan
        return float("nan")
    return float(method(a, b).statistic)


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))


@dataclass(frozen=True)
class ProfileComparison:
    """The same candidates scored for two composed profiles (the Recommend tab's side-by-side)."""

    a: ScoredResult
    b: ScoredResult
    rho_cf: float | None  # Spearman between the two profiles' CoLLM scores (None without a projector)
    tau_cf: float | None  # Kendall's tau-b of the same
    rho_text: float  # Spearman between their text-only scores
    cos_vectors: float | None  # cosine of the two folded-in CF user vectors
    cos_tokens: float | None  # cosine of the two user tokens (the vectors after the projector)
    typical_cos_tokens: float | None  # median cosine between the user tokens of two real users
    pop_rho: tuple[float, float] | None  # each profile's CoLLM scores vs the items' training counts
    sentence: str
    # The CF model alone on the same candidates (its own fold-in of each profile), the yardstick of
    # issue 26: the two CoLLM rankings should be less alike than these two.
    rho_alone: float | None = None  # Spearman between the two profiles' CF-alone scores
    top_alone: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # each profile's top films by the CF model alone

    def top(self, which: str, k: int = 5) -> list[ScoredRow]:
        result = self.a if which == "a" else self.b
        with_cf = result.has_cf
        return sorted(result.rows, key=lambda r: -r.score(with_cf))[:k]
