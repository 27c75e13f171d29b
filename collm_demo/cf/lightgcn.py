"""LightGCN (He et al., 2020): embeddings smoothed over the train interaction graph.

E^(0) = free user and item embeddings; E^(l+1) = D^-1/2 A D^-1/2 E^(l) over the bipartite
graph of train interactions; the final embedding is the mean of layers 0..L (paper: L = 2).
score = e_u·e_i + b_u + b_i + g, trained with BCE on the like/dislike labels (our task is
explicit feedback), exported with the biases folded in exactly like MF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..trainer import cf_stage_args
from .base import CFModel
from .mf import IdMaps, export_with_biases, fit_cf

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import Dataset


class LightGCN(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, edges: tuple[torch.Tensor, torch.Tensor],
                 layers: int = 2):
        super().__init__()
        self.n_users, self.layers = n_users, layers
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.global_bias = nn.Parameter(torch.zeros(1))
        users, items = edges
        rows = torch.cat([users, items + n_users])
        cols = torch.cat([items + n_users, users])
        degree = torch.bincount(rows, minlength=n_users + n_items).float().clamp(min=1)
        values = degree[rows].rsqrt() * degree[cols].rsqrt()
        self.register_buffer("adjacency", torch.sparse_coo_tensor(
            torch.stack([rows, cols]), values, (n_users + n_items,) * 2, check_invariants=True).coalesce())

    def propagate(self) -> torch.Tensor:
        layer, total = self.embedding.weight, self.embedding.weight
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.adjacency, layer)
            total = total + layer
        return total / (self.layers + 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        final = self.propagate()
        return ((final[users] * final[items + self.n_users]).sum(-1) + self.user_bias(users).squeeze(-1)
                + self.item_bias(items).squeeze(-1) + self.global_bias)

    def l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        return (weight[users].pow(2).sum(-1) + weight[items + self.n_users].pow(2).sum(-1)).mean()

    def export(self, user_ids: list[str], item_ids: list[str], meta: dict) -> CFModel:
        with torch.no_grad():
            final = self.propagate()
            return export_with_biases(final[: self.n_users], final[self.n_users:], self.user_bias.weight,
                                      self.item_bias.weight, float(self.global_bias), user_ids, item_ids, meta)


def train_lightgcn(train: pd.DataFrame, valid_rows: pd.DataFrame, dim: int = 64, layers: int = 2,
                   epochs: int = 40, lr: float = 1e-2, weight_decay: float = 1e-2, patience: int = 3,
                   seed: int = 0, batch_size: int = 1024, log=print) -> tuple[CFModel, dict]:
    torch.manual_seed(seed)
    ids = IdMaps(train)
    model = LightGCN(len(ids.user_ids), len(ids.item_ids), dim, ids.tensors(train), layers)
    meta = {"kind": "lightgcn", "dim": dim, "layers": layers, "train_rows": int(len(train))}
    return fit_cf(model, ids, train, valid_rows, "lightgcn", epochs, lr, weight_decay, patience, seed,
                  batch_size, meta, log)


def train_stage(dataset: Dataset, cfg: TrainConfig, log=print) -> tuple[pd.DataFrame, CFModel, dict]:
    """`train --stage cf` for LightGCN: the graph of every train interaction; early stopping on valid."""
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    return train, *train_lightgcn(train, dataset.split("valid"), **cf_stage_args(cfg, log))
