"""Fold-in maths: fit one side's vector against the frozen other side.

Used (through :class:`~collm_demo.cf.base.CFModel`, which owns the policy) for (a) users unseen
in training, whose history is known at prediction time; (b) a history composed in the app;
(c) the app's cold-start simulator, which refits an item from k interactions with the user
vectors frozen.

It is L2-regularised logistic regression towards the model's no-information vector
(``prior``), solved by a fixed number of full-batch gradient steps, batched over many
problems at once, deterministic.

How strongly a user is pulled towards the prior matters: ten interactions cannot pin down a
64-d taste, and a weak pull lets the fit chase noise. The strength for users is tuned on the
valid split when a CF model is trained (``tune_l2``) and stored in the model's meta as
``foldin_l2``; models without it (older files, imported vectors) use ``DEFAULT_L2``.

Tensors and numbers only: nothing here knows a CF model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import InputError

DEFAULT_L2 = 1.0
L2_GRID = (0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)  # searched on valid rows by ``tune_l2``


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
        raise InputError(f"a fold-in strength must be a positive number, got {value!r}")
    return l2


def tune_l2(auc_of_l2: Callable[[float], float], grid: Sequence[float] = L2_GRID) -> tuple[float, dict[float, float]]:
    """The strength of ``grid`` with the best ``auc_of_l2`` (rounded to 4 digits, so that noise
    does not decide); ties go to the stronger pull. Returns (best l2, {l2: rounded AUC})."""
    aucs = {float(l2): round(float(auc_of_l2(l2)), 4) for l2 in grid}
    best = max(sorted(aucs, reverse=True), key=lambda l2: aucs[l2])
    return best, aucs
