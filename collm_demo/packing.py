"""Prompts' token sequences into padded tensors, and the plans that let prompts share work.

Pure tensor bookkeeping, no model: ``pack`` pads whole prompts or prefixes into a :class:`Batch`;
``pack_segments`` lays several suffixes that continue one cached prefix end to end in a row, with
the 4D mask that keeps them apart; ``plan_prefix_batches`` and ``plan_packed_rows`` decide which
prompts share a prefix run and a row; ``select_rows`` hands each row its prefix's KV cache. The
model (``collm.CoLLM``) runs what these build; ``scoring.py`` drives them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Prompt:
    """The token ids of one prompt in its two parts, and where its CF slots are (``PromptBuilder``
    in collm.py makes them; everything here only packs them)."""

    prefix: list[int]  # token ids shared by all candidates of one user
    suffix: list[int]  # token ids of this candidate
    user_slot: int | None  # index into prefix of the user CF token (None when CF is off)
    item_slot: int | None  # index into suffix of the item CF token
    shared: int = 0  # prefix[:shared] (the opening, up to the end of the history) is the same in both modes

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.suffix

    def segments(self, split: bool) -> list[list[int]]:
        """The pieces ``score_shared`` runs one after another on one cache: [opening, rest of the
        prefix, suffix] (``split``), or [prefix, suffix]."""
        if split:
            return [self.prefix[: self.shared], self.prefix[self.shared:], self.suffix]
        return [self.prefix, self.suffix]

    @property
    def item_pos(self) -> int | None:
        """Index of the item CF token in ``ids`` (the user token's is ``user_slot``)."""
        return None if self.item_slot is None else len(self.prefix) + self.item_slot

    def __len__(self) -> int:
        return len(self.prefix) + len(self.suffix)


@dataclass
class Batch:
    """Token sequences padded into one tensor, ready for the LLM, with the CF slots to write."""

    ids: torch.Tensor  # (B, T) token ids, padding included
    mask: torch.Tensor  # (B, T) 1 for real tokens
    positions: torch.Tensor  # (B, T) rotary positions of the real tokens (padding never shifts them)
    slot_rows: torch.Tensor  # (S,) batch row of each CF slot
    slot_cols: torch.Tensor  # (S,) column of each CF slot
    cf: torch.Tensor | None  # (S, cf_dim) the CF vector written at each slot; None when there is no slot
    last: torch.Tensor  # (B,) column of each row's last real token: the answer position
    # (B, 1, T, past + T) True where a token may attend, past included: only for rows that pack
    # several sequences (``pack_segments``); None = causal within the row over ``mask``.
    attention: torch.Tensor | None = None
    # (S,) True where the slot is a user slot: a projector with its own user mapping needs to know.
    slot_users: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(*(None if t is None else t.to(device) for t in
                       (self.ids, self.mask, self.positions, self.slot_rows, self.slot_cols, self.cf, self.last,
                        self.attention, self.slot_users)))


# One CF slot for ``pack``: (index in the sequence, CF vector, is it the user's slot?).
Slot = tuple[int, torch.Tensor, bool]


def pack(seqs: Sequence[Sequence[int]], slots: Sequence[Sequence[Slot]], pad_id: int,
         left: bool, start: torch.Tensor | None = None) -> Batch:
    """Pad ``seqs`` into a :class:`Batch`. ``slots[b]`` lists ``(index in seqs[b], cf vector, is_user)``.

    ``left=True`` pads on the left, so every row ends at the last column (whole prompts, prefixes);
    ``left=False`` pads on the right (suffixes that continue a cached prefix). ``start[b]`` is the
    rotary position of row b's first token (the length of its cached prefix; 0 without a cache).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, vectors, users = [], [], [], []
    for b, (seq, seq_slots) in enumerate(zip(seqs, slots)):
        offset = width - len(seq) if left else 0
        ids[b, offset: offset + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, offset: offset + len(seq)] = 1
        for index, vector, is_user in seq_slots:
            rows.append(b), cols.append(offset + index), vectors.append(vector), users.append(is_user)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if start is not None:
        positions = positions + start.view(-1, 1)
    last = torch.full((len(seqs),), width - 1) if left else mask.sum(-1) - 1
    return Batch(ids, mask, positions, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                 torch.stack(vectors) if vectors else None, last, slot_users=torch.tensor(users, dtype=torch.bool))


def plan_packed_rows(owners: Sequence[int], lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """How suffixes that continue the same cached prefix share rows (``pack_segments``): per owner
    (cache row), the fewest rows of at most ``row_tokens`` tokens, filled evenly (a suffix longer
    than that gets a row of its own; ``row_tokens=0``: one suffix per row). Returns rows → indices
    into ``owners``, each row with one owner. Pure: no model, no tensors."""
    by_owner: dict[int, list[int]] = {}
    for index, owner in enumerate(owners):
        by_owner.setdefault(owner, []).append(index)
    rows: list[list[int]] = []
    for members in by_owner.values():
        if row_tokens <= 0:
            rows += [[m] for m in members]
            continue
        total = sum(lengths[m] for m in members)
        target = total / -(-total // row_tokens)  # even rows: total / (number of rows needed)
        current, filled = [], 0
        for m in members:
            if current and (filled + lengths[m] > row_tokens or filled >= target):
                rows.append(current)
                current, filled = [], 0
            current.append(m)
            filled += lengths[m]
        rows.append(current)
    return rows


def pack_segments(rows: Sequence[Sequence[Sequence[int]]],
                  slots: Sequence[Sequence[Sequence[Slot]]], pad_id: int,
                  start: torch.Tensor, past_mask: torch.Tensor) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Several suffixes per row, each continuing the row's cached prefix: ``rows[b]`` lists the
    token sequences laid end to end in row b, ``slots[b][j]`` the CF slots of sequence j. Each
    sequence sees the prefix (``past_mask[b]``) and itself, causally, never its neighbours, and its
    rotary positions start at ``start[b]``, so every one computes exactly what it would alone in a
    padded row. Padding (right) costs only the row tails. Returns the batch and, for every
    sequence in order, the (row, column) of its last token: the answer positions."""
    width = max(sum(len(seq) for seq in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # which sequence owns the column
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    slot_rows, slot_cols, vectors, users, answer_rows, answer_cols = [], [], [], [], [], []
    for b, (row, row_slots) in enumerate(zip(rows, slots)):
        offset = 0
        for j, (seq, seq_slots) in enumerate(zip(row, row_slots)):
            span = slice(offset, offset + len(seq))
            ids[b, span] = torch.tensor(seq, dtype=torch.long)
            mask[b, span], segment[b, span] = 1, j
            positions[b, span] = start[b] + torch.arange(len(seq))
            for index, vector, is_user in seq_slots:
                slot_rows.append(b), slot_cols.append(offset + index), vectors.append(vector)
                users.append(is_user)
            offset += len(seq)
            answer_rows.append(b), answer_cols.append(offset - 1)
    query, key = torch.arange(width).view(-1, 1), torch.arange(width).view(1, -1)
    same = (segment[:, :, None] == segment[:, None, :]) & (key <= query) & (segment[:, None, :] >= 0)
    # Padding queries look at themselves only: their outputs are never read, but they must stay finite
    # (a fully masked row would give NaN keys/values to the next layer).
    same |= (segment[:, :, None] < 0) & (key == query)
    past = past_mask.bool()[:, None, :].expand(-1, width, -1)
    attention = torch.cat([past, same], -1)[:, None]
    batch = Batch(ids, mask, positions, torch.tensor(slot_rows, dtype=torch.long),
                  torch.tensor(slot_cols, dtype=torch.long), torch.stack(vectors) if vectors else None,
                  mask.sum(-1) - 1, attention, torch.tensor(users, dtype=torch.bool))
    return batch, torch.tensor(answer_rows), torch.tensor(answer_cols)


def plan_prefix_batches(prefix_keys: Sequence[Hashable], prefix_lengths: Sequence[int], prefix_batch: int,
                        suffix_batch: int) -> list[list[list[int]]]:
    """How ``score_shared`` shares work: prompts with equal ``prefix_keys`` form a group (one
    prefix run, many suffixes); groups are ordered by prefix length and packed into batches of at
    most ``prefix_batch`` prefixes and, where a group allows, ``suffix_batch`` suffixes.
    Returns batches → groups → prompt indices. Pure: no model, no tensors."""
    groups: dict[Hashable, list[int]] = {}
    for n, key in enumerate(prefix_keys):
        groups.setdefault(key, []).append(n)
    ordered = sorted(groups.values(), key=lambda members: prefix_lengths[members[0]])
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    count = 0
    for members in ordered:
        if current and (len(current) >= prefix_batch or count + len(members) > suffix_batch):
            batches.append(current)
            current, count = [], 0
        current.append(members)
        count += len(members)
    if current:
        batches.append(current)
    return batches


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A cache holding only batch rows ``rows`` of ``cache`` (one row per suffix that continues it)."""
    out = DynamicCache()
    for n, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), n)
    return out
