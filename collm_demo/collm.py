"""THE CoLLM forward pass, in one place, top to bottom.

    prompt with two CF slots  →  token embeddings  →  slots ← projector(cf vector)
    →  LLM on inputs_embeds  →  score = P("Yes") over {"Yes", "No"} at the answer position

A prompt is built from separately tokenised pieces, so the part before the candidate
(the *prefix*: history + user slot + "…the movie titled") is the same token sequence
for every candidate of a user. ``score`` runs whole prompts in left-padded batches (the
naive way); ``score_shared`` encodes each distinct prefix once, keeps its KV cache and runs
only the candidate suffixes (same scores within 1e-5, tested); ``score_candidates`` is its
one-user form used by the app; ``inspect`` runs one prompt and keeps what the teaching views
show. All four go through one packing function (``pack``) and one run (``CoLLM._run``); nothing
else in the project runs the LLM or writes the CF slots.

CF off = the text-only prompt (TALLRec's, no slots) through the same LLM and LoRA.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from .config import PROJECTOR_EXPAND, use_gqa_attention
from .device import Runtime
from .llm import answer_token_ids

USER_SLOT, ITEM_SLOT = "<UserID>", "<ItemID>"


# ----------------------------------------------------------------------------- prompts

def history_phrase(titles: Sequence[str], labels: Sequence[int] | None) -> str:
    """'"Heat" (liked), "Jaws" (disliked)': CoLLM lists liked items; we mark both kinds."""
    if labels is None:
        return ", ".join(f'"{t}"' for t in titles)
    return ", ".join(f'"{t}" ({"liked" if int(y) else "disliked"})' for t, y in zip(titles, labels))


def prompt_pieces(history: str, target_title: str, with_cf: bool) -> tuple[list[str], list[str]]:
    """Text pieces of the prefix and the suffix; slots as their marker strings.

    The first piece (the opening, up to the end of the history) is the same with and without CF,
    so both modes of one user can share its encoding. Tokenising it apart changes no token: a
    byte-level BPE never merges across the "." / " Additionally" (or " Leverage") boundary."""
    opening = f"#Question: A user has rated the following movies: {history}."
    closing = '? Answer with "Yes" or "No".\n#Answer:'
    if with_cf:
        prefix = [opening, " Additionally, we have information about the user's preferences encoded in the "
                  "feature", USER_SLOT, ". Using all available information, make a prediction about whether the "
                  "user would enjoy the movie titled"]
        suffix = [f' "{target_title}" with the feature', ITEM_SLOT, closing]
    else:
        prefix = [opening, " Leverage the information to predict whether the user would enjoy the movie titled"]
        suffix = [f' "{target_title}"', closing]
    return prefix, suffix


@dataclass
class Prompt:
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


class PromptBuilder:
    def __init__(self, tokenizer, placeholder_id: int | None = None):
        self.tokenizer = tokenizer
        # Any id works: the slot's embedding is overwritten before the LLM sees it.
        self.placeholder_id = placeholder_id if placeholder_id is not None else (tokenizer.unk_token_id or 0)
        self._cache: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        if text not in self._cache:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return self._cache[text]

    def _join(self, pieces: list[str]) -> tuple[list[int], int | None]:
        ids: list[int] = []
        slot = None
        for piece in pieces:
            if piece in (USER_SLOT, ITEM_SLOT):
                slot = len(ids)
                ids.append(self.placeholder_id)
            else:
                ids.extend(self._encode(piece))
        return ids, slot

    def build(self, history_titles: Sequence[str], history_labels: Sequence[int] | None,
              target_title: str, with_cf: bool) -> Prompt:
        prefix_pieces, suffix_pieces = prompt_pieces(
            history_phrase(history_titles, history_labels), target_title, with_cf)
        prefix, user_slot = self._join(prefix_pieces)
        suffix, item_slot = self._join(suffix_pieces)
        return Prompt(prefix, suffix, user_slot, item_slot, shared=len(self._encode(prefix_pieces[0])))


def prompt_text(history_titles: Sequence[str], history_labels: Sequence[int] | None,
                target_title: str, with_cf: bool) -> str:
    """The prompt as text, slots shown as <UserID> / <ItemID> (for display)."""
    prefix, suffix = prompt_pieces(history_phrase(history_titles, history_labels), target_title, with_cf)
    return "".join(" " + p if p in (USER_SLOT, ITEM_SLOT) else p for p in prefix + suffix)


# --------------------------------------------------------------------------- projector

class Projector(nn.Module):
    """CoLLM's mapping module: Linear(d → 10d) → ReLU → Linear(10d → hidden), one token per ID."""

    def __init__(self, cf_dim: int, hidden_size: int, expand: int = PROJECTOR_EXPAND, foldin_l2: float | None = None):
        super().__init__()
        self.cf_dim, self.hidden_size, self.expand = cf_dim, hidden_size, expand
        # Fold-in strength of the user vectors it was trained on (users unseen in training are
        # folded in from their history, see foldin.py); it must be fed vectors made the same way.
        # None: the CF model's own strength.
        self.foldin_l2 = foldin_l2
        self.net = nn.Sequential(nn.Linear(cf_dim, expand * cf_dim), nn.ReLU(),
                                 nn.Linear(expand * cf_dim, hidden_size))

    def forward(self, cf_vectors: torch.Tensor) -> torch.Tensor:
        return self.net(cf_vectors.float())


