"""Matrix factorisation with biases, trained with BCE on the train split.

score(u, i) = p_u · q_i + b_u + b_i + g

Exported to CoLLM as augmented vectors so that the interface's plain dot product is
exactly the MF logit:  user = [p_u, b_u, 1],  item = [q_i, 1, b_i]  (dim = d + 2).
No-information vectors: user [0…0, 0, 1] (scores an item by its bias = popularity),
item [0…0, 1, 0] (scores by the user's bias alone).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from .base import CFModel


class MatrixFactorization(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.1)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return ((self.user(users) * self.item(items)).sum(-1) + self.user_bias(users).squeeze(-1)
                + self.item_bias(items).squeeze(-1) + self.global_bias)

    def export(self, user_ids: list[str], item_ids: list[str], meta: dict) -> CFModel:
        with torch.no_grad():
            d = self.user.weight.shape[1]
            ones_u = torch.ones(len(user_ids), 1)
            ones_i = torch.ones(len(item_ids), 1)
            users = torch.cat([self.user.weight, self.user_bias.weight, ones_u], 1)
            items = torch.cat([self.item.weight, ones_i, self.item_bias.weight], 1)
            default_user = torch.cat([torch.zeros(d), torch.tensor([0.0, 1.0])])
            default_item = torch.cat([torch.zeros(d), torch.tensor([1.0, 0.0])])
            model = CFModel(user_ids, item_ids, users, items, float(self.global_bias),
                            default_user, default_item, meta=meta)
        model.kind = "mf"
        return model


def cf_auc(cf: CFModel, rows: pd.DataFrame) -> float:
    """AUC of the CF model alone on protocol rows (unknown users folded in from history)."""
    from ..foldin import user_vectors_for_rows

    users = user_vectors_for_rows(cf, rows["user"].tolist(), rows["history_items"].tolist(),
                                  rows["history_labels"].tolist())
    items = cf.item_vectors(rows["item"].tolist())
    return float(roc_auc_score(rows["label"].to_numpy(), cf.score_vectors(users, items).numpy()))


def train_mf(train: pd.DataFrame, valid_rows: pd.DataFrame, dim: int = 64, epochs: int = 40,
             lr: float = 1e-2, weight_decay: float = 1e-4, patience: int = 3, seed: int = 0,
             batch_size: int = 1024, log=print) -> tuple[CFModel, dict]:
    """Fit MF on train interactions; keep the epoch with the best valid AUC."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    user_ids = sorted(train["user"].unique().tolist())
    item_ids = sorted(train["item"].unique().tolist())
    u_index = {u: n for n, u in enumerate(user_ids)}
    i_index = {i: n for n, i in enumerate(item_ids)}
    users = torch.tensor(train["user"].map(u_index).to_numpy())
    items = torch.tensor(train["item"].map(i_index).to_numpy())
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    model = MatrixFactorization(len(user_ids), len(item_ids), dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    meta = {"kind": "mf", "dim": dim, "train_rows": int(len(train))}
    best = (-1.0, None, 0)
    history = []
    start = time.time()
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for chunk in order.split(batch_size):
            u, i, y = users[chunk], items[chunk], labels[chunk]
            logits = model(u, i)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            # L2 on the rows touched by this batch (the usual MF regulariser).
            reg = (model.user(u).pow(2).sum(-1) + model.item(i).pow(2).sum(-1)).mean()
            optimiser.zero_grad()
            (loss + weight_decay * reg).backward()
            optimiser.step()
            total += float(loss.detach()) * len(chunk)
        auc = cf_auc(model.export(user_ids, item_ids, meta), valid_rows)
        history.append({"epoch": epoch, "train_loss": round(total / len(labels), 4), "valid_auc": round(auc, 4)})
        log(f"[mf] epoch {epoch}: train loss {total / len(labels):.4f}  valid AUC {auc:.4f}")
        if auc > best[0]:
            best = (auc, copy.deepcopy(model.state_dict()), epoch)
        elif epoch - best[2] >= patience:
            break
    model.load_state_dict(best[1])
    info = {"best_epoch": best[2], "valid_auc": round(best[0], 4), "history": history,
            "wall_s": round(time.time() - start, 1)}
    return model.export(user_ids, item_ids, meta | {"best_epoch": best[2]}), info
