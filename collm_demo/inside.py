"""Inside the LLM: how much CoLLM's answer uses the two CF tokens, where, and for which rows.

Four measurements, all read off the engine's one forward path (``analysis.analyse``, ``inspect``,
``analysis.ablation_scores``; nothing here runs the LLM itself):

* **attention shares**: for each layer, the share of the answer position's attention (mean over
  heads) that lands on the user slot, the item slot, the candidate's title, the history and the
  rest of the template (``GROUPS``; ``PromptBuilder.position_groups`` labels the positions);
* **attribution**: gradient x input of logit(Yes) - logit(No) per input position, and the CF
  slots' share of the total absolute attribution;
* **ablation**: P(Yes) with the user slot, the item slot or both given the CF model's
  *no-information* vectors (``CFModel.default_user`` / ``default_item``: what an unseen user or
  item gets; MF's is the zero vector);
* **neighbourhoods kept**: for each item, the share of its k nearest neighbours in CF space
  (cosine) that are still among its k nearest after the projector.

``python -m collm_demo inside`` (``run``) measures the first three on a seeded sample of test
rows, stratified so that cold items (few in the test split) are well represented, and writes
means with bootstrap intervals for warm vs cold items and users into ``assets/inside.json``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from . import resume
from .analysis import ablation_scores, analyse
from .config import DEFAULT_CF, INSIDE_BATCH, INSIDE_BOOTSTRAP, INSIDE_CHUNK, INSIDE_K, INSIDE_ROWS, ProtocolConfig
from .device import Runtime

GROUPS = ("user slot", "item slot", "title", "history", "template")
CF_GROUPS = ("user slot", "item slot")
SLICES = ("all", "warm_item", "cold_item", "warm_user", "cold_user")


# ------------------------------------------------------------------------ pure maths

def group_shares(attention: np.ndarray | torch.Tensor, labels: Sequence[str]) -> np.ndarray:
    """(layers, T) attention of the answer position -> (layers, len(GROUPS)) summed per group.
    Each layer's row is a softmax over the T positions, so the shares of a layer sum to 1."""
    attention = np.asarray(attention, dtype=np.float64)
    labels = np.asarray(labels)
    return np.stack([attention[:, labels == g].sum(-1) for g in GROUPS], -1)


def attribution_shares(contributions: np.ndarray | torch.Tensor, labels: Sequence[str]) -> dict[str, float]:
    """Each group's share of the total absolute attribution (shares sum to 1)."""
    magnitude = np.abs(np.asarray(contributions, dtype=np.float64))
    total = magnitude.sum() or 1.0
    labels = np.asarray(labels)
    return {g: float(magnitude[labels == g].sum() / total) for g in GROUPS}


