"""Bring your own CF vectors: user and item tables from any outside tool.

Accepted: ``.npy`` (loaded with ``allow_pickle=False``) or ``.safetensors`` (one tensor, or a
tensor named ``embeddings``) for each table, plus the ids of their rows: a ``.json`` list, a
``.txt`` file with one id per line, or (safetensors) a JSON list in the metadata key ``ids``.
Everything is validated before use: shapes, dtypes, finite values, unique ids, ids known in the
dataset. Unseen users are folded in from their history like for MF; the no-information vector is
zero (no bias terms are known for outside vectors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import DataError
from .backend import IMPORTED_KIND
from .base import CFModel


def _read_table(path: Path) -> tuple[np.ndarray, list[str] | None]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"{path}: not a plain numeric .npy array ({err})") from err
        return array, None
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="np") as handle:
                keys = list(handle.keys())
                key = "embeddings" if "embeddings" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(f"{path}: expected one tensor or one named 'embeddings', found {keys}")
                meta = handle.metadata() or {}
                ids = _id_list(json.loads(meta["ids"]), path) if "ids" in meta else None
                return handle.get_tensor(key), ids
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: not a readable safetensors file with a JSON id list ({err})") from err
    raise DataError(f"{path}: unsupported format (use .npy or .safetensors; pickles are never loaded)")


def _id_list(ids, path: Path) -> list[str]:
    if not isinstance(ids, list):
        raise DataError(f"{path}: expected a JSON list of ids")
    return [str(i) for i in ids]


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text()
        ids = json.loads(text) if path.suffix == ".json" else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a JSON list or a text file of ids ({err})") from err
    if path.suffix == ".json":
        return _id_list(ids, path)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _validate(name: str, array: np.ndarray, ids: list[str] | None, known: set[str], path: Path) -> np.ndarray:
    if ids is None:
        raise DataError(f"{path}: no ids given for the {name} rows (pass --{name}-ids or put 'ids' in the safetensors metadata)")
    if array.ndim != 2:
        raise DataError(f"{path}: {name} vectors must be 2-D (count, dim), got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: {name} vectors must be floating point, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise DataError(f"{path}: {name} vectors contain NaN/inf (first at row {bad}, id {ids[bad] if bad < len(ids) else '?'})")
    if len(ids) != array.shape[0]:
        raise DataError(f"{path}: {array.shape[0]} {name} vectors but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: duplicate {name} id {dup!r}")
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} {name} id(s) not in the dataset, e.g. {unknown[:5]}")
    return array.astype(np.float32)


def import_embeddings(users_path: str | Path, items_path: str | Path, known_users: set[str],
                      known_items: set[str], user_ids_path: str | Path | None = None,
                      item_ids_path: str | Path | None = None, name: str = "imported") -> CFModel:
    users_path, items_path = Path(users_path), Path(items_path)
    users, u_ids = _read_table(users_path)
    items, i_ids = _read_table(items_path)
    if user_ids_path:
        u_ids = _read_ids(Path(user_ids_path))
    if item_ids_path:
        i_ids = _read_ids(Path(item_ids_path))
    users = _validate("user", users, u_ids, known_users, users_path)
    items = _validate("item", items, i_ids, known_items, items_path)
    if users.shape[1] != items.shape[1]:
        raise DataError(f"user vectors have dim {users.shape[1]} but item vectors have dim {items.shape[1]}")
    kind = f"{IMPORTED_KIND}:{name}"
    model = CFModel(u_ids, i_ids, torch.from_numpy(users), torch.from_numpy(items), 0.0,
                    meta={"kind": kind, "users_file": users_path.name, "items_file": items_path.name})
    model.kind = kind
    return model
