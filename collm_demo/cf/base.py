"""The interface through which any CF model feeds CoLLM.

A CF model is, for CoLLM, two tables of vectors: one per user and one per item, with
id maps, such that ``sigmoid(user_vec · item_vec + global_bias)`` is the model's own
like-probability. CoLLM never looks inside: the projector maps these vectors into the
LLM's token space. Anything that yields such tables (MF, LightGCN, imported vectors)
plugs in by subclassing :class:`CFModel` or by building one from tensors.

No-information vectors. Users and items unseen in training get a fixed, documented
vector instead of a random one: ``default_user`` / ``default_item``. For MF with biases
these are "zero taste, zero bias" (so an unseen user is scored by item popularity alone
and an unseen item by the user's bias alone). A user unseen in training but with a
known history is *folded in* (the maths: ``foldin.py``; the policy: here) starting from
that default. A model whose user vector *is* an encoding of the history (SASRec) says so
with ``encodes_history`` and overrides the two user-vector methods.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from .foldin import DEFAULT_L2, L2_GRID, fold_in, tune_l2


class CFModel:
    """User and item vectors with id maps; the only thing CoLLM needs from a CF model."""

    kind = "vectors"
    # The user vector is an encoding of the history: no stored vector is used for a prompt row
    # and fold-in does not apply (callers ask this, never the kind).
    encodes_history: bool = False

    def __init__(self, user_ids: Sequence[str], item_ids: Sequence[str], user_table: torch.Tensor,
                 item_table: torch.Tensor, global_bias: float = 0.0,
                 default_user: torch.Tensor | None = None, default_item: torch.Tensor | None = None,
                 meta: dict | None = None):
        if user_table.ndim != 2 or item_table.ndim != 2:
            raise ValueError("user and item tables must be 2-D (count, dim)")
        if user_table.shape[1] != item_table.shape[1]:
            raise ValueError(f"user dim {user_table.shape[1]} != item dim {item_table.shape[1]}")
        if len(user_ids) != user_table.shape[0] or len(item_ids) != item_table.shape[0]:
            raise ValueError("id maps and tables differ in length")
        if not (torch.isfinite(user_table).all() and torch.isfinite(item_table).all()):
            raise ValueError("CF vectors contain NaN or infinite values")
        self.user_ids = [str(u) for u in user_ids]
        self.item_ids = [str(i) for i in item_ids]
        self.user_index = {u: n for n, u in enumerate(self.user_ids)}
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.user_table = user_table.detach().float().contiguous()
        self.item_table = item_table.detach().float().contiguous()
        self.global_bias = float(global_bias)
        dim = self.user_table.shape[1]
        self.default_user = (torch.zeros(dim) if default_user is None else default_user.float())
        self.default_item = (torch.zeros(dim) if default_item is None else default_item.float())
        self.meta = dict(meta or {})

    @property
    def dim(self) -> int:
        return self.user_table.shape[1]

    def has_user(self, user: str) -> bool:
        return str(user) in self.user_index

    def has_item(self, item: str) -> bool:
        return str(item) in self.item_index

    def _lookup(self, ids: Sequence[str], index: dict, table: torch.Tensor, default: torch.Tensor):
        out = default.expand(len(ids), -1).clone()
        pos = [(n, index[str(i)]) for n, i in enumerate(ids) if str(i) in index]
        if pos:
            rows, src = zip(*pos)
            out[list(rows)] = table[list(src)]
        return out

    def user_vectors(self, users: Sequence[str]) -> torch.Tensor:
        """(n, dim); users unseen in training get ``default_user``."""
        return self._lookup(users, self.user_index, self.user_table, self.default_user)

    def item_vectors(self, items: Sequence[str]) -> torch.Tensor:
        """(n, dim); items unseen in training get ``default_item``."""
        return self._lookup(items, self.item_index, self.item_table, self.default_item)

    def score_vectors(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """The CF model's own like-probability for paired vectors."""
        return torch.sigmoid((user_vecs * item_vecs).sum(-1) + self.global_bias)

    # ------------------------------------------------------------------ fold-in (the policy)
    @property
    def foldin_l2(self) -> float:
        """The fold-in strength for this model's users: tuned on valid at training time, else the default."""
        return float(self.meta.get("foldin_l2", DEFAULT_L2))

    def _fold_in_histories(self, histories: Sequence[Sequence[str]], history_labels: Sequence[Sequence[int]],
                           l2: float) -> torch.Tensor:
        """One folded-in user vector per history, (len(histories), dim); items unseen in training
        are masked out, an empty history gives ``default_user``."""
        k = max(1, max(len(h) for h in histories))
        others = torch.zeros(len(histories), k, self.dim)
        labels = torch.zeros(len(histories), k)
        mask = torch.zeros(len(histories), k)
        for row, (history, marks) in enumerate(zip(histories, history_labels)):
            items = [str(i) for i in history]
            if not items:
                continue
            others[row, : len(items)] = self.item_vectors(items)
            labels[row, : len(items)] = torch.tensor([float(v) for v in marks])
            mask[row, : len(items)] = torch.tensor([1.0 if self.has_item(i) else 0.0 for i in items])
        return fold_in(others, labels, mask, self.default_user, self.global_bias, l2=l2)

    def row_user_vectors(self, users: Sequence[str], histories: Sequence[Sequence[str]],
                         history_labels: Sequence[Sequence[int]], l2: float | None = None) -> torch.Tensor:
        """The user vector for each prompt row: the trained vector for users seen in training, else
        folded in from the row's own history (strictly earlier interactions) with strength ``l2``
        (None: the model's own, ``foldin_l2``)."""
        l2 = self.foldin_l2 if l2 is None else l2
        out = self.user_vectors(users)
        unknown = [n for n, u in enumerate(users) if not self.has_user(u)]
        if unknown:
            out[unknown] = self._fold_in_histories([histories[n] for n in unknown],
                                                   [history_labels[n] for n in unknown], l2)
        return out

    def fold_in_user(self, items: Sequence[str], labels: Sequence[int], l2: float | None = None) -> torch.Tensor:
        """One history (composed or edited in the app) folded in to a user vector (dim,)."""
        return self._fold_in_histories([list(items)], [list(labels)], self.foldin_l2 if l2 is None else l2)[0]

    def history_user_vector(self, items: Sequence[str], labels: Sequence[int], l2: float | None = None) -> torch.Tensor:
        """The user vector of someone known only by this history (no stored vector), made the way
        prompt rows make it: folded in here, encoded by a model that ``encodes_history``."""
        return self.fold_in_user(items, labels, l2=l2)

    def fold_in_item(self, users: Sequence[str], labels: Sequence[int], l2: float = DEFAULT_L2) -> torch.Tensor:
        """Refit one item from k (user, label) interactions with the user vectors frozen."""
        if not len(users):
            return self.default_item.clone()
        others = self.user_vectors(list(users)).unsqueeze(0)
        mask = torch.tensor([[1.0 if self.has_user(u) else 0.0 for u in users]])
        y = torch.tensor([[float(v) for v in labels]])
        return fold_in(others, y, mask, self.default_item, self.global_bias, l2=l2)[0]

    def auc(self, rows: pd.DataFrame, l2: float | None = None) -> float:
        """AUC of the CF model alone on protocol rows (users as ``row_user_vectors`` makes them)."""
        users = self.row_user_vectors(rows["user"].tolist(), rows["history_items"].tolist(),
                                      rows["history_labels"].tolist(), l2=l2)
        items = self.item_vectors(rows["item"].tolist())
        return float(roc_auc_score(rows["label"].to_numpy(), self.score_vectors(users, items).numpy()))

    def tune_foldin_l2(self, rows: pd.DataFrame, grid: Sequence[float] = L2_GRID) -> tuple[float, dict[float, float]]:
        """The user fold-in strength with the best AUC of the CF model alone on ``rows`` (valid rows:
        most of their users are unseen in training, so fold-in decides their score).
        Returns (best l2, {l2: AUC}); ties go to the stronger pull."""
        return tune_l2(lambda l2: self.auc(rows, l2=l2), grid)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """One safetensors file: tables, defaults, and id maps + meta in its metadata."""
        tensors = {"user_table": self.user_table, "item_table": self.item_table,
                   "default_user": self.default_user, "default_item": self.default_item,
                   "global_bias": torch.tensor([self.global_bias])}
        metadata = {"kind": self.kind, "user_ids": json.dumps(self.user_ids),
                    "item_ids": json.dumps(self.item_ids), "meta": json.dumps(self.meta)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def from_file_parts(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> CFModel:
        """The model ``save`` wrote, from the file's tensors and metadata (``collm_demo.cf.load_cf``
        reads the file). A missing part raises KeyError, a bad one ValueError."""
        kind = metadata.get("kind", "vectors")
        model = cls(json.loads(metadata["user_ids"]), json.loads(metadata["item_ids"]), tensors["user_table"],
                    tensors["item_table"], float(tensors["global_bias"][0]), tensors["default_user"],
                    tensors["default_item"], meta=json.loads(metadata.get("meta", "{}")) | {"kind": kind})
        model.kind = kind
        return model