# --------------------------------------------------------------------------- packing

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

    def to(self, device: torch.device) -> Batch:
        return Batch(*(None if t is None else t.to(device) for t in
                       (self.ids, self.mask, self.positions, self.slot_rows, self.slot_cols, self.cf, self.last,
                        self.attention)))


def pack(seqs: Sequence[Sequence[int]], slots: Sequence[Sequence[tuple[int, torch.Tensor]]], pad_id: int,
         left: bool, start: torch.Tensor | None = None) -> Batch:
    """Pad ``seqs`` into a :class:`Batch`. ``slots[b]`` lists ``(index in seqs[b], cf vector)``.

    ``left=True`` pads on the left, so every row ends at the last column (whole prompts, prefixes);
    ``left=False`` pads on the right (suffixes that continue a cached prefix). ``start[b]`` is the
    rotary position of row b's first token (the length of its cached prefix; 0 without a cache).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, vectors = [], [], []
    for b, (seq, seq_slots) in enumerate(zip(seqs, slots)):
        offset = width - len(seq) if left else 0
        ids[b, offset: offset + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, offset: offset + len(seq)] = 1
        for index, vector in seq_slots:
            rows.append(b), cols.append(offset + index), vectors.append(vector)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if start is not None:
        positions = positions + start.view(-1, 1)
    last = torch.full((len(seqs),), width - 1) if left else mask.sum(-1) - 1
    return Batch(ids, mask, positions, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                 torch.stack(vectors) if vectors else None, last)


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
                  slots: Sequence[Sequence[Sequence[tuple[int, torch.Tensor]]]], pad_id: int,
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
    slot_rows, slot_cols, vectors, answer_rows, answer_cols = [], [], [], [], []
    for b, (row, row_slots) in enumerate(zip(rows, slots)):
        offset = 0
        for j, (seq, seq_slots) in enumerate(zip(row, row_slots)):
            span = slice(offset, offset + len(seq))
            ids[b, span] = torch.tensor(seq, dtype=torch.long)
            mask[b, span], segment[b, span] = 1, j
            positions[b, span] = start[b] + torch.arange(len(seq))
            for index, vector in seq_slots:
                slot_rows.append(b), slot_cols.append(offset + index), vectors.append(vector)
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
                  mask.sum(-1) - 1, attention)
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


# ------------------------------------------------------------------------ the forward

@dataclass
class Inspection:
    """One prompt through the model, with what the teaching views show (``CoLLM.inspect``)."""

    prompt: Prompt
    yes_logit: float  # logit of " Yes" at the answer position (float32 head, as in scoring)
    no_logit: float
    score: float  # P(Yes | {Yes, No}) = sigmoid(yes - no): exactly what ``score`` ranks by
    p_yes: float  # P(" Yes") over the whole vocabulary
    p_no: float
    top: list[tuple[str, float]]  # the most likely next tokens over the whole vocabulary
    # Only when asked for: per layer (heads, T, T) attention weights; per layer + the input
    # (T, hidden) hidden states (index 0 = the token embeddings with the CF slots written).
    attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def diff(self) -> float:
        return self.yes_logit - self.no_logit


class CoLLM(nn.Module):
    """LLM (+ optional LoRA) + projector. Only the projector has trainable state of its own.

    Every way of running the LLM goes through ``_pack`` → ``_run`` → ``answer_logit``:
    ``forward`` (training, whole prompts), ``score`` (the naive reference), ``score_shared``
    (prefixes once, then suffixes on their cache) and ``inspect`` (one prompt, for the views).
    ``lock`` serialises calls that flip the LoRA switch; pipelines that share one LLM share it.
    """

    def __init__(self, llm: nn.Module, tokenizer, projector: Projector | None = None,
                 runtime: Runtime | None = None, lock: threading.RLock | None = None):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.projector = projector
        # Device and precision (bf16 = autocast; the answer head stays float32). The caller has
        # put the LLM and the projector on ``runtime.device``; batches are moved there in ``_run``.
        self.runtime = runtime or Runtime()
        if self.runtime.device.type == "cpu":
            use_gqa_attention()
        self.lock = lock or threading.RLock()
        self.builder = PromptBuilder(tokenizer)
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- adapter switch: zero-shot = LoRA disabled, text_only / collm = LoRA enabled
    @contextlib.contextmanager
    def adapter(self, enabled: bool):
        """LoRA on or off for one call. Scoring (no gradients) runs LoRA *merged*: each adapted
        layer computes with W + ΔW in one matmul instead of W x + B A x (four small, slow matmuls
        and an add per layer, ~10 % of a scoring call on CPU). The base W is kept and put back
        after the call, so switching is exact (peft's merge/unmerge would drift by rounding).
        With gradients (training, attribution) peft's own path runs: dropout and trainable A, B."""
        if not hasattr(self.llm, "disable_adapter"):
            yield
            return
        if enabled and torch.is_grad_enabled():
            yield
            return
        with self.llm.disable_adapter():
            if not enabled:
                yield
                return
            layers = self._merged_lora()
            try:
                for layer, (_, merged) in layers.items():
                    layer.base_layer.weight = merged
                yield
            finally:
                for layer, (base, _) in layers.items():
                    layer.base_layer.weight = base

    def _merged_lora(self) -> dict[nn.Module, tuple[nn.Parameter, nn.Parameter]]:
        """Per adapted layer: (its base weight, base + ΔW of the active adapters), made once and
        again only when a LoRA weight has changed (training in the same process bumps versions)."""
        lora = [(name, p) for name, p in self.llm.named_parameters() if "lora_" in name]
        version = tuple((p.data_ptr(), p._version) for _, p in lora)
        if getattr(self, "_merged_version", None) != version:
            merged = {}
            for module in self.llm.modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    base = module.base_layer.weight
                    delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                    merged[module] = (base, nn.Parameter((base + delta).to(base.dtype).detach(), requires_grad=False))
            self._merged, self._merged_version = merged, version
        return self._merged

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def bf16(self) -> bool:
        return self.runtime.bf16

    @bf16.setter
    def bf16(self, on: bool) -> None:  # benchmarks compare both precisions on one loaded model
        self.runtime = Runtime(self.device, "bf16" if on else "fp32", "set by a benchmark")

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def session(self, use_lora: bool):
        """One model call: the lock, the adapter switch and the precision, in that order."""
        with self.lock, self.adapter(use_lora), self.autocast():
            yield

    def _base(self) -> nn.Module:
        """The underlying *ForCausalLM (LoRA layers stay injected inside it)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    # Step 1: ids → embeddings, with the CF slots overwritten by projected CF vectors.
    def embed(self, ids: torch.Tensor, slot_rows: torch.Tensor, slot_cols: torch.Tensor,
              cf_vectors: torch.Tensor | None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(ids)
        if cf_vectors is None or len(slot_rows) == 0:
            return embeds
        if self.projector is None:
            raise ValueError("CF injection asked for, but no projector is loaded")
        tokens = self.projector(cf_vectors.to(embeds.device)).to(embeds.dtype)
        # Out-of-place: a fresh tensor plus torch.where, never an in-place write into the
        # embedding output (that breaks autograd / gradient checkpointing).
        injected = torch.zeros_like(embeds).index_put((slot_rows, slot_cols), tokens)
        mask = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device).index_put(
            (slot_rows, slot_cols), torch.ones(len(slot_rows), dtype=torch.bool, device=embeds.device))
        return torch.where(mask.unsqueeze(-1), injected, embeds)

    # Step 2: the CF slots of a prompt, as (index, vector) pairs for ``pack``.
    @staticmethod
    def _slots(prompt: Prompt, part: str, user_vec: torch.Tensor | None,
               item_vec: torch.Tensor | None) -> list[tuple[int, torch.Tensor]]:
        """``part``: "all" (indices into the whole prompt), "prefix" or "suffix" (into that part)."""
        out = []
        if user_vec is not None and prompt.user_slot is not None and part in ("all", "prefix"):
            out.append((prompt.user_slot, user_vec))
        if item_vec is not None and prompt.item_slot is not None and part in ("all", "suffix"):
            out.append((prompt.item_pos if part == "all" else prompt.item_slot, item_vec))
        return out

    def _pack(self, seqs, slots, left: bool, start: torch.Tensor | None = None) -> Batch:
        return pack(seqs, slots, self.pad_id, left, start)

    # Step 3: a packed batch through the decoder (optionally continuing a cached prefix).
    def _run(self, batch: Batch, cache=None, past_mask: torch.Tensor | None = None, **outputs):
        """The decoder's output for ``batch``. With ``cache``, the batch continues the cached
        prefixes, whose mask is ``past_mask``; the cache is extended in place."""
        batch = batch.to(self.device)
        if past_mask is not None:
            past_mask = past_mask.to(self.device)
        embeds = self.embed(batch.ids, batch.slot_rows, batch.slot_cols, batch.cf)
        if batch.attention is not None:  # a prepared 4D mask (packed rows): transformers uses it as is
            mask = batch.attention
            if self._base().config._attn_implementation == "eager":  # eager adds the mask to the scores
                mask = torch.zeros(mask.shape, dtype=embeds.dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(embeds.dtype).min)
        else:
            mask = batch.mask if past_mask is None else torch.cat([past_mask, batch.mask], 1)
        return self._base().model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.positions,
                                  cache=cache, use_cache=cache is not None, **outputs)

    # Step 4: the answer. Only the two rows of the output layer that matter, in float32
    # even under bf16 autocast: a bf16 logit near 12 is only resolved to ~0.06, which
    # would make P(Yes) move in steps of ~0.015 and drown the CF on/off differences.
    def answer_logit(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """logit(Yes) - logit(No) from the final hidden state at the answer position."""
        logits = self._head(last_hidden, torch.tensor([self.yes_id, self.no_id], device=last_hidden.device))
        return logits[:, 0] - logits[:, 1]

    def _head(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output-layer logits in float32 (all of the vocabulary, or only ``rows``)."""
        head = self._base().lm_head
        weight = head.weight if rows is None else head.weight[rows]
        bias = getattr(head, "bias", None)
        bias = None if bias is None else (bias if rows is None else bias[rows]).float()
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float(), weight.float(), bias)

    def forward(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
                item_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """logit(Yes) - logit(No) per prompt (whole prompts, left-padded; training uses this)."""
        batch = self._pack([p.ids for p in prompts],
                           [self._slots(p, "all", None if user_vecs is None else user_vecs[n],
                                        None if item_vecs is None else item_vecs[n])
                            for n, p in enumerate(prompts)], left=True)
        hidden = self._run(batch).last_hidden_state
        return self.answer_logit(hidden[torch.arange(len(prompts), device=hidden.device), batch.last.to(hidden.device)])

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
              item_vecs: torch.Tensor | None = None, use_lora: bool = True, batch_size: int = 16,
              progress=None) -> torch.Tensor:
        """P(Yes) for each prompt, whole prompts in batches formed by length: the reference path."""
        order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))
        out = torch.empty(len(prompts))
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        with self.session(use_lora):
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
        user = [None if user_vecs is None or p.user_slot is None else user_vecs[n] for n, p in enumerate(prompts)]
        item = [None if item_vecs is None or p.item_slot is None else item_vecs[n] for n, p in enumerate(prompts)]
        user_key = [None if u is None else u.detach().float().cpu().numpy().tobytes() for u in user]
        prefix_keys = [(tuple(p.prefix), user_key[n]) for n, p in enumerate(prompts)]
        # Split off the opening only where it is shared by more than one prefix (both modes present).
        split = (all(0 < p.shared < len(p.prefix) and (p.user_slot is None or p.user_slot >= p.shared)
                     for p in prompts)
                 and len({tuple(p.prefix[: p.shared]) for p in prompts}) < len(set(prefix_keys)))
        segments = [p.segments(split) for p in prompts]
        levels = len(segments[0])

        def key(n: int, level: int) -> Hashable:
            """Prompts with equal keys share the cache up to the end of segment ``level``."""
            if level == levels - 2:
                return prefix_keys[n]
            return tuple(segments[n][0])  # the opening: no CF slot in it

        def slots(n: int, level: int) -> list[tuple[int, torch.Tensor]]:
            if level == levels - 1:
                return [] if item[n] is None else [(prompts[n].item_slot, item[n])]
            if level == levels - 2 and user[n] is not None:
                offset = prompts[n].shared if split else 0
                return [(prompts[n].user_slot - offset, user[n])]
            return []

        plan = plan_prefix_batches([key(n, 0) for n in range(len(prompts))], [len(s[0]) for s in segments],
                                   prefix_batch, suffix_batch)
        if shard is not None:
            plan = plan[shard[0]::shard[1]]
        with self.session(use_lora):
            for groups in (progress(plan) if progress else plan):
                # level 0: the groups' first segment, left-padded, from scratch
                heads = [g[0] for g in groups]
                batch = self._pack([segments[n][0] for n in heads], [slots(n, 0) for n in heads], left=True)
                cache = DynamicCache()
                self._run(batch, cache)
                mask, length, nodes = batch.mask, batch.mask.sum(-1), groups
                # middle levels: each node's members regroup by their next segment, which continues the node
                for level in range(1, levels - 1):
                    children, owners = [], []
                    for row, members in enumerate(nodes):
                        sub: dict[Hashable, list[int]] = {}
                        for n in members:
                            sub.setdefault(key(n, level), []).append(n)
                        children += sub.values()
                        owners += [row] * len(sub)
                    owner = torch.tensor(owners)
                    heads = [c[0] for c in children]
                    batch = self._pack([segments[n][level] for n in heads], [slots(n, level) for n in heads],
                                       left=False, start=length[owner])
                    cache = select_rows(cache, owner.to(self.device))
                    self._run(batch, cache, mask[owner])
                    mask, length, nodes = torch.cat([mask[owner], batch.mask], 1), length[owner] + batch.mask.sum(-1), children
                # last level: every candidate suffix on its node's cache, read at its own last token.
                # The suffixes of one node are laid end to end in a few rows (no padding to the longest
                # suffix, one cache row per packed row instead of one per candidate).
                members = [(row, n) for row, group in enumerate(nodes) for n in group]
                for s in range(0, len(members), suffix_batch):
                    chunk = members[s: s + suffix_batch]
                    packed = plan_packed_rows([row for row, _ in chunk], [len(segments[n][-1]) for _, n in chunk],
                                              suffix_row_tokens)
                    owner = torch.tensor([chunk[r[0]][0] for r in packed])
                    order = [chunk[i][1] for r in packed for i in r]
                    suffix, answer_rows, answer_cols = pack_segments(
                        [[segments[chunk[i][1]][-1] for i in r] for r in packed],
                        [[slots(chunk[i][1], levels - 1) for i in r] for r in packed],
                        self.pad_id, length[owner], mask[owner])
                    hidden = self._run(suffix, select_rows(cache, owner.to(self.device))).last_hidden_state
                    answer = self.answer_logit(hidden[answer_rows.to(hidden.device), answer_cols.to(hidden.device)])
                    out[order] = torch.sigmoid(answer).cpu()
        return out

    @torch.no_grad()
    def score_modes(self, text: Sequence[Prompt], with_cf: Sequence[Prompt], user_vecs: torch.Tensor | None,
                    item_vecs: torch.Tensor | None, use_lora: bool = True, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Both modes at once (same LoRA): text-only prompts and CF prompts of the same rows, the
        history encoded once per user for both. Returns (text-only scores, CF scores)."""
        n = len(text)
        users = None if user_vecs is None else torch.cat([user_vecs, user_vecs])
        items = None if item_vecs is None else torch.cat([item_vecs, item_vecs])
        both = self.score_shared(list(text) + list(with_cf), users, items, use_lora, **kwargs)
        return both[:n], both[n:]

    @torch.no_grad()
    def inspect(self, prompt: Prompt, user_vec: torch.Tensor | None = None, item_vec: torch.Tensor | None = None,
                use_lora: bool = True, top_k: int = 5, attentions: bool = False,
                hidden_states: bool = False) -> Inspection:
        """One prompt through the same path as ``score``, keeping what the teaching views need."""
        batch = self._pack([prompt.ids], [self._slots(prompt, "all", user_vec, item_vec)], left=True)
        with self.session(use_lora), self._attention_weights(attentions):
            out = self._run(batch, output_attentions=attentions, output_hidden_states=hidden_states)
        last = out.last_hidden_state[0, -1]
        diff = self.answer_logit(last.view(1, -1))
        logits = self._head(last.view(1, -1))[0]
        probs = torch.softmax(logits, -1)
        top = torch.topk(probs, top_k)
        decode = self.tokenizer.decode
        return Inspection(
            prompt=prompt, yes_logit=float(logits[self.yes_id]), no_logit=float(logits[self.no_id]),
            score=float(torch.sigmoid(diff)[0]), p_yes=float(probs[self.yes_id]), p_no=float(probs[self.no_id]),
            top=[(decode([int(t)]), float(p)) for p, t in zip(top.values, top.indices)],
            attentions=tuple(a[0].float().cpu() for a in out.attentions) if attentions else None,
            hidden_states=tuple(h[0].float().cpu() for h in out.hidden_states) if hidden_states else None)

    @contextlib.contextmanager
    def _attention_weights(self, wanted: bool):
        """Fused attention kernels return no weights: use the eager kernel while they are asked for."""
        config = self._base().config
        before = config._attn_implementation
        if not wanted or before == "eager":
            yield
            return
        self._base().set_attn_implementation("eager")
        try:
            yield
        finally:
            self._base().set_attn_implementation(before)

    # ------------------------------------------------- looking inside (the "Inside the LLM" view)
    # Appended for the teaching analysis; every method below goes through ``_run`` (the one
    # forward) or ``score_shared``, in float32 (no autocast: attributions and attention shares
    # are read to 3 digits, bf16 would blur them).

    def analyse(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
                item_vecs: torch.Tensor | None = None, use_lora: bool = True, attention: bool = True,
                attribution: bool = True) -> Analysis:
        """Whole prompts (left-padded) through ``_run`` once: per prompt, the answer position's
        attention by layer (mean over heads) and gradient x input of logit(Yes) - logit(No) per input
        position. The gradient is taken on the input embeddings *after* the CF slots are written
        (a forward pre-hook on the decoder makes them a leaf), so the slots get attributions too."""
        batch = self._pack([p.ids for p in prompts],
                           [self._slots(p, "all", None if user_vecs is None else user_vecs[n],
                                        None if item_vecs is None else item_vecs[n])
                            for n, p in enumerate(prompts)], left=True)
        captured: dict[str, torch.Tensor] = {}

        def leaf_embeds(module, args, kwargs):
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"].detach().requires_grad_(attribution)
            captured["embeds"] = kwargs["inputs_embeds"]
            return args, kwargs

        grad_mode = torch.enable_grad() if attribution else torch.no_grad()
        with self.lock:  # the hook is on the shared decoder: no other call may run while it is there
            handle = self._base().model.register_forward_pre_hook(leaf_embeds, with_kwargs=True)
            try:
                with grad_mode, self.adapter(use_lora), self._attention_weights(attention):
                    out = self._run(batch, output_attentions=attention)
                    diff = self.answer_logit(out.last_hidden_state[:, -1])
                    contrib = None
                    if attribution:  # rows are independent: one backward gives every row's gradient
                        contrib = grad_x_input(diff.sum(), captured["embeds"])
            finally:
                handle.remove()
        width = batch.ids.shape[1]
        attn = None
        if attention:  # (B, layers, T): the last row of each layer's weights, averaged over heads
            attn = torch.stack([a[:, :, -1, :].float().mean(1) for a in out.attentions], 1).detach().cpu()
        rows = [slice(width - len(p), width) for p in prompts]  # left padding: real tokens end at the last column
        return Analysis(diff=diff.detach().cpu(),
                        attention=None if attn is None else [attn[b, :, r] for b, r in enumerate(rows)],
                        attribution=None if contrib is None else [contrib[b, r].detach().cpu() for b, r in enumerate(rows)])

    @torch.no_grad()
    def ablation_scores(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor, item_vecs: torch.Tensor,
                        none_user: torch.Tensor, none_item: torch.Tensor, use_lora: bool = True,
                        **kwargs) -> dict[str, torch.Tensor]:
        """P(Yes) of CF prompts with the user slot, the item slot or both holding the CF model's
        no-information vectors instead of the row's own (``score_shared``: the full and the
        item-ablated prompts of a row share their prefix, so do the two user-ablated ones)."""
        n = len(prompts)
        nu, ni = none_user.view(1, -1).expand(n, -1), none_item.view(1, -1).expand(n, -1)
        variants = {"full": (user_vecs, item_vecs), "user_none": (nu, item_vecs), "item_none": (user_vecs, ni),
                    "both_none": (nu, ni)}
        users = torch.cat([u for u, _ in variants.values()])
        items = torch.cat([i for _, i in variants.values()])
        scores = self.score_shared(list(prompts) * len(variants), users, items, use_lora, **kwargs)
        return {name: scores[k * n: (k + 1) * n] for k, name in enumerate(variants)}

    @torch.no_grad()
    def logit_lens(self, hidden_states: Sequence[torch.Tensor], position: int, top_k: int = 5
                   ) -> list[list[tuple[str, float]]]:
        """Per layer, the ``top_k`` next-token words a position's hidden state points to when read
        through the final norm and the output head (float32), as if the model stopped there.
        ``hidden_states`` is ``Inspection.hidden_states`` (index 0 = the input embeddings); its last
        entry already has the final norm applied (transformers returns the normed last state)."""
        norm = self._base().model.norm
        out = []
        for layer, states in enumerate(hidden_states):
            h = states[position].to(self.device).float().view(1, -1)
            if layer < len(hidden_states) - 1:
                h = norm(h)
            probs = torch.softmax(self._head(h)[0], -1)
            top = torch.topk(probs, top_k)
            out.append([(self.tokenizer.decode([int(t)]), float(p)) for p, t in zip(top.values, top.indices)])
        return out


@dataclass
class Analysis:
    """What ``CoLLM.analyse`` measures for each prompt of a batch (padding removed)."""

    diff: torch.Tensor  # (B,) logit(Yes) - logit(No), as ``score`` computes it (float32)
    attention: list[torch.Tensor] | None  # per prompt (layers, T): answer position's attention, mean over heads
    attribution: list[torch.Tensor] | None  # per prompt (T,): gradient x input, summed over the hidden size


def grad_x_input(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Gradient x input of a scalar ``output`` per input vector: (..., hidden) -> (...). For a
    function linear in ``inputs`` (no bias) the values are exactly each vector's contribution."""
    (grad,) = torch.autograd.grad(output, inputs)
    return (grad * inputs).sum(-1)


