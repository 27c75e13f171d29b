"""The one early-stopping rule every trainer of the project shares (CF models and both LLM stages).

    stopper = EarlyStopping(patience=3, snapshot=lambda: copy.deepcopy(model.state_dict()),
                            restore=model.load_state_dict)
    for epoch in ...:
        ...
        if stopper.observe(epoch, valid_auc):
            break
    stopper.restore_best()

A check that improves on the best metric so far takes a snapshot; ``patience`` checks in a row
without improvement stop training; ``restore_best`` puts the best snapshot back. "Patience" counts
checks, so a trainer that checks once per epoch and one that checks every N optimiser steps use
the same rule.

``fit_epochs`` is the epoch loop around it that the CF trainers share (MF, LightGCN, SASRec).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


class EarlyStopping:
    def __init__(self, patience: int, snapshot: Callable[[], Any], restore: Callable[[Any], Any],
                 best_metric: float = float("-inf"), best_step: int = 0):
        self.patience = patience
        self._snapshot, self._restore = snapshot, restore
        self.best_metric, self.best_step = best_metric, best_step
        # A starting point given by the caller (e.g. the metric before training) is a snapshot too.
        self._best_state = snapshot() if best_metric > float("-inf") else None
        self.bad_checks = 0

    def observe(self, step: int, metric: float) -> bool:
        """Record one check; True when training should stop."""
        if metric > self.best_metric:
            self.best_metric, self.best_step = metric, step
            self._best_state = self._snapshot()
            self.bad_checks = 0
            return False
        self.bad_checks += 1
        return self.bad_checks >= self.patience

    def resume(self, best_metric: float, best_step: int, bad_checks: int, best_state: Any) -> None:
        """Continue a rule saved mid-run (``resume.py``): its best so far and its count of bad checks."""
        self.best_metric, self.best_step, self.bad_checks, self._best_state = best_metric, best_step, bad_checks, best_state

    @property
    def best_state(self) -> Any:
        return self._best_state

    def restore_best(self) -> None:
        if self._best_state is not None:
            self._restore(self._best_state)


def fit_epochs(model: torch.nn.Module, optimiser: torch.optim.Optimizer, n_rows: int,
               losses: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], evaluate: Callable[[], float],
               epochs: int, batch_size: int, patience: int, seed: int, name: str, log=print) -> dict:
    """Epochs of minibatch training on ``n_rows`` rows with early stopping on ``evaluate()`` (the
    model's valid AUC, checked once per epoch); the best epoch's parameters are put back.

    ``losses(rows)`` gets a minibatch's row indices (a fresh seeded permutation each epoch) and
    returns (the loss reported in the log, the objective that is minimised). The model is in
    train mode for the minibatches and in eval mode for ``evaluate`` and afterwards.
    Returns {"best_epoch", "valid_auc" (best, 4 digits), "history": [{epoch, train_loss, valid_auc}]}.
    """
    rng = np.random.default_rng(seed)
    stopper = EarlyStopping(patience, snapshot=lambda: copy.deepcopy(model.state_dict()),
                            restore=model.load_state_dict)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for chunk in torch.from_numpy(rng.permutation(n_rows)).split(batch_size):
            loss, objective = losses(chunk)
            optimiser.zero_grad()
            objective.backward()
            optimiser.step()
            total += float(loss.detach()) * len(chunk)
        model.eval()
        auc = evaluate()
        history.append({"epoch": epoch, "train_loss": round(total / n_rows, 4), "valid_auc": round(auc, 4)})
        log(f"[{name}] epoch {epoch}: train loss {total / n_rows:.4f}  valid AUC {auc:.4f}")
        if stopper.observe(epoch, auc):
            break
    stopper.restore_best()
    model.eval()
    return {"best_epoch": stopper.best_step, "valid_auc": round(stopper.best_metric, 4), "history": history}


def cf_stage_args(cfg, log) -> dict:
    """The keyword arguments every CF trainer takes from a ``TrainConfig`` (the `cf` stage)."""
    return dict(dim=cfg.cf_dim, epochs=cfg.cf_epochs, lr=cfg.cf_lr, weight_decay=cfg.cf_weight_decay,
                patience=cfg.cf_patience, seed=cfg.seed, log=log)
