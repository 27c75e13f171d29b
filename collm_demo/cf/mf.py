"""Matrix factorisation with biases, trained with BCE on the train split.

score(u, i) = p_u · q_i + b_u + b_i + g

Exported to CoLLM as augmented vectors so that the interface's plain dot product is
exactly the MF logit:  user = [p_u, b_u, 1],  item = [q_i, 1, b_i]  (dim = d + 2).
No-information vectors: user [0…0, 0, 1] (scores an item by its bias = popularity),
item [0…0, 1, 0] (scores by the user's bias alone).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..trainer import cf_stage_args, fit_epochs
from .base import CFModel

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import Dataset


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
    start = time.time()
    users, items = ids.tensors(train)
    labels = torch.tensor(train["label"].to_numpy(), dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)

    def losses(chunk):
        u, i = users[chunk], items[chunk]
        loss = nn.functional.binary_cross_entropy_with_logits(model(u, i), labels[chunk])
        return loss, loss + weight_decay * model.l2(u, i)

    fit = fit_epochs(model, optimiser, len(labels), losses,
                     lambda: model.export(ids.user_ids, ids.item_ids, meta).auc(valid_rows),
                     epochs, batch_size, patience, seed, name, log)
    # Epochs are chosen with the default fold-in strength; the strength itself is then tuned
    # on the same valid rows and travels in the model's meta (``CFModel.foldin_l2``).
    exported = model.export(ids.user_ids, ids.item_ids, meta | {"best_epoch": fit["best_epoch"]})
    foldin_l2, foldin_aucs = exported.tune_foldin_l2(valid_rows)
    exported.meta["foldin_l2"] = foldin_l2
    log(f"[{name}] user fold-in L2 {foldin_l2} (valid AUC by L2: {foldin_aucs})")
    info = fit | {"foldin_l2": foldin_l2, "valid_auc_by_foldin_l2": {str(k): v for k, v in foldin_aucs.items()},
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


def train_stage(dataset: Dataset, cfg: TrainConfig, log=print) -> tuple[pd.DataFrame, CFModel, dict]:
    """`train --stage cf` for MF: every train interaction; early stopping on the valid rows."""
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    return train, *train_mf(train, dataset.split("valid"), **cf_stage_args(cfg, log))
