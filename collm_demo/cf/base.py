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
known history is *folded in* (see ``foldin.py``) starting from that default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CFModel:
    """User and item vectors with id maps; the only thing CoLLM needs from a CF model."""

    kind = "vectors"

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

    def row_user_vectors(self, users: Sequence[str], histories: Sequence[Sequence[str]],
                         history_labels: Sequence[Sequence[int]], l2: float | None = None) -> torch.Tensor:
        """The user vector for a prompt row: the trained vector for users seen in training, else
        folded in from the row's own history with strength ``l2`` (None: the model's own, see
        foldin.py). Sequential models override this (their user vector *is* an encoding of the
        history, and ``l2`` does not apply)."""
        from ..foldin import user_vectors_for_rows

        return user_vectors_for_rows(self, users, histories, history_labels, l2=l2)

    def score_vectors(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """The CF model's own like-probability for paired vectors."""
        return torch.sigmoid((user_vecs * item_vecs).sum(-1) + self.global_bias)

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
    def load(cls, path: str | Path) -> "CFModel":
        return load_cf(path)


def load_cf(path: str | Path) -> CFModel:
    """Load any saved CF model (safetensors only: nothing is unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CF checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    if metadata.get("kind") == "sasrec":
        from .sasrec import load_sequential

        return load_sequential(tensors, metadata)
    try:
        user_ids = json.loads(metadata["user_ids"])
        item_ids = json.loads(metadata["item_ids"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a CF checkpoint of this project (missing id maps)") from err
    return CFModel(user_ids, item_ids, tensors["user_table"], tensors["item_table"],
                   float(tensors["global_bias"][0]), tensors["default_user"], tensors["default_item"],
                   meta=json.loads(metadata.get("meta", "{}")) | {"kind": metadata.get("kind", "vectors")})
