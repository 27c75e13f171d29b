"""Training on one user at a time: groups of a user's candidates that share one history.

Per-row BCE on mixed users is minimised by "item appeal + a user's like-rate", and a model that
leans on the share of "(liked)" marks in the history ranks a user's own films below chance (the
share moves with the sliding history window and is anti-correlated with the next label within a
user). Inside a *group* (one user, one history for all its candidates) that share is constant, so
only the item and user tokens and the titles can order the group: with a within-group pairwise
term beside BCE the objective becomes what UAUC measures (issue 26). Evaluation keeps the
per-row protocol.

* :func:`user_groups`: rows → groups of up to ``size`` consecutive rows of one user, all shown
  the history of the group's first row (strictly earlier than every row of the group);
* :func:`pairwise_loss`: logistic loss on the score differences of liked vs disliked rows of a
  group (a RankNet / BPR term);
* :func:`grouped_logits`: a group's prompts run as one prefix and K packed suffixes with
  gradients (what ``score_shared`` does without them): the prefix once per group instead of once
  per row. Same logits and gradients as running the whole prompts one by one (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F  # noqa: N812 (torch's own idiom)
from transformers import DynamicCache

from .packing import Prompt, Slot, pack_segments, plan_packed_rows, select_rows

if TYPE_CHECKING:
    from .collm import CoLLM


def user_groups(rows: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """``rows`` regrouped by user: each user's rows in time order, cut into groups of at most
    ``size`` consecutive rows; every row of a group gets the history of the group's first row
    (strictly earlier than all of them, so no row sees its own label or a later one). Returns the
    rows with a ``group`` column (0, 1, ...), groups in a seeded random order, a group's rows
    together. ``size=1`` keeps each row's own history (per-row training, shuffled)."""
    if size < 1:
        raise ValueError(f"group size must be at least 1, not {size}")
    ordered = rows.sort_values(["user", "timestamp"], kind="stable")
    pieces = []
    for _, user_rows in ordered.groupby("user", sort=False):
        for start in range(0, len(user_rows), size):
            group = user_rows.iloc[start: start + size].copy()
            first = group.iloc[0]
            group["history_items"] = [first["history_items"]] * len(group)
            group["history_labels"] = [first["history_labels"]] * len(group)
            if "liked_items" in group:  # the paper's history style: the first row's, too
                group["liked_items"] = [first["liked_items"]] * len(group)
            pieces.append(group)
    order = np.random.default_rng(seed).permutation(len(pieces))
    out = pd.concat([pieces[n] for n in order])
    out["group"] = np.repeat(np.arange(len(pieces)), [len(pieces[n]) for n in order])
    return out


def pairwise_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of softplus(-(s_liked - s_disliked)) over every (liked, disliked) pair of rows in the
    same group: log(1 + e^-d) for a pair ordered by a margin d. Zero (with a gradient of zero) when
    no group has both classes."""
    same = groups.view(-1, 1) == groups.view(1, -1)
    ordered = labels.view(-1, 1) > labels.view(1, -1)  # row i liked, row j disliked
    pairs = same & ordered
    if not bool(pairs.any()):
        return logits.sum() * 0.0
    differences = logits.view(-1, 1) - logits.view(1, -1)
    return F.softplus(-differences[pairs]).mean()


def can_split_opening(model: CoLLM, heads: Sequence[Prompt]) -> bool:
    """Whether nothing in the prompts' openings (up to the end of the history) can receive a gradient:
    no LLM parameter trains (stage 2 with the paper's frozen LoRA; the projector is outside the LLM)
    and no CF slot lies in the opening. Then the opening needs a forward pass only, no backward
    (fewer FLOPs per group and no activations kept for the opening; benchmarks/bench_grouped.py)."""
    if not torch.is_grad_enabled() or any(p.requires_grad for p in model.llm.parameters()):
        return False
    return all(0 < p.shared < len(p.prefix) and (p.user_slot is None or p.user_slot >= p.shared) for p in heads)


def grouped_logits(model: CoLLM, prompts: Sequence[Prompt], groups: Sequence[Sequence[int]],
                   user_vecs: torch.Tensor | None = None, item_vecs: torch.Tensor | None = None,
                   row_tokens: int = 256, split_opening: bool | None = None) -> torch.Tensor:
    """logit(Yes) - logit(No) per prompt, with gradients, computed group by group: the prompts of a
    group share one prefix (one history, one user vector), which runs once with a KV cache; the
    group's suffixes then run packed end to end on that cache (``packing.pack_segments``: each sees
    the prefix and itself only). ``groups`` lists prompt indices; the result is in prompt order.
    ``split_opening`` (default: ``can_split_opening``) runs the prefix's opening without gradients
    and the rest of the prefix, from the user slot on, with them: same logits and gradients."""
    for members in groups:
        if any(prompts[n].prefix != prompts[members[0]].prefix for n in members):
            raise ValueError("the prompts of a group must share one prefix (one history)")
    heads = [members[0] for members in groups]
    if split_opening is None:
        split_opening = can_split_opening(model, [prompts[h] for h in heads])
    cut = [prompts[h].shared if split_opening else 0 for h in heads]  # where the part with gradients starts
    prefix_slots = [[] if user_vecs is None or prompts[h].user_slot is None
                    else [(prompts[h].user_slot - c, user_vecs[h], True)] for h, c in zip(heads, cut)]
    cache = DynamicCache()
    if split_opening:  # the opening (history) depends on nothing that trains: forward only, no activations kept
        opening = model._pack([prompts[h].prefix[:c] for h, c in zip(heads, cut)], [[] for _ in heads], left=True)
        with torch.no_grad():
            model._run(opening, cache)
        rest = model._pack([prompts[h].prefix[c:] for h, c in zip(heads, cut)], prefix_slots, left=False,
                           start=opening.mask.sum(-1))
        model._run(rest, cache, opening.mask)
        mask = torch.cat([opening.mask, rest.mask], 1)
    else:
        batch = model._pack([prompts[h].prefix for h in heads], prefix_slots, left=True)
        model._run(batch, cache)
        mask = batch.mask
    length = mask.sum(-1)
    chunk = [(row, n) for row, members in enumerate(groups) for n in members]
    packed = plan_packed_rows([row for row, _ in chunk], [len(prompts[n].suffix) for _, n in chunk], row_tokens)
    owner = torch.tensor([chunk[r[0]][0] for r in packed])
    order = [chunk[i][1] for r in packed for i in r]

    def item_slots(n: int) -> list[Slot]:
        return [] if item_vecs is None or prompts[n].item_slot is None else [(prompts[n].item_slot, item_vecs[n], False)]

    suffix, answer_rows, answer_cols = pack_segments(
        [[prompts[chunk[i][1]].suffix for i in r] for r in packed], [[item_slots(chunk[i][1]) for i in r] for r in packed],
        model.pad_id, length[owner], mask[owner])
    hidden = model._run(suffix, select_rows(cache, owner.to(model.device))).last_hidden_state
    answers = model.answer_logit(hidden[answer_rows.to(hidden.device), answer_cols.to(hidden.device)])
    return answers[torch.tensor(np.argsort(order), device=answers.device)]  # back to prompt order
