"""How much does the text add on top of the CF model? A fusion-ceiling diagnostic.

CoLLM fuses two signals inside the LLM: what the prompt's text says (titles, the history)
and what the CF vectors say. Before asking whether the *LLM* fuses them well, ask how much
*any* simple fusion of the two scores gains over the CF model alone:

* score held-out valid rows (never trained on, never used for early stopping) with the CF
  model, the text-only LLM (stage 1) and CoLLM (stage 2);
* fit a logistic regression on the logits ``[text_only, cf]`` with k-fold cross-fitting:
  every row is scored by a model fit on the *other* folds, so the fused AUC is honest;
* compare: fused vs CF alone tells how much usable signal the text carries beyond CF.
  If it is about zero, CoLLM (which draws on the same two sources) has little room to beat
  the CF model on those rows. A rough ceiling, not a proof: the LLM sees the full vectors
  and the prompt, not two numbers.

Also reported: the CF model with users unseen in training left at the no-information vector
(the CoLLM paper's handling of new users) instead of folded in from their history, to show
how much of the CF baseline's strength is the fold-in.

**Within a user** (issue 26: UAUC, each user's own rows ranked): the same signals' UAUC, plus the
share of "(liked)" marks in the history, and *within-user fusions*: a logistic regression without
intercept on the differences between one user's liked and disliked rows' logits (what UAUC
rewards; a per-user offset cancels out), cross-fitted by user, so a user's rows are ranked by
weights fit on other users. If the within-user fusion of the CF signals does not beat item appeal
alone (the CF model without fold-in), the CF vectors carry no within-user signal beyond it here.

    python -m collm_demo ceiling [--cf mf] [--rows 1600]
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict

from .config import CEILING_ROWS, DEFAULT_CF, ProtocolConfig, TrainConfig
from .data import Dataset, history_like_share, projector_pool, sample_rows
from .device import Runtime
from .errors import CheckpointError, InputError
from .evaluate import SLICES, auc_uauc
from .pipeline import load_pipeline


def held_out_valid_rows(dataset: Dataset, cfg: TrainConfig, manifest: dict, n: int, seed: int = 7) -> pd.DataFrame:
    """Up to ``n`` valid rows that no stage trained or early-stopped on.

    Stage 2 draws its rows with ``sample_rows(valid minus early-stop rows, k, cfg.seed)``; a
    seeded sample of k rows is the first k rows of one fixed permutation, so excluding the
    largest k any projector was configured with excludes every projector's rows.
    """
    pool = projector_pool(dataset, cfg)
    sizes = [cfg.projector_rows] + [int(stage.get("rows_seen", 0)) for name, stage in
                                    manifest.get("stages", {}).items() if name.startswith("projector")]
    used = sample_rows(pool, max(sizes), cfg.seed)
    rest = pool.drop(index=used.index)
    if len(rest) == 0:
        raise InputError(f"no valid rows are left out of training (valid pool {len(pool)}, "
                         f"projector rows {max(sizes)}): train the projector on fewer rows")
    return rest.sample(n=min(n, len(rest)), random_state=seed).sort_index()


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def cross_fitted_fusion(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Logistic regression on ``features`` (rows × signals), each row scored by a model fit
    on the other folds (stratified, shuffled, seeded). Returns decision values per row."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("fusion needs both labels among the rows")
    folds = max(2, min(folds, int(np.bincount(labels.astype(int)).min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(), features, labels, cv=splitter, method="decision_function")


def auc_by_slice(labels: np.ndarray, scores: np.ndarray, warm: np.ndarray) -> dict:
    out = {}
    for name, mask in (("all", np.ones_like(warm, dtype=bool)), ("warm", warm), ("cold", ~warm)):
        y = labels[mask]
        out[name] = {"auc": round(float(roc_auc_score(y, scores[mask])), 4) if len(np.unique(y)) == 2 else None,
                     "n": int(mask.sum())}
    return out


def fusion_report(labels: np.ndarray, logits: dict[str, np.ndarray], warm: np.ndarray,
                  fusions: dict[str, tuple[str, ...]], folds: int = 5, seed: int = 0) -> dict:
    """AUC by slice of every signal in ``logits`` and of each cross-fitted fusion of them."""
    labels, warm = np.asarray(labels), np.asarray(warm, dtype=bool)
    report = {name: auc_by_slice(labels, values, warm) for name, values in logits.items()}
    for name, parts in fusions.items():
        fused = cross_fitted_fusion(np.stack([logits[p] for p in parts], 1), labels, folds, seed)
        report[name] = auc_by_slice(labels, fused, warm)
    return report


def within_user_pairs(features: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature differences (liked row − disliked row) for every pair of one user's rows, and each
    pair's weight, 1 / (that user's pairs): every user counts once, as in UAUC."""
    diffs, weights = [], []
    for user in np.unique(users):
        mine = users == user
        liked, disliked = features[mine & (labels == 1)], features[mine & (labels == 0)]
        if len(liked) and len(disliked):
            diffs.append((liked[:, None, :] - disliked[None, :, :]).reshape(-1, features.shape[1]))
            weights.append(np.full(len(liked) * len(disliked), 1.0 / (len(liked) * len(disliked))))
    if not diffs:
        return np.empty((0, features.shape[1])), np.empty(0)
    return np.concatenate(diffs), np.concatenate(weights)


