"""External collaborative-filtering models behind one small interface (:class:`CFModel`), and the
registry of CF backends.

A backend is one file here (its model, its trainer ``(dataset, cfg, log) -> (train interactions
used, CFModel, info)``) plus one entry in ``BACKENDS``; a backend whose checkpoint is not a plain
CFModel file adds its reader to ``LOADERS``. Everything else asks this registry: ``backend(name)``
for names, labels, colours and file names, ``load_cf`` for a file, ``method_label`` /
``method_colour`` for a key of the results.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import CheckpointError
from . import lightgcn, mf, sasrec
from .backend import (
    LIKE_SHARE,
    LLM_METHODS,
    MF_NO_FOLDIN,
    RECIPE_ROW_COLOUR,
    RECIPE_ROW_LABELS,
    Backend,
    recipe_row,
    split_recipe_row,
)
from .base import CFModel
from .foldin import DEFAULT_L2, L2_GRID, fold_in, parse_l2, tune_l2
from .imported import import_embeddings
from .lightgcn import LightGCN, train_lightgcn
from .mf import MatrixFactorization, train_mf
from .sasrec import SequentialCF, load_sequential, train_sasrec

_BIASES = "the exported vectors also carry the user and item biases"

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("mf", "MF", "MF (matrix factorisation)",
            blurb="learned one vector per user and per movie from who liked what",
            colour="#4C6EF5", colour_alone="#868E96", vector_note=_BIASES, trainer=mf.train_stage),
    Backend("lightgcn", "LightGCN", "LightGCN (graph)",
            blurb="learned one vector per user and per movie by propagating over the graph of who liked what",
            colour="#2B8A3E", colour_alone="#A9E34B", vector_note=_BIASES, trainer=lightgcn.train_stage),
    Backend("sasrec", "SASRec", "SASRec (sequential)",
            blurb="encodes the user's recent history (items in order, liked or not) into one vector and "
                  "learned one vector per movie",
            colour="#C92A2A", colour_alone="#FFA8A8", vector_note="the last number of the movie vector is its bias",
            trainer=sasrec.train_stage),
)}

# How a CF file is read, by the family of the ``kind`` in its metadata ("imported:svd" -> "imported");
# kinds not listed (MF, LightGCN, imported or plain vectors) are the plain file ``CFModel.save`` writes.
LOADERS: dict[str, Callable[[dict, dict], CFModel]] = {"sasrec": load_sequential}

# Rows of the results that are neither a backend alone nor CoLLM with one: (label, colour).
OTHER_METHODS = dict(LLM_METHODS) | {MF_NO_FOLDIN: ("MF, no fold-in (paper's handling of new users)", "#CED4DA"),
                                     LIKE_SHARE: ("Share of liked films in the history (no model)", "#DEE2E6")}


def backend(name: str) -> Backend:
    """The registry's backend ``name``; any other name is vectors brought in with ``import-embeddings``."""
    return BACKENDS.get(name) or Backend.imported_vectors(name)


def trainable_backends() -> tuple[str, ...]:
    """Backends the `cf` stage trains (others come from ``import-embeddings``)."""
    return tuple(name for name, b in BACKENDS.items() if b.trainer is not None)


def load_cf(path: str | Path) -> CFModel:
    """Load any saved CF model (safetensors only: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"CF checkpoint {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None
    kind = metadata.get("kind", "vectors")
    loader = LOADERS.get(kind.split(":", 1)[0], CFModel.from_file_parts)
    try:
        return loader(tensors, metadata)
    except KeyError as err:
        raise CheckpointError(f"{path}: not a CF checkpoint of this project (kind {kind[:40]!r}, missing "
                              f"{str(err)[:60]})") from None
    # bad JSON, tables or weights that do not fit; JSON of the wrong shape (a list where the
    # loader expects an object) surfaces as a TypeError or AttributeError
    except (ValueError, RuntimeError, TypeError, AttributeError) as err:
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: not a usable CF checkpoint (kind {kind[:40]!r}): {detail}") from None


def method_style(key: str) -> tuple[str, str]:
    """(label, colour) of a row of the results: 'MF (CF alone)', 'CoLLM-LightGCN', ... and its chart colour."""
    recipe = split_recipe_row(key)
    if recipe is not None:  # "collm@paper": the CoLLM row of another recipe than the shipped one
        base, name = recipe  # short: the headline table must fit a projected page ("CoLLM", "CoLLM-LightGCN")
        short = method_label(base).split(" (")[0]
        return f"{short}, {RECIPE_ROW_LABELS.get(name, f'recipe {name}')}", RECIPE_ROW_COLOUR
    found = Backend.from_key(key)
    if found is None:
        return OTHER_METHODS[key]
    b, collm = found
    return (b.collm_label, b.colour) if collm else (b.alone_label, b.colour_alone)


def method_label(key: str) -> str:
    return method_style(key)[0]


def method_colour(key: str) -> str:
    return method_style(key)[1]


__all__ = ["BACKENDS", "DEFAULT_L2", "L2_GRID", "LIKE_SHARE", "LLM_METHODS", "LOADERS", "MF_NO_FOLDIN", "OTHER_METHODS", "Backend",
           "CFModel", "LightGCN", "MatrixFactorization", "SequentialCF", "backend", "fold_in", "import_embeddings", "load_cf",
           "method_colour", "method_label", "parse_l2", "recipe_row", "split_recipe_row", "train_lightgcn", "train_mf", "train_sasrec",
           "trainable_backends", "tune_l2"]
