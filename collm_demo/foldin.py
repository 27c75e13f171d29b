"""Fold-in: fit one side's vector against the frozen other side.

Used for (a) users unseen in training, whose history is known at prediction time;
(b) a history composed in the app; (c) the app's cold-start simulator, which refits an
item from k interactions with the user vectors frozen.

It is L2-regularised logistic regression towards the model's no-information vector
(``prior``), solved by a fixed number of full-batch gradient steps, batched over many
problems at once, deterministic.

How strongly a user is pulled towards the prior matters: ten interactions cannot pin down a
64-d taste, and a weak pull lets the fit chase noise. The strength for users is tuned on the
valid split when a CF model is trained (``tune_user_l2``) and stored in the model's meta as
``foldin_l2``; models without it (older files, imported vectors) use ``DEFAULT_L2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.metrics import roc_auc_score

from .cf.base import CFModel

DEFAULT_L2 = 1.0
L2_GRID = (0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)  # searched on valid rows by ``tune_user_l2``


def fold_in(others: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, prior: torch.Tensor,
            global_bias: float, l2: float = 1.0, steps: int = 100, lr: float = 0.5) -> torch.Tensor:
    """Fit B vectors x_b minimising  sum_j mask*BCE(x_b·o_bj + g, y_bj) + l2/2 ||x_b - prior||².

    others (B, K, D) frozen vectors; labels (B, K) in {0, 1}; mask (B, K) which are real.
    Returns (B, D). With no real interaction the answer is exactly ``prior``.
    """
    others, labels, mask = others.float(), labels.float(), mask.float()
    x = prior.float().expand(others.shape[0], -1).clone()
    # Step size scaled by a curvature bound keeps plain gradient descent stable.
    curvature = 0.25 * (others.pow(2).sum(-1) * mask).sum(-1, keepdim=True) + l2
    for _ in range(steps):
        logits = torch.einsum("bkd,bd->bk", others, x) + global_bias
        residual = (torch.sigmoid(logits) - labels) * mask
        grad = torch.einsum("bk,bkd->bd", residual, others) + l2 * (x - prior)
        x = x - lr * grad / curvature
    return x


def parse_l2(value) -> float:
    """A fold-in strength from text (command line, file metadata): a positive finite number."""
    try:
        l2 = float(value)
    except (TypeError, ValueError):
        l2 = float("nan")
    if not 0 < l2 < float("inf"):
        raise ValueError(f"a fold-in strength must be a positive number, got {value!r}")
    return l2


def user_l2(cf: CFModel) -> float:
    """The fold-in strength for this model's users: tuned on valid at training time, else the default."""
    return float(cf.meta.get("foldin_l2", DEFAULT_L2))


def user_vectors_for_rows(cf: CFModel, users: Sequence[str],
                          histories: Sequence[Sequence[str]],
                          history_labels: Sequence[Sequence[int]], l2: float | None = None) -> torch.Tensor:
    """A user's CF vector for each row: the trained one when the user was in training,
    else folded in from the row's own history (strictly earlier interactions).
    ``l2`` defaults to the model's own tuned strength (``user_l2``)."""
    l2 = user_l2(cf) if l2 is None else l2
    out = cf.user_vectors(users)
    unknown = [n for n, u in enumerate(users) if not cf.has_user(u)]
    if unknown:
        k = max(1, max(len(histories[n]) for n in unknown))
        others = torch.zeros(len(unknown), k, cf.dim)
        labels = torch.zeros(len(unknown), k)
        mask = torch.zeros(len(unknown), k)
        for row, n in enumerate(unknown):
            items = [str(i) for i in histories[n]]
            if not items:
                continue
            others[row, : len(items)] = cf.item_vectors(items)
            labels[row, : len(items)] = torch.tensor([float(v) for v in history_labels[n]])
            mask[row, : len(items)] = torch.tensor([1.0 if cf.has_item(i) else 0.0 for i in items])
        out[unknown] = fold_in(others, labels, mask, cf.default_user, cf.global_bias, l2=l2)
    return out


def fold_in_user(cf: CFModel, items: Sequence[str], labels: Sequence[int], l2: float | None = None) -> torch.Tensor:
    """One composed user (the app's 'your own history') → a CF vector (dim,)."""
    return user_vectors_for_rows(cf, ["\x00composed"], [list(items)], [list(labels)], l2=l2)[0]


def fold_in_item(cf: CFModel, users: Sequence[str], labels: Sequence[int], l2: float = DEFAULT_L2) -> torch.Tensor:
    """Refit one item from k (user, label) interactions with the user vectors frozen."""
    if not len(users):
        return cf.default_item.clone()
    others = cf.user_vectors(list(users)).unsqueeze(0)
    mask = torch.tensor([[1.0 if cf.has_user(u) else 0.0 for u in users]])
    y = torch.tensor([[float(v) for v in labels]])
    return fold_in(others, y, mask, cf.default_item, cf.global_bias, l2=l2)[0]


def tune_user_l2(cf: CFModel, rows, grid: Sequence[float] = L2_GRID) -> tuple[float, dict[float, float]]:
    """Pick the user fold-in strength with the best AUC of the CF model alone on ``rows``
    (valid rows: most of their users are unseen in training, so fold-in decides their score).
    Returns (best l2, {l2: AUC}); ties go to the stronger pull."""
    labels = rows["label"].to_numpy()
    items = cf.item_vectors(rows["item"].tolist())
    aucs = {}
    for l2 in grid:
        users = user_vectors_for_rows(cf, rows["user"].tolist(), rows["history_items"].tolist(),
                                      rows["history_labels"].tolist(), l2=l2)
        aucs[float(l2)] = round(float(roc_auc_score(labels, cf.score_vectors(users, items).numpy())), 4)
    best = max(sorted(aucs, reverse=True), key=lambda l2: aucs[l2])
    return best, aucs
