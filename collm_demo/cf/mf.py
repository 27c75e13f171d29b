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

    def l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users).pow(2).sum(-1) + self.item(items).pow(2).sum(-1)).mean()

    def export(self, user_ids: list[str], item_ids: list[str], meta: dict) -> CFModel:
        with torch.no_grad():
            return export_with_biases(self.user.weight, self.item.weight, self.user_bias.weight,
                                      self.item_bias.weight, float(self.global_bias), user_ids,
                                      item_ids, meta)


def export_with_biases(user_emb: torch.Tensor, item_emb: torch.Tensor, user_bias: torch.Tensor,
                       item_bias: torch.Tensor, global_bias: float, user_ids: list[str],
                       item_ids: list[str], meta: dict) -> CFModel:
    """[p_u, b_u, 1] · [q_i, 1, b_i] = p_u·q_i + b_u + b_i: biases folded into the vectors."""
    d = user_emb.shape[1]
    users = torch.cat([user_emb, user_bias, torch.ones(len(user_ids), 1)], 1)
    items = torch.cat([item_emb, torch.ones(len(item_ids), 1), item_bias], 1)
    default_user = torch.cat([torch.zeros(d), torch.tensor([0.0, 1.0])])
    default_item = torch.cat([torch.zeros(d), torch.tensor([1.0, 0.0])])
    model = CFModel(user_ids, item_ids, users, items, global_bias, default_user, default_item, meta=meta)
    model.kind = meta.get("kind", "vectors")
    return model


def cf_auc(cf: CFModel, rows: pd.DataFrame) -> float:
    """AUC of the CF model alone on protocol rows (unknown users folded in from history)."""
    users = cf.row_user_vectors(rows["user"].tolist(), rows["history_items"].tolist(),
                                rows["history_labels"].tolist())
    items = cf.item_vectors(rows["item"].tolist())
    return float(roc_auc_score(rows["label"].to_numpy(), cf.score_vectors(users, items).numpy()))


class IdMaps:
    """Contiguous indices for the users and items seen in training."""

    def __init__(self, train: pd.DataFrame):
        self.user_ids = sorted(train["user"].unique().tolist())
        self.item_ids = sorted(train["item"].unique().tolist())
        self.u_index = {u: n for n, u in enumerate(self.user_ids)}
        self.i_index = {i: n for n, i in enumerate(self.item_ids)}

    def tensors(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor(frame["user"].map(self.u_index).to_numpy()),
                torch.tensor(frame["item"].map(self.i_index).to_numpy()))


def fit_cf(model: nn.Module, ids: IdMaps, train: pd.DataFrame, valid_rows: pd.DataFrame, name: str,
           epochs: int, lr: float, weight_decay: float, patience: int, seed: int, batch_size: int,
           meta: dict, log=print) -> tuple[CFModel, dict]:
    """BCE on train labels, Adam, L2 on the rows a batch touches (``model.l2``), early
    stopping on the valid AUC of the exported model. Shared by MF and LightGCN."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users, items = ids.tensors(train)
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    best = (-1.0, None, 0)
    history = []
    start = time.time()
    for epoch in range(1, epochs + 1):
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        model.train()
        for chunk in order.split(batch_size):
            u, i, y = users[chunk], items[chunk], labels[chunk]
            loss = nn.functional.binary_cross_entropy_with_logits(model(u, i), y)
            optimiser.zero_grad()
            (loss + weight_decay * model.l2(u, i)).backward()
            optimiser.step()
            total += float(loss.detach()) * len(chunk)
        model.eval()
        auc = cf_auc(model.export(ids.user_ids, ids.item_ids, meta), valid_rows)
        history.append({"epoch": epoch, "train_loss": round(total / len(labels), 4), "valid_auc": round(auc, 4)})
        log(f"[{name}] epoch {epoch}: train loss {total / len(labels):.4f}  valid AUC {auc:.4f}")
        if auc > best[0]:
            best = (auc, copy.deepcopy(model.state_dict()), epoch)
        elif epoch - best[2] >= patience:
            break
    model.load_state_dict(best[1])
    # Epochs are chosen with the default fold-in strength; the strength itself is then tuned
    # on the same valid rows and travels in the model's meta (see foldin.py). Imported here:
    # foldin imports cf.base, so a top-level import would be circular through cf/__init__.
    from ..foldin import tune_user_l2

    exported = model.export(ids.user_ids, ids.item_ids, meta | {"best_epoch": best[2]})
    foldin_l2, foldin_aucs = tune_user_l2(exported, valid_rows)
    exported.meta["foldin_l2"] = foldin_l2
    log(f"[{name}] user fold-in L2 {foldin_l2} (valid AUC by L2: {foldin_aucs})")
    info = {"best_epoch": best[2], "valid_auc": round(best[0], 4), "history": history,
            "foldin_l2": foldin_l2, "valid_auc_by_foldin_l2": {str(k): v for k, v in foldin_aucs.items()},
            "valid_auc_tuned": foldin_aucs[foldin_l2], "wall_s": round(time.time() - start, 1)}
    return exported, info


def train_mf(train: pd.DataFrame, valid_rows: pd.DataFrame, dim: int = 64, epochs: int = 40,
             lr: float = 1e-2, weight_decay: float = 1e-4, patience: int = 3, seed: int = 0,
             batch_size: int = 1024, log=print) -> tuple[CFModel, dict]:
    """Fit MF on train interactions; keep the epoch with the best valid AUC."""
    torch.manual_seed(seed)
    ids = IdMaps(train)
    model = MatrixFactorization(len(ids.user_ids), len(ids.item_ids), dim)
    meta = {"kind": "mf", "dim": dim, "train_rows": int(len(train))}
    return fit_cf(model, ids, train, valid_rows, "mf", epochs, lr, weight_decay, patience, seed,
                  batch_size, meta, log)
