"""Same films, different users: how personal a ranking is (issue 26, "the app shows personalization").

``Pipeline.rank_for_users`` scores one fixed set of candidates for several real users, each as the
app prompts them, three ways: the text-only prompt, the CoLLM prompt (CF tokens) and the CF model
alone. This module holds what it returns (:class:`UserRanking`, :class:`UsersRanking`) and how alike
the users' rankings are (:func:`agreement`): the mean Spearman ρ over every pair of users (1 = the
same order for everyone, lower = more personal) and the mean number of films two users share in
their top k. Plain numbers of plain lists: no model here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats

# The three ways a candidate is scored, in the order the app shows them.
METHODS = ("cf", "text", "alone")


def rank_order(scores: Sequence[float]) -> list[int]:
    """1 = the highest score. Ties keep the candidates' given order, so a rank and a top k agree."""
    order = sorted(range(len(scores)), key=lambda n: (-scores[n], n))
    ranks = [0] * len(scores)
    for rank, n in enumerate(order, 1):
        ranks[n] = rank
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (scipy; ties get their mean rank); nan when either side is constant (undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:  # scipy would warn and give nan
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class Agreement:
    """How alike several users' rankings of the same candidates are, under one method."""

    mean_rho: float  # mean pairwise Spearman ρ (nan when no pair has one): lower = more personal
    rhos: tuple[float, ...]  # each pair's ρ, pairs in itertools.combinations order
    mean_overlap: float  # mean number of films two users share in their top k
    k: int

    @property
    def overlap_share(self) -> float:
        """``mean_overlap`` as a share of k (1 = every pair has the same top k)."""
        return self.mean_overlap / self.k if self.k else float("nan")


def agreement(scores: Sequence[Sequence[float]], k: int = 5) -> Agreement:
    """Pairwise agreement of the users' scores (one list per user, candidates in the same order)."""
    k = min(k, min((len(s) for s in scores), default=0))
    tops = [set(n for n, r in enumerate(rank_order(s)) if r <= k) for s in scores]
    pairs = list(combinations(range(len(scores)), 2))
    rhos = tuple(spearman(scores[i], scores[j]) for i, j in pairs)
    defined = [r for r in rhos if not np.isnan(r)]
    return Agreement(mean_rho=float(np.mean(defined)) if defined else float("nan"), rhos=rhos,
                     mean_overlap=float(np.mean([len(tops[i] & tops[j]) for i, j in pairs])) if pairs else float("nan"),
                     k=k)


@dataclass(frozen=True)
class UserRanking:
    """One user's scores of the candidates (in the order given), each method's P(Yes) or probability."""

    user: str
    history: tuple[str, ...]  # the items of the prompt's history (oldest first)
    labels: tuple[int, ...]  # 1 liked, 0 disliked
    trained_vector: bool  # the CF user vector is the trained one (else made from the history)
    text: tuple[float, ...]  # the text-only prompt (with the LoRA when loaded, else zero-shot)
    cf: tuple[float, ...] | None  # the CoLLM prompt, with the CF tokens; None without a projector
    alone: tuple[float, ...] | None  # the CF model alone (its own fold-in strength); None without one

    def scores(self, method: str) -> tuple[float, ...] | None:
        """The scores of one of ``METHODS``."""
        return getattr(self, method)

    def ranks(self, method: str) -> list[int] | None:
        scores = self.scores(method)
        return None if scores is None else rank_order(scores)


@dataclass(frozen=True)
class UsersRanking:
    """``Pipeline.rank_for_users``: the same candidates ranked for several users, three ways."""

    candidates: tuple[str, ...]
    users: tuple[UserRanking, ...]
    text_mode: str  # "text_only" or "zero_shot": which model the text scores come from
    cf_name: str | None  # the CF backend behind "cf" and "alone"; None without a CF model
    agreement: dict[str, Agreement]  # by method, for the methods every user has scores for

    @property
    def methods(self) -> list[str]:
        """The methods scored here, in ``METHODS`` order."""
        return [m for m in METHODS if m in self.agreement]


def users_ranking(candidates: Sequence[str], users: Sequence[UserRanking], text_mode: str,
                  cf_name: str | None, k: int = 5) -> UsersRanking:
    """The rankings with each method's agreement across the users."""
    scored = [m for m in METHODS if users and all(u.scores(m) is not None for u in users)]
    return UsersRanking(candidates=tuple(candidates), users=tuple(users), text_mode=text_mode, cf_name=cf_name,
                        agreement={m: agreement([u.scores(m) for u in users], k) for m in scored})