def position_groups(builder: PromptBuilder, prompt: Prompt, target_title: str) -> list[str]:
    """One label per position of ``prompt.ids``: "user slot", "item slot", "title" (the candidate's
    quoted title), "history" (the rated movies, from after "movies:" to the end of the opening)
    or "template" (the rest of the instruction)."""
    opening = prompt_pieces("\0", target_title, prompt.user_slot is not None)[0][0].split("\0")[0].rstrip()
    head = _common_prefix(builder._encode(opening), prompt.prefix)
    title = _common_prefix(builder._encode(f' "{target_title}"'), prompt.suffix)
    labels = ["template"] * len(prompt)
    labels[head: prompt.shared] = ["history"] * (prompt.shared - head)
    start = len(prompt.prefix)
    labels[start: start + title] = ["title"] * title
    if prompt.user_slot is not None:
        labels[prompt.user_slot] = "user slot"
    if prompt.item_pos is not None:
        labels[prompt.item_pos] = "item slot"
    return labels


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A cache holding only batch rows ``rows`` of ``cache`` (one row per suffix that continues it)."""
    out = DynamicCache()
    for n, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), n)
    return out


def build_prompts(builder: PromptBuilder, title_of, histories: Sequence[Sequence[str]],
                  history_labels: Sequence[Sequence[int]], targets: Sequence[str],
                  with_cf: bool) -> list[Prompt]:
    """Prompts for many rows; ``title_of(item_id) -> str``."""
    return [builder.build([title_of(i) for i in hist], labels, title_of(target), with_cf)
            for hist, labels, target in zip(histories, history_labels, targets)]
