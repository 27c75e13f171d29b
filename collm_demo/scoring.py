"""How prompts are scored: the strategies over the one forward pass of ``collm.CoLLM``.

``score`` runs whole prompts in left-padded batches (the naive reference path); ``score_shared``
encodes each distinct prefix once, keeps its KV cache and runs only the candidate suffixes, packed
with a 4D mask (same scores within 1e-5, tested); ``score_candidates`` is its one-user form;
``score_modes`` scores text-only and CF prompts of the same rows in one call, the history encoded
once for both. They are methods of the model through :class:`ScoringMixin`, as transformers keeps
``generate`` in a mixin beside the model file: the model file holds the model, the machinery that
drives it lives here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import DynamicCache

from .packing import Prompt, Slot, pack_segments, plan_packed_rows, plan_prefix_batches, select_rows


class ScoringMixin:
    """Scoring strategies of ``CoLLM`` (they use its ``session``, ``forward``, ``_pack``, ``_run``,
    ``_slots`` and ``answer_logit``)."""

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
              item_vecs: torch.Tensor | None = None, use_lora: bool = True, batch_size: int = 16,
              progress=None) -> torch.Tensor:
        """P(Yes) for each prompt, whole prompts in batches formed by length: the reference path."""
        order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))
        out = torch.empty(len(prompts))
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        with self.session(use_lora, user_vecs is not None or item_vecs is not None):
            for batch in (progress(batches) if progress else batches):
                logits = self.forward([prompts[n] for n in batch],
                                      None if user_vecs is None else user_vecs[batch],
                                      None if item_vecs is None else item_vecs[batch])
                out[batch] = torch.sigmoid(logits).cpu()
        return out

    @torch.no_grad()
    def score_candidates(self, prompts: Sequence[Prompt], user_vec: torch.Tensor | None = None,
                         item_vecs: torch.Tensor | None = None, use_lora: bool = True,
                         batch_size: int = 64) -> torch.Tensor:
        """One user, K candidates sharing one prefix (the app's case): see ``score_shared``."""
        if prompts and any(p.prefix != prompts[0].prefix for p in prompts):
            raise ValueError("score_candidates needs prompts that share one prefix")
        users = None if user_vec is None else user_vec.view(1, -1).expand(len(prompts), -1)
        return self.score_shared(prompts, users, item_vecs, use_lora, suffix_batch=batch_size)

    @torch.no_grad()
    def score_shared(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
                     item_vecs: torch.Tensor | None = None, use_lora: bool = True, prefix_batch: int = 16,
                     suffix_batch: int = 64, progress=None, shard: tuple[int, int] | None = None,
                     suffix_row_tokens: int = 256) -> torch.Tensor:
        """P(Yes) like ``score``, computed by sharing what prompts have in common (within 1e-5, tested).

        Prompts with the same prefix (same history, same user CF vector) form a group: the prefix
        runs once with a KV cache, then every candidate's suffix runs on that cache. When both
        modes of a user are scored together (text-only and CF prompts in one call), the opening
        they share (up to the end of the history) runs once too, and each mode's rest of the
        prefix continues it: a tree of caches, opening → prefix → suffixes.
        ``shard=(rank, world)`` runs only batches rank, rank + world, ... of the plan and leaves
        0 for the other prompts (``distributed.Ranks.merge`` sums the shares back, exactly).
        """
        out = torch.zeros(len(prompts))
        if not prompts:
            return out
        tree = _CacheTree.of(prompts, user_vecs, item_vecs)
        plan = plan_prefix_batches([tree.key(n, 0) for n in range(len(prompts))], [len(s[0]) for s in tree.segments],
                                   prefix_batch, suffix_batch)
        if shard is not None:
            plan = plan[shard[0]::shard[1]]
        with self.session(use_lora, user_vecs is not None or item_vecs is not None):
            for groups in (progress(plan) if progress else plan):
                prefixes = self._run_prefixes(tree, groups)
                self._run_suffixes(tree, prefixes, out, suffix_batch, suffix_row_tokens)
        return out

    def _run_prefixes(self, tree: _CacheTree, groups: list[list[int]]) -> _Prefixes:
        """Every level of the tree but the last for one batch of groups: the groups' first segment,
        left-padded, from scratch; then each node's members regroup by their next segment, which
        continues the node's cache (one level for two modes sharing their opening, else none)."""
        heads = [g[0] for g in groups]
        batch = self._pack([tree.segments[n][0] for n in heads], [tree.slots(n, 0) for n in heads], left=True)
        cache = DynamicCache()
        self._run(batch, cache)
        mask, length, nodes = batch.mask, batch.mask.sum(-1), groups
        for level in range(1, tree.levels - 1):
            children, owners = [], []
            for row, members in enumerate(nodes):
                sub: dict[Hashable, list[int]] = {}
                for n in members:
                    sub.setdefault(tree.key(n, level), []).append(n)
                children += sub.values()
                owners += [row] * len(sub)
            owner = torch.tensor(owners)
            heads = [c[0] for c in children]
            batch = self._pack([tree.segments[n][level] for n in heads], [tree.slots(n, level) for n in heads],
                               left=False, start=length[owner])
            cache = select_rows(cache, owner.to(self.device))
            self._run(batch, cache, mask[owner])
            mask, length, nodes = torch.cat([mask[owner], batch.mask], 1), length[owner] + batch.mask.sum(-1), children
        return _Prefixes(cache, mask, length, nodes)

    def _run_suffixes(self, tree: _CacheTree, prefixes: _Prefixes, out: torch.Tensor, suffix_batch: int,
                      suffix_row_tokens: int) -> None:
        """The last level: every candidate suffix on its node's cache, read at its own last token,
        into ``out``. The suffixes of one node are laid end to end in a few rows (no padding to the
        longest suffix, one cache row per packed row instead of one per candidate)."""
        cache, mask, length = prefixes.cache, prefixes.mask, prefixes.length
        segments, last = tree.segments, tree.levels - 1
        members = [(row, n) for row, group in enumerate(prefixes.nodes) for n in group]
        for s in range(0, len(members), suffix_batch):
            chunk = members[s: s + suffix_batch]
            packed = plan_packed_rows([row for row, _ in chunk], [len(segments[n][-1]) for _, n in chunk],
                                      suffix_row_tokens)
            owner = torch.tensor([chunk[r[0]][0] for r in packed])
            order = [chunk[i][1] for r in packed for i in r]
            suffix, answer_rows, answer_cols = pack_segments(
                [[segments[chunk[i][1]][-1] for i in r] for r in packed],
                [[tree.slots(chunk[i][1], last) for i in r] for r in packed],
                self.pad_id, length[owner], mask[owner])
            hidden = self._run(suffix, select_rows(cache, owner.to(self.device))).last_hidden_state
            answer = self.answer_logit(hidden[answer_rows.to(hidden.device), answer_cols.to(hidden.device)])
            out[order] = torch.sigmoid(answer).cpu()

    @torch.no_grad()
    def score_modes(self, text: Sequence[Prompt], with_cf: Sequence[Prompt], user_vecs: torch.Tensor | None,
                    item_vecs: torch.Tensor | None, use_lora: bool = True, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Both modes at once (same LoRA): text-only prompts and CF prompts of the same rows, the
        history encoded once per user for both. Returns (text-only scores, CF scores). When CF
        prompts run with their own adapter (``cf_adapter``) the modes share no cache: two calls."""
        if self.cf_adapter:
            return (self.score_shared(text, None, None, use_lora, **kwargs),
                    self.score_shared(with_cf, user_vecs, item_vecs, use_lora, **kwargs))
        n = len(text)
        users = None if user_vecs is None else torch.cat([user_vecs, user_vecs])
        items = None if item_vecs is None else torch.cat([item_vecs, item_vecs])
        both = self.score_shared(list(text) + list(with_cf), users, items, use_lora, **kwargs)
        return both[:n], both[n:]


@dataclass(frozen=True)
class _CacheTree:
    """How ``score_shared`` shares work between prompts: each prompt cut into segments (opening,
    rest of the prefix, suffix; or prefix, suffix), the CF vector each segment writes, and the keys
    by which prompts share a cache up to the end of a segment."""

    prompts: Sequence[Prompt]
    segments: list[list[list[int]]]  # per prompt, its token ids cut into the levels of the tree
    user: list[torch.Tensor | None]
    item: list[torch.Tensor | None]
    prefix_keys: list[Hashable]
    split: bool  # whether the opening is a level of its own (shared by both modes)

    @classmethod
    def of(cls, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None,
           item_vecs: torch.Tensor | None) -> _CacheTree:
        user = [None if user_vecs is None or p.user_slot is None else user_vecs[n] for n, p in enumerate(prompts)]
        item = [None if item_vecs is None or p.item_slot is None else item_vecs[n] for n, p in enumerate(prompts)]
        user_key = [None if u is None else u.detach().float().cpu().numpy().tobytes() for u in user]
        prefix_keys = [(tuple(p.prefix), user_key[n]) for n, p in enumerate(prompts)]
        # Split off the opening only where it is shared by more than one prefix (both modes present).
        split = (all(0 < p.shared < len(p.prefix) and (p.user_slot is None or p.user_slot >= p.shared)
                     for p in prompts)
                 and len({tuple(p.prefix[: p.shared]) for p in prompts}) < len(set(prefix_keys)))
        return cls(prompts, [p.segments(split) for p in prompts], user, item, prefix_keys, split)

    @property
    def levels(self) -> int:
        return len(self.segments[0])

    def key(self, n: int, level: int) -> Hashable:
        """Prompts with equal keys share the cache up to the end of segment ``level``."""
        if level == self.levels - 2:
            return self.prefix_keys[n]
        return tuple(self.segments[n][0])  # the opening: no CF slot in it

    def slots(self, n: int, level: int) -> list[Slot]:
        """(position in the segment, vector, is_user) of the CF slots prompt ``n`` writes in segment ``level``."""
        if level == self.levels - 1:
            return [] if self.item[n] is None else [(self.prompts[n].item_slot, self.item[n], False)]
        if level == self.levels - 2 and self.user[n] is not None:
            offset = self.prompts[n].shared if self.split else 0
            return [(self.prompts[n].user_slot - offset, self.user[n], True)]
        return []


class _Prefixes(NamedTuple):
    """A batch of groups after their prefixes ran: the cache, its attention mask and length per
    row, and each row's prompts (the nodes the suffixes continue)."""

    cache: DynamicCache
    mask: torch.Tensor
    length: torch.Tensor
    nodes: list[list[int]]