def knn(vectors: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows by cosine similarity."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def neighbourhood_kept(cf_vectors: np.ndarray, mapped: np.ndarray, k: int = INSIDE_K) -> np.ndarray:
    """Per item: |kNN in CF space ∩ kNN after the projector| / k (1.0 = its neighbourhood is kept)."""
    before, after = knn(np.asarray(cf_vectors, np.float64), k), knn(np.asarray(mapped, np.float64), k)
    return np.array([len(set(a) & set(b)) / k for a, b in zip(before, after)])


def bootstrap_mean(values: np.ndarray, seed: int = 0, resamples: int = INSIDE_BOOTSTRAP) -> dict:
    """Mean and 95% percentile bootstrap interval (scipy.stats.bootstrap) over rows; ``values``
    is (n,) or (n, layers) (one interval per column)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = values.mean(0)
    if len(values) < 2:
        return {"mean": _round(mean), "low": None, "high": None, "n": int(len(values))}
    res = stats.bootstrap((values,), np.mean, axis=0, vectorized=True, n_resamples=resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return {"mean": _round(mean), "low": _round(res.confidence_interval.low),
            "high": _round(res.confidence_interval.high), "n": int(len(values))}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = INSIDE_BOOTSTRAP) -> dict:
    """mean(a) - mean(b) of two independent groups, with a 95% percentile bootstrap interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return {"diff": None, "low": None, "high": None}
    diff = a.mean(0) - b.mean(0)
    if len(a) < 2 or len(b) < 2:
        return {"diff": _round(diff), "low": None, "high": None}

    def statistic(x, y, axis):
        return x.mean(axis) - y.mean(axis)

    res = stats.bootstrap((a, b), statistic, axis=0, vectorized=True, n_resamples=resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return {"diff": _round(diff), "low": _round(res.confidence_interval.low),
            "high": _round(res.confidence_interval.high)}


def _round(x, digits: int = 5):
    """Numbers (scalar or nested lists) for JSON."""
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


def stratified_sample(rows: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` test rows, seeded: up to a quarter cold-item rows (the test split has few), the rest
    half warm-user and half cold-user rows among warm items (most test users are cold). Slices are
    compared by their own means, so the stratification does not bias a comparison."""
    rng = np.random.default_rng(seed)
    cold_item = rows[rows["cold_item"]]
    warm_item = rows[~rows["cold_item"]]
    parts = [cold_item.iloc[rng.permutation(len(cold_item))[: n // 4]]]
    left = n - len(parts[0])
    for part, quota in ((warm_item[~warm_item["cold_user"]], left // 2), (warm_item[warm_item["cold_user"]], None)):
        quota = left - sum(len(p) for p in parts[1:]) if quota is None else quota
        parts.append(part.iloc[rng.permutation(len(part))[:quota]])
    return pd.concat(parts).sort_index()


# ------------------------------------------------------------------ through the engine

def none_vectors(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The CF model's no-information user and item vectors (what unseen users and items get)."""
    return pipe.cf.default_user, pipe.cf.default_item


def measure_rows(pipe, rows: pd.DataFrame, batch_size: int = INSIDE_BATCH, progress=None) -> pd.DataFrame:
    """Per test row: CF-slot attention by layer, attribution shares and the ablation scores."""
    model = pipe.model
    users, items = pipe.cf_vectors(rows, for_tokens=True)
    prompts = pipe.prompts(rows, True)
    titles = [pipe.dataset.title(i) for i in rows["item"]]
    labels = [model.builder.position_groups(p, t) for p, t in zip(prompts, titles)]
    order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))  # similar lengths: little padding
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    attn_user, attn_item, attr, diffs = [None] * len(rows), [None] * len(rows), [None] * len(rows), np.zeros(len(rows))
    for batch in (progress(batches) if progress else batches):
        out = analyse(model, [prompts[n] for n in batch], users[batch], items[batch])
        for k, n in enumerate(batch):
            shares = group_shares(out.attention[k], labels[n])
            attn_user[n], attn_item[n] = shares[:, 0], shares[:, 1]
            attr[n] = attribution_shares(out.attribution[k], labels[n])
            diffs[n] = float(out.diff[k])
    none_user, none_item = none_vectors(pipe)
    ablation = ablation_scores(model, prompts, users, items, none_user, none_item)
    frame = rows[["user", "item", "label", "warm", "cold_user", "cold_item"]].reset_index(drop=True).copy()
    frame["attn_user"], frame["attn_item"] = attn_user, attn_item
    frame["attr_user"] = [a["user slot"] for a in attr]
    frame["attr_item"] = [a["item slot"] for a in attr]
    frame["score"] = 1 / (1 + np.exp(-diffs))
    for name, scores in ablation.items():
        frame[f"score_{name}"] = scores.numpy()
    return frame


def metrics(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row quantities that ``summary`` averages: (n,) or (n, layers) arrays."""
    attn_cf = np.stack(frame["attn_user"].to_list()) + np.stack(frame["attn_item"].to_list())
    return {"attention_cf_by_layer": attn_cf,
            "attention_cf_mean": attn_cf.mean(1),
            "attribution_cf_share": frame["attr_user"].to_numpy() + frame["attr_item"].to_numpy(),
            "ablation_drop_both": np.abs(frame["score_full"] - frame["score_both_none"]).to_numpy(),
            "ablation_drop_user": np.abs(frame["score_full"] - frame["score_user_none"]).to_numpy(),
            "ablation_drop_item": np.abs(frame["score_full"] - frame["score_item_none"]).to_numpy()}


def slice_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    cold_item, cold_user = frame["cold_item"].to_numpy(bool), frame["cold_user"].to_numpy(bool)
    return {"all": np.ones(len(frame), bool), "warm_item": ~cold_item, "cold_item": cold_item,
            "warm_user": ~cold_user, "cold_user": cold_user}


def summary(frame: pd.DataFrame, seed: int = 0, resamples: int = INSIDE_BOOTSTRAP) -> dict:
    """Means with bootstrap intervals per slice, and warm - cold differences for items and users."""
    values, masks = metrics(frame), slice_masks(frame)
    slices = {s: {name: bootstrap_mean(v[m], seed, resamples) for name, v in values.items()} for s, m in masks.items()}
    differences = {}
    for side in ("item", "user"):
        warm, cold = masks[f"warm_{side}"], masks[f"cold_{side}"]
        differences[side] = {name: bootstrap_difference(v[warm], v[cold], seed, resamples)
                             for name, v in values.items() if name != "attention_cf_by_layer"}
    return {"slices": slices, "warm_minus_cold": differences}


def finding(result: dict) -> str:
    """One or two sentences on warm vs cold items, whichever way the intervals come out."""
    diff = result["warm_minus_cold"]["item"]
    parts = []
    for name, words in (("attention_cf_mean", "attention share on the CF slots"),
                        ("attribution_cf_share", "attribution share of the CF slots"),
                        ("ablation_drop_both", "score change when both slots get the no-information vectors")):
        d, s = diff[name], result["slices"]
        if d["low"] is None:
            parts.append(f"{words}: too few rows in a slice for an interval")
            continue
        verdict = ("higher" if d["low"] is not None and d["low"] > 0 else
                   "lower" if d["high"] is not None and d["high"] < 0 else "not clearly different")
        parts.append(f"{words}: warm {s['warm_item'][name]['mean']:.4f} vs cold {s['cold_item'][name]['mean']:.4f} "
                     f"(difference {d['diff']:+.4f}, 95% CI [{d['low']:+.4f}, {d['high']:+.4f}]: {verdict})")
    return "Warm items vs cold items — " + "; ".join(parts) + "."


TABLE_COLUMNS = ("measure", "warm items", "cold items", "warm − cold items", "warm − cold users")
TABLE_MEASURES = (("ablation_drop_both", "P(Yes) change, both CF tokens → no-information vectors"),
                  ("ablation_drop_item", "… item token only"), ("ablation_drop_user", "… user token only"),
                  ("attribution_cf_share", "CF slots' share of |gradient × input|"),
                  ("attention_cf_mean", "CF slots' share of the answer's attention (mean over layers)"))


def table_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """One row per measure (``TABLE_COLUMNS``), each cell "mean [95 % CI]": the README's table and
    the Warm vs cold tab's."""
    slices, diff = result["slices"], result["warm_minus_cold"]

    def cell(m: dict) -> str:
        return "—" if m["mean"] is None or m["low"] is None else f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"

    def gap(d: dict) -> str:
        return "—" if d["diff"] is None or d["low"] is None else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    return [(label, cell(slices["warm_item"][key]), cell(slices["cold_item"][key]), gap(diff["item"][key]),
             gap(diff["user"][key])) for key, label in TABLE_MEASURES]


def readme_table(result: dict) -> str:
    """The README's "what the LLM uses" block: warm vs cold items and users, with intervals."""
    proto = result["protocol"]
    lines = [f"Measured by `{proto.get('command', 'python -m collm_demo inside')}` on {proto['rows']} seeded test rows "
             f"(of {proto['rows_asked']} asked; {proto['cf']}), 95 % bootstrap intervals; `assets/inside.json`.", "",
             "| " + " | ".join(TABLE_COLUMNS) + " |", "|---|---|---|---|---|"]
    for row in table_rows(result):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    nb = result.get("neighbourhood")
    if nb:
        lines += ["", f"The projector keeps {nb['mean']:.2f} of each item's {nb['k']} nearest CF neighbours "
                      f"among its mapped tokens' {nb['k']} nearest ({nb['items']} items; 1.0 = all kept)."]
    return "\n".join(lines)


def neighbourhoods(pipe, k: int = INSIDE_K) -> dict:
    """The projector's neighbourhood preservation over all CF items: mean and a histogram."""
    cf = pipe.cf
    with torch.no_grad():
        mapped = pipe.model.projector(cf.item_table.to(pipe.model.device), False).float().cpu().numpy()
    kept = neighbourhood_kept(cf.item_table.numpy(), mapped, k)
    counts = np.bincount(np.rint(kept * k).astype(int), minlength=k + 1)
    return {"k": k, "items": int(len(kept)), "mean": round(float(kept.mean()), 4),
            "histogram": {"kept": [round(j / k, 2) for j in range(k + 1)], "items": counts.tolist()}}


def run(checkpoint_dir: Path, out: Path, llm_name: str | None = None, data_path: str | None = None,
        rows: int = INSIDE_ROWS, seed: int = 0, cf_name: str = DEFAULT_CF, batch_size: int = INSIDE_BATCH,
        runtime: Runtime | None = None, protocol: ProtocolConfig | None = None,
        argv: list[str] | None = None, max_minutes: float | None = None) -> dict:
    """The warm-vs-cold measurement over ``rows`` seeded test rows, written to ``out``. With
    ``max_minutes``, no new chunk of rows starts once that time is spent (the result says so)."""
    from tqdm import tqdm

    from .errors import CheckpointError
    from .pipeline import load_pipeline

    pipe = load_pipeline(checkpoint_dir, llm_name, data_path, cf_name=cf_name, runtime=runtime, protocol=protocol)
    if not pipe.has_projector:
        raise CheckpointError(f"'inside' needs a CF model and its projector; {pipe.notice}")
    sample = stratified_sample(pipe.dataset.split("test"), rows, seed)
    started = time.time()

    def progress(batches):
        return tqdm(batches, desc="inside", file=sys.stderr, mininterval=10)

    # Chunks in a seeded random order: a run stopped by its time budget has measured a random
    # subset of the stratified sample, so its slices stay comparable.
    order = np.random.default_rng(seed).permutation(len(sample))
    # Each chunk's measurements are saved as it is done; the same command run again after an
    # interruption measures only the chunks still missing (the file goes once the report is written).
    saved = out.with_name(out.stem + ".progress.safetensors")
    key = resume.scoring_fingerprint(pipe, sample, seed=seed, batch=batch_size, chunk=INSIDE_CHUNK)
    measured = resume.load_pieces(saved, key, lambda m: print(m, file=sys.stderr))
    if measured:
        print(f"[inside] resuming: {len(measured)} chunks measured before", file=sys.stderr)
    frames = []
    for s in range(0, len(order), INSIDE_CHUNK):
        if frames and max_minutes is not None and time.time() - started > 60 * max_minutes:
            print(f"[inside] time budget of {max_minutes} min spent: {sum(map(len, frames))} of {len(sample)} "
                  "rows measured", file=sys.stderr)
            break
        rows_now = sample.iloc[order[s: s + INSIDE_CHUNK]]
        if s in measured:
            frames.append(from_columns(rows_now, measured[s]))
            continue
        frames.append(measure_rows(pipe, rows_now, batch_size, progress))
        measured[s] = to_columns(frames[-1])
        resume.save_pieces(saved, key, measured)
        done = sum(map(len, frames))
        print(f"[inside] {done}/{len(sample)} rows, {done / (time.time() - started):.3f} rows/s", file=sys.stderr,
              flush=True)
    frame = pd.concat(frames, ignore_index=True)
    seconds = time.time() - started
    result = {"protocol": {"data": pipe.dataset.name, "split": "test", "rows": int(len(frame)), "seed": seed,
                           "rows_asked": int(len(sample)), "max_minutes": max_minutes,
                           "sampling": "stratified: up to a quarter cold-item rows, the rest half warm-user and "
                                       "half cold-user rows among warm items; measured in a seeded random order",
                           "parity_max_abs": round(float(np.abs(frame["score"] - frame["score_full"]).max()), 7),
                           "cf": pipe.cf_name, "llm": pipe.llm.name, "checkpoints": str(checkpoint_dir),
                           "no_information": "the CF model's default_user / default_item (what an unseen user or "
                                             "item gets)",
                           "seconds": round(seconds, 1), "rows_per_s": round(len(frame) / seconds, 3),
                           "bootstrap": f"{INSIDE_BOOTSTRAP} resamples, 95% percentile intervals",
                           "command": "python -m collm_demo " + " ".join(shlex.quote(a) for a in (argv or []))},
              "layers": int(len(frame["attn_user"].iloc[0])), "groups": list(GROUPS)}
    result |= summary(frame, seed)
    result["neighbourhood"] = neighbourhoods(pipe)
    result["finding"] = finding(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    saved.unlink(missing_ok=True)
    print(result["finding"])
    return result


# ------------------------------------------------------------------ resuming a stopped run

MEASURED = ("attn_user", "attn_item", "attr_user", "attr_item", "score")  # and every score_* column


def to_columns(frame: pd.DataFrame) -> dict[str, torch.Tensor]:
    """A chunk's measured columns as tensors (the row identity is the sample's, rebuilt on resume)."""
    names = [*MEASURED, *(c for c in frame.columns if c.startswith("score_"))]
    return {name: torch.from_numpy(np.stack(frame[name].to_numpy()) if name.startswith("attn_")
                                   else np.array(frame[name].to_numpy())) for name in names}  # dtypes kept: the same report


def from_columns(rows: pd.DataFrame, columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    frame = rows[["user", "item", "label", "warm", "cold_user", "cold_item"]].reset_index(drop=True).copy()
    for name, values in columns.items():
        frame[name] = list(values.numpy()) if name.startswith("attn_") else values.numpy()
    return frame


# ------------------------------------------------------------------ one prompt, for the app

WHY_LENS_DIFFERS = ("The nearest input words compare the token with the vocabulary's *input* embeddings, which "
                    "the LLM never compares against; the logit lens reads what the token's hidden state has become "
                    "after each layer through the model's own final norm and output head, so it shows what the "
                    "layers make of the token rather than which word it happens to resemble on the way in.")


def explain_prompt(pipe, history: Sequence[str], labels: Sequence[int], item: str, user_vec: torch.Tensor,
                   top_k: int = 5) -> dict:
    """Everything the "Inside the LLM" view shows for one (history, candidate), as plain JSON:
    attention shares by layer with CF on and off, per-token attribution, ablation scores, the logit
    lens of both CF slots and their nearest input words (``Pipeline.look_inside``: five passes of the
    engine; this function only shapes them)."""
    from .embedding_map import nearest_words

    look = pipe.look_inside(history, labels, item, user_vec, top_k)
    words = nearest_words(pipe, look.slot_tokens.numpy(), top_k)
    contrib = look.attribution.numpy()
    return {"title": look.target, "groups": list(GROUPS), "layers": look.layers,
            "score_cf": look.score_cf, "score_text": look.score_text,
            "attention": {"cf_on": _round(group_shares(look.attention_on, look.groups_on), 5),
                          "cf_off": _round(group_shares(look.attention_off, look.groups_off), 5)},
            "attribution": {"tokens": look.tokens, "groups": look.groups_on, "values": _round(contrib, 6),
                            "shares": {g: round(v, 5) for g, v in attribution_shares(contrib, look.groups_on).items()},
                            "method": "gradient x input of logit(Yes) - logit(No) on the input embeddings"},
            "ablation": look.ablation,
            "logit_lens": {"user slot": [[[w, round(p, 5)] for w, p in row] for row in look.lens_user],
                           "item slot": [[[w, round(p, 5)] for w, p in row] for row in look.lens_item]},
            "nearest_input_words": {"user slot": [[w, round(s, 4)] for w, s in words[0]],
                                    "item slot": [[w, round(s, 4)] for w, s in words[1]]},
            "why_they_differ": WHY_LENS_DIFFERS}