def within_user_fusion(features: np.ndarray, labels: np.ndarray, users: np.ndarray, folds: int = 5) -> np.ndarray:
    """Scores from a logistic regression without intercept on within-user pair differences
    (``within_user_pairs``, every user weighted alike): weights that order one user's rows. Cross-fitted by user: each
    user's rows are scored with weights fit on the other users' pairs (all 0, no ordering, where
    no other user has both labels among the rows)."""
    labels, users = np.asarray(labels), np.asarray(users)
    groups = min(folds, len(np.unique(users)))
    if groups < 2:
        raise ValueError("within-user fusion needs rows of at least two users")
    scores = np.zeros(len(labels))
    for train, test in GroupKFold(n_splits=groups).split(features, labels, users):
        diffs, weights = within_user_pairs(features[train], labels[train], users[train])
        if len(diffs) == 0:  # no user of the other folds has both labels: nothing to fit, no ordering
            continue
        # Each pair once as it is (target 1) and once negated (target 0): a symmetric problem. The
        # weights are scaled to average 1 over this fold's pairs, so the regularisation is that of
        # an unweighted fit on as many pairs, whatever the fold's number of users.
        weights = weights * len(weights) / weights.sum()
        fit = LogisticRegression(fit_intercept=False).fit(np.vstack([diffs, -diffs]),
                                                          np.r_[np.ones(len(diffs)), np.zeros(len(diffs))],
                                                          sample_weight=np.r_[weights, weights])
        scores[test] = features[test] @ fit.coef_[0]
    return scores


def within_user_report(frame: pd.DataFrame, logits: dict[str, np.ndarray],
                       fusions: dict[str, tuple[str, ...]], folds: int = 5) -> dict:
    """UAUC (all users; users seen in training) of every signal and of each within-user fusion."""
    table = frame[["user", "label", "cold_user"]].copy()
    for name, values in logits.items():
        table[name] = values
    for name, parts in fusions.items():
        table[name] = within_user_fusion(np.stack([logits[p] for p in parts], 1), table["label"].to_numpy(),
                                         table["user"].to_numpy(), folds)
    seen = table[~table["cold_user"]]
    return {name: {"all": auc_uauc(table, name), "warm_user": auc_uauc(seen, name) if len(seen) else None}
            for name in [*logits, *fusions]}


def report_table(report: dict) -> str:
    lines = ["| signal | all AUC | warm AUC | cold AUC |", "|---|---|---|---|"]
    for name, slices in report.items():
        cells = [f"{slices[s]['auc']:.4f}" if slices[s]["auc"] is not None else "—" for s in SLICES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = next(iter(report.values()))
    lines.append(f"\nRows: all {n['all']['n']}, warm {n['warm']['n']}, cold {n['cold']['n']} "
                 "(held-out valid rows; fusions cross-fitted, 5 folds).")
    return "\n".join(lines)


def run(checkpoint_dir: Path, out: Path | None, llm_name: str | None = None, data_path: str | None = None,
        cf_name: str = DEFAULT_CF, rows: int = CEILING_ROWS, cfg: TrainConfig | None = None,
        argv: list[str] | None = None, runtime: Runtime | None = None, protocol: ProtocolConfig | None = None) -> dict:
    """``cfg`` must be the configuration the checkpoints were trained with (seed, quick or not):
    it decides which valid rows the projector saw and so which rows are held out."""
    pipeline = load_pipeline(checkpoint_dir, llm_name, data_path, cf_name=cf_name, runtime=runtime, protocol=protocol)
    for needed in (pipeline.cf_method, "text_only"):
        if needed not in pipeline.available_methods():
            raise CheckpointError(f"the ceiling needs {needed!r}, which is not available here: {pipeline.notice}")
    cfg = cfg or TrainConfig()
    frame = held_out_valid_rows(pipeline.dataset, cfg, pipeline.manifest, rows)
    labels = frame["label"].to_numpy()
    cf, text, collm = pipeline.cf_method, "text_only", pipeline.collm_method
    methods = [cf, text] + ([collm] if collm in pipeline.available_methods() else [])  # CoLLM row optional
    logits = {}
    for method in methods:
        print(f"[ceiling] scoring {len(frame)} held-out valid rows with {method}", file=sys.stderr, flush=True)
        logits[method] = logit(pipeline.score_rows(frame, method).numpy())
    logits[f"{cf} without fold-in"] = logit(pipeline.cf_scores_without_foldin(frame).numpy())
    fusions = {f"fusion: {text} + {cf}": (text, cf)}
    if collm in logits:
        fusions[f"fusion: {collm} + {cf}"] = (collm, cf)
    report = fusion_report(labels, logits, frame["warm"].to_numpy(), fusions)
    table = report_table(report)
    print(table)
    signals = dict(logits, **{"share of liked films in the history": logit(history_like_share(frame))})
    cf_parts = (cf, f"{cf} without fold-in", "share of liked films in the history")
    within_fusions = {f"within-user fusion: {' + '.join(cf_parts)}": cf_parts,
                      f"within-user fusion: {text} + the three above": (text, *cf_parts)}
    if collm in signals:
        within_fusions[f"within-user fusion: {collm} + the three above"] = (collm, *cf_parts)
    within = within_user_report(frame, signals, within_fusions)
    print("\n| signal | UAUC (all users) | UAUC (users seen in training) |\n|---|---|---|")
    for name, cell in within.items():
        seen = cell["warm_user"]["uauc"] if cell["warm_user"] else "—"
        print(f"| {name} | {cell['all']['uauc']} ({cell['all']['uauc_users']} users) | {seen} |")
    result = {"rows": {"split": "valid, held out of every training stage and of early stopping",
                       "n": int(len(frame)), "cold_user": int(frame["cold_user"].sum())},
              "cf": cf_name, "report": report, "within_user": within,
              "command": "python -m collm_demo " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
