"""Where do the CF tokens land? A joint UMAP of mapped CF tokens and word embeddings.

``python -m collm_demo embedding-map`` computes the layout once (cosine metric, seeded,
fitted jointly on mapped item tokens, mapped user tokens and a sample of the LLM's input
word embeddings) and stores it in ``assets/embedding_map.json``; the app only loads it.

New points (a composed user, an item refit in the cold-start simulator) are not in the
fitted layout. They are placed *honestly but approximately*: at the cosine-weighted mean
position of their 10 nearest fitted points in the 576-d token space, and the app says so.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .cf import backend
from .config import CHECKPOINT_DIR, DEFAULT_CF, LAYOUT_PATH, ProtocolConfig
from .device import Runtime
from .errors import CheckpointError
from .pipeline import load_pipeline

GENRE_WORDS = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film", "Noir", "Horror", "Musical", "Mystery", "Romance",
               "Sci", "Fi", "Thriller", "War", "Western", "movie", "film", "love", "star", "king"]


def word_sample(tokenizer, titles: list[str], n: int, seed: int) -> list[int]:
    """Token ids: genre words, words from titles, then random alphabetic vocabulary."""
    chosen: dict[int, None] = {}
    for word in GENRE_WORDS:
        for text in (word, " " + word):
            for tid in tokenizer.encode(text, add_special_tokens=False):
                chosen[tid] = None
    for title in titles:
        for tid in tokenizer.encode(" " + title, add_special_tokens=False):
            if len(chosen) >= n // 2:
                break
            chosen[tid] = None
    rng = np.random.default_rng(seed)
    vocab = int(tokenizer.vocab_size)
    for tid in rng.permutation(vocab):
        if len(chosen) >= n:
            break
        piece = tokenizer.decode([int(tid)]).strip()
        if re.fullmatch(r"[A-Za-z]{3,}", piece):
            chosen[int(tid)] = None
    return [t for t in chosen if re.search(r"[A-Za-z]", tokenizer.decode([t]))][:n]


@torch.no_grad()
def mapped_tokens(pipeline, items: list[str] | None = None, users: list[str] | None = None):
    """Projector outputs (the vectors that replace the slots) for CF items and users."""
    cf, projector = pipeline.cf, pipeline.model.projector
    items = cf.item_ids if items is None else items
    users = cf.user_ids if users is None else users
    device = next(projector.parameters()).device
    return (projector(cf.item_vectors(items).to(device), False).cpu().numpy(),
            projector(cf.user_vectors(users).to(device), True).cpu().numpy())


def word_embeddings(pipeline) -> np.ndarray:
    return pipeline.model.llm.get_input_embeddings().weight.detach().float().cpu().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_words(pipeline, vectors: np.ndarray, k: int = 8) -> list[list[tuple[str, float]]]:
    """For each vector: the k vocabulary tokens with the highest cosine similarity."""
    words = _unit(word_embeddings(pipeline))
    sims = _unit(np.atleast_2d(vectors)) @ words.T
    top = np.argsort(-sims, axis=1)[:, :k]
    decode = pipeline.model.tokenizer.decode
    return [[(decode([int(t)]), float(sims[r, t])) for t in row] for r, row in enumerate(top)]


def norm_stats(pipeline) -> dict:
    """Typical norms: mapped CF tokens vs word embeddings, and the mean best cosine to a word."""
    words = word_embeddings(pipeline)
    item_tokens, user_tokens = mapped_tokens(pipeline)
    tokens = np.concatenate([item_tokens, user_tokens])
    best = (_unit(tokens) @ _unit(words).T).max(axis=1)
    return {"word_norm_mean": round(float(np.linalg.norm(words, axis=1).mean()), 3),
            "item_token_norm_mean": round(float(np.linalg.norm(item_tokens, axis=1).mean()), 3),
            "user_token_norm_mean": round(float(np.linalg.norm(user_tokens, axis=1).mean()), 3),
            "mean_best_cosine_to_word": round(float(best.mean()), 3)}


def compute_layout(pipeline, n_words: int = 3000, seed: int = 0) -> dict:
    import umap  # slow import: only here

    dataset, cf = pipeline.dataset, pipeline.cf
    item_ids, user_ids = cf.item_ids, cf.user_ids
    item_tokens, user_tokens = mapped_tokens(pipeline, item_ids, user_ids)
    titles = [dataset.title(i) for i in item_ids]
    word_ids = word_sample(pipeline.model.tokenizer, titles, n_words, seed)
    words = word_embeddings(pipeline)[word_ids]
    joint = np.concatenate([item_tokens, user_tokens, words]).astype(np.float32)
    started = time.time()
    coords = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed).fit_transform(joint)
    print(f"[embedding-map] UMAP on {len(joint)} points in {time.time() - started:.1f} s", file=sys.stderr)
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    item_pop = train["item"].value_counts()
    user_pop = train["user"].value_counts()
    warm_min = dataset.protocol.warm_min
    points = []
    for n, item in enumerate(item_ids):
        genres = str(dataset.items.at[item, "genres"]) if item in dataset.items.index else ""
        points.append({"kind": "item", "key": item, "label": titles[n], "x": float(coords[n, 0]),
                       "y": float(coords[n, 1]), "genre": genres.split("|")[0] if genres else "unknown",
                       "popularity": int(item_pop.get(item, 0)), "warm": bool(item_pop.get(item, 0) >= warm_min)})
    base = len(item_ids)
    for n, user in enumerate(user_ids):
        points.append({"kind": "user", "key": user, "label": f"user {user}", "x": float(coords[base + n, 0]),
                       "y": float(coords[base + n, 1]), "genre": "user",
                       "popularity": int(user_pop.get(user, 0)), "warm": bool(user_pop.get(user, 0) >= warm_min)})
    base += len(user_ids)
    decode = pipeline.model.tokenizer.decode
    for n, tid in enumerate(word_ids):
        points.append({"kind": "word", "key": str(tid), "label": decode([tid]), "x": float(coords[base + n, 0]),
                       "y": float(coords[base + n, 1]), "genre": "word", "popularity": 0, "warm": True})
    return {"meta": {"llm": pipeline.llm.name, "cf": pipeline.cf_name, "seed": seed, "metric": "cosine", "n_neighbors": 15,
                     "counts": {"item": len(item_ids), "user": len(user_ids), "word": len(word_ids)},
                     "norms": norm_stats(pipeline)},
            "points": points}


def layout_path_for(cf_name: str, base: Path = LAYOUT_PATH) -> Path:
    """MF's layout is ``embedding_map.json``; another backend's is ``embedding_map_<name>.json``."""
    return backend(cf_name).layout_path(Path(base))


def load_layout(path: Path = LAYOUT_PATH) -> dict | None:
    if not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def place(pipeline, layout: dict, vectors: np.ndarray, k: int = 10) -> np.ndarray:
    """2-D positions for vectors not in the fitted layout: cosine-weighted mean of the
    positions of their k nearest fitted points (items, users and words)."""
    points = layout["points"]
    items = [p["key"] for p in points if p["kind"] == "item"]
    users = [p["key"] for p in points if p["kind"] == "user"]
    words = [int(p["key"]) for p in points if p["kind"] == "word"]
    item_tokens, user_tokens = mapped_tokens(pipeline, items, users)
    fitted = _unit(np.concatenate([item_tokens, user_tokens, word_embeddings(pipeline)[words]]))
    xy = np.array([[p["x"], p["y"]] for p in points if p["kind"] == "item"]
                  + [[p["x"], p["y"]] for p in points if p["kind"] == "user"]
                  + [[p["x"], p["y"]] for p in points if p["kind"] == "word"])
    sims = _unit(np.atleast_2d(vectors)) @ fitted.T
    top = np.argsort(-sims, axis=1)[:, :k]
    weights = np.take_along_axis(sims, top, axis=1).clip(min=1e-6)
    return (xy[top] * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)


def run(checkpoint_dir: Path = CHECKPOINT_DIR, llm_name: str | None = None, data_path: str | None = None,
        quick: bool = False, out: Path | None = None, cf_name: str = DEFAULT_CF, runtime: Runtime | None = None,
        protocol: ProtocolConfig | None = None) -> Path:
    pipeline = load_pipeline(checkpoint_dir, llm_name, data_path, cf_name=cf_name, runtime=runtime, protocol=protocol)
    if not pipeline.has_projector:
        raise CheckpointError(f"the embedding map needs a trained CF model and projector: {pipeline.notice}")
    layout = compute_layout(pipeline, n_words=300 if quick else 3000)
    out = out or layout_path_for(cf_name, Path(checkpoint_dir) / "embedding_map_quick.json" if quick else LAYOUT_PATH)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout))
    tmp.replace(out)
    print(f"[embedding-map] wrote {out} ({len(layout['points'])} points); norms {layout['meta']['norms']}",
          file=sys.stderr)
    return out
