"""A sequential CF model in the spirit of SASRec: self-attention over the user's recent items.

The user vector *is* an encoding of the history (the last <= 10 interactions strictly before
the row, each an item embedding + a liked/disliked embedding + a position embedding, 2
transformer blocks, 4 heads; the last position's output is the user vector; unlike SASRec's
next-item training we read only that position, so attention is bidirectional). So a user unseen
in training needs no fold-in: their history is encoded directly. Items are a table, like MF:

    score = h(history) · q_i + b_i + g    exported as  user [h, 1],  item [q_i, b_i]

Trained with BCE on the like/dislike label of every train row; early stopping on valid AUC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..trainer import cf_stage_args, fit_epochs
from .base import CFModel

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import Dataset

PAD, UNKNOWN = 0, 1  # item index 0 pads a short history, 1 stands for an item unseen in training


class SequenceEncoder(nn.Module):
    def __init__(self, n_items: int, dim: int = 64, max_len: int = 10, blocks: int = 2, heads: int = 4,
                 dropout: float = 0.2):
        super().__init__()
        self.config = {"n_items": n_items, "dim": dim, "max_len": max_len, "blocks": blocks, "heads": heads,
                       "dropout": dropout}
        self.item = nn.Embedding(n_items + 2, dim, padding_idx=PAD)
        self.item_bias = nn.Embedding(n_items + 2, 1)
        self.label = nn.Embedding(2, dim)
        self.position = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.global_bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def encode(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """items/labels (B, L), right-aligned (padding on the left). Returns (B, dim)."""
        length = items.shape[1]
        positions = torch.arange(length).expand_as(items)
        x = self.item(items) + self.label(labels) + self.position(positions)
        pad = items == PAD
        empty = pad.all(1)
        pad = pad & ~empty.unsqueeze(1)  # an all-padding row would give NaNs: let it attend to itself
        # No causal mask: only the last position is read, and with left padding a causal mask would
        # leave the padding queries nothing to attend to (NaNs that leak through 0 * NaN).
        h = self.norm(self.blocks(x, src_key_padding_mask=pad))[:, -1]
        return torch.where(empty.unsqueeze(1), torch.zeros_like(h), h)

    def forward(self, items, labels, targets) -> torch.Tensor:
        h = self.encode(items, labels)
        return (h * self.item(targets)).sum(-1) + self.item_bias(targets).squeeze(-1) + self.global_bias


class SequentialCF(CFModel):
    """CFModel whose user vectors come from encoding a history."""

    kind = "sasrec"
    encodes_history = True

    def __init__(self, encoder: SequenceEncoder, item_ids: Sequence[str], user_ids: Sequence[str],
                 user_table: torch.Tensor, meta: dict | None = None):
        self.encoder = encoder.eval()
        self.index = {i: n + 2 for n, i in enumerate(item_ids)}
        with torch.no_grad():
            idx = torch.arange(2, len(item_ids) + 2)
            items = torch.cat([encoder.item(idx), encoder.item_bias(idx)], 1)
        dim = items.shape[1]
        super().__init__(user_ids, item_ids, user_table, items, float(encoder.global_bias.detach()),
                         default_user=torch.cat([torch.zeros(dim - 1), torch.ones(1)]),
                         default_item=torch.zeros(dim), meta=meta)

    def _batch(self, histories, labels) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.encoder.config["max_len"]
        items = torch.full((len(histories), length), PAD, dtype=torch.long)
        labs = torch.zeros((len(histories), length), dtype=torch.long)
        for row, (hist, lab) in enumerate(zip(histories, labels)):
            hist, lab = list(hist)[-length:], list(lab)[-length:]
            if hist:
                items[row, length - len(hist):] = torch.tensor([self.index.get(str(i), UNKNOWN) for i in hist])
                labs[row, length - len(hist):] = torch.tensor([int(v) for v in lab])
        return items, labs

    @torch.no_grad()
    def row_user_vectors(self, users, histories, history_labels, l2=None) -> torch.Tensor:
        """Every row's user vector is its history's encoding (``users`` and ``l2`` do not matter)."""
        if not len(histories):
            return torch.zeros(0, self.dim)
        h = self.encoder.encode(*self._batch(histories, history_labels))
        return torch.cat([h, torch.ones(len(h), 1)], 1)

    def history_user_vector(self, items, labels, l2=None) -> torch.Tensor:
        return self.row_user_vectors([None], [list(items)], [list(labels)])[0]

    def save(self, path) -> None:
        from safetensors.torch import save_file

        tensors = {f"encoder.{k}": v.contiguous() for k, v in self.encoder.state_dict().items()}
        tensors["user_table"] = self.user_table
        save_file(tensors, str(path), metadata={
            "kind": "sasrec", "config": json.dumps(self.encoder.config), "item_ids": json.dumps(self.item_ids),
            "user_ids": json.dumps(self.user_ids), "meta": json.dumps(self.meta)})


def load_sequential(tensors: dict, metadata: dict) -> SequentialCF:
    encoder = SequenceEncoder(**json.loads(metadata["config"]))
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})
    return SequentialCF(encoder, json.loads(metadata["item_ids"]), json.loads(metadata["user_ids"]),
                        tensors["user_table"], json.loads(metadata.get("meta", "{}")))


def _export(encoder: SequenceEncoder, train_rows: pd.DataFrame, item_ids: list[str], meta: dict) -> SequentialCF:
    # A stored vector per train user (their latest train history) serves user_vectors(ids), e.g. the map.
    latest = train_rows.sort_values("timestamp").groupby("user").tail(1)
    shell = SequentialCF(encoder, item_ids, ["_"], torch.zeros(1, encoder.config["dim"] + 1), meta)
    table = shell.row_user_vectors(latest["user"].tolist(), latest["history_items"].tolist(),
                                   latest["history_labels"].tolist())
    return SequentialCF(encoder, item_ids, latest["user"].tolist(), table, meta)


def train_sasrec(train_rows: pd.DataFrame, valid_rows: pd.DataFrame, dim: int = 64, epochs: int = 40,
                 lr: float = 1e-3, weight_decay: float = 1e-2, patience: int = 3, seed: int = 0,
                 batch_size: int = 256, log=print) -> tuple[SequentialCF, dict]:
    torch.manual_seed(seed)
    start = time.time()
    item_ids = sorted(set(train_rows["item"]))
    encoder = SequenceEncoder(len(item_ids), dim)
    meta = {"kind": "sasrec", "dim": dim, "blocks": 2, "heads": 4, "max_len": 10, "train_rows": int(len(train_rows))}
    shell = SequentialCF(encoder, item_ids, ["_"], torch.zeros(1, dim + 1), meta)
    hist_items, hist_labels = shell._batch(train_rows["history_items"].tolist(), train_rows["history_labels"].tolist())
    targets = torch.tensor([shell.index[i] for i in train_rows["item"]])
    labels = torch.tensor(train_rows["label"].to_numpy(), dtype=torch.float32)
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=weight_decay)

    def losses(chunk):
        loss = nn.functional.binary_cross_entropy_with_logits(
            encoder(hist_items[chunk], hist_labels[chunk], targets[chunk]), labels[chunk])
        return loss, loss

    fit = fit_epochs(encoder, optimiser, len(labels), losses,
                     lambda: SequentialCF(encoder, item_ids, ["_"], torch.zeros(1, dim + 1), meta).auc(valid_rows),
                     epochs, batch_size, patience, seed, "sasrec", log)
    info = fit | {"wall_s": round(time.time() - start, 1)}
    return _export(encoder, train_rows, item_ids, meta | {"best_epoch": fit["best_epoch"]}), info


def train_stage(dataset: Dataset, cfg: TrainConfig, log=print) -> tuple[pd.DataFrame, SequentialCF, dict]:
    """`train --stage cf` for SASRec: every train row with its history, at its own learning rate
    (Adam on a transformer: the MF one is too high); early stopping on the valid rows."""
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    args = cf_stage_args(cfg, log) | {"lr": cfg.sasrec_lr}
    return train, *train_sasrec(dataset.split("train"), dataset.split("valid"), **args)
