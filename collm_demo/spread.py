"""Keeping users apart in the projector: a term that carries the CF vectors' similarity structure
over to the mapped tokens (issue 26, lever 4).

Measured on the shipped projector: two opposite users whose MF vectors have cosine 0.04 get user
tokens with cosine 0.91. The projector maps users onto nearly one direction (what BCE on mixed
users rewards: item appeal plus a one-dimensional like-rate), and then no LLM can tell them apart.
CoLLM's code has a term against this, switched off there: the squared difference between the
pairwise-similarity matrices of the raw CF vectors and of the mapped tokens. This is that idea,
written for our case:

* on *cosine* similarities of the vectors as they are. Not centred on purpose: measured on the
  shipped projector, the mapped users' cosines *after* centring still follow the MF vectors'
  (correlation 0.75), but a large offset shared by every user token dominates (mean cosine 0.94
  between random users' tokens). The LLM reads the token as it is, so the offset is the collapse;
  the term penalises it;
* on a fresh seeded sample of users and, separately, of items from the CF tables at every
  micro-batch, not on the batch's own rows (a batch of user groups holds one or two users);
* the mean squared difference of the off-diagonal entries, so a weight of 1 is on the scale of BCE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch's own idiom)

SAMPLE = 64  # users (and items) per micro-batch: 2,016 pairs each, a few microseconds of projector work


def cosines(vectors: torch.Tensor) -> torch.Tensor:
    """(N, d) → the (N, N) cosine similarities of the rows."""
    unit = F.normalize(vectors.float(), dim=-1)
    return unit @ unit.T


def similarity_loss(projector: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the off-diagonal cosines of ``vectors`` (N, d) and of their
    mapped tokens ``projector(vectors)``: 0 when the mapping keeps every pair's angle."""
    off_diagonal = ~torch.eye(len(vectors), dtype=torch.bool, device=vectors.device)
    wanted = cosines(vectors)[off_diagonal]
    got = cosines(projector(vectors))[off_diagonal]
    return F.mse_loss(got, wanted)


def spread_sample(user_table: torch.Tensor, item_table: torch.Tensor, seed: int, batch: int,
                  size: int = SAMPLE) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` users and ``size`` items drawn without replacement, the same for the same
    (seed, batch index): a resumed run draws what an uninterrupted one drew."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + batch)
    users = torch.randperm(len(user_table), generator=generator)[:size]
    items = torch.randperm(len(item_table), generator=generator)[:size]
    return user_table[users], item_table[items]


def spread_loss(projector: nn.Module, user_table: torch.Tensor, item_table: torch.Tensor, seed: int,
                batch: int) -> torch.Tensor:
    """The similarity term on this micro-batch's sample: users and items, each among their own kind."""
    users, items = spread_sample(user_table, item_table, seed, batch)
    device = next(projector.parameters()).device
    return (similarity_loss(lambda v: projector(v, True), users.to(device))
            + similarity_loss(lambda v: projector(v, False), items.to(device)))
