"""THE CoLLM forward pass, in one place, top to bottom.

    prompt with two CF slots  →  token embeddings  →  slots ← projector(cf vector)
    →  LLM on inputs_embeds  →  score = P("Yes") over {"Yes", "No"} at the answer position

A prompt is built from separately tokenised pieces, so the part before the candidate
(the *prefix*: history + user slot + "…the movie titled") is the same token sequence
for every candidate of a user. ``score`` runs whole prompts in left-padded batches (the
naive way); ``score_shared`` encodes each distinct prefix once, keeps its KV cache and runs
only the candidate suffixes (same scores within 1e-4, tested); ``score_candidates`` is its
one-user form used by the app.

CF off = the text-only prompt (TALLRec's, no slots) through the same LLM and LoRA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .llm import answer_token_ids

USER_SLOT, ITEM_SLOT = "<UserID>", "<ItemID>"


# ----------------------------------------------------------------------------- prompts

def history_phrase(titles: Sequence[str], labels: Sequence[int] | None) -> str:
    """'"Heat" (liked), "Jaws" (disliked)': CoLLM lists liked items; we mark both kinds."""
    if labels is None:
        return ", ".join(f'"{t}"' for t in titles)
    return ", ".join(f'"{t}" ({"liked" if int(y) else "disliked"})' for t, y in zip(titles, labels))


def prompt_pieces(history: str, target_title: str, with_cf: bool) -> tuple[list[str], list[str]]:
    """Text pieces of the prefix and the suffix; ``None``-free, slots as their marker strings."""
    opening = f"#Question: A user has rated the following movies: {history}."
    closing = '? Answer with "Yes" or "No".\n#Answer:'
    if with_cf:
        prefix = [opening + " Additionally, we have information about the user's preferences "
                  "encoded in the feature", USER_SLOT, ". Using all available information, make a "
                  "prediction about whether the user would enjoy the movie titled"]
        suffix = [f' "{target_title}" with the feature', ITEM_SLOT, closing]
    else:
        prefix = [opening + " Leverage the information to predict whether the user would enjoy "
                  "the movie titled"]
        suffix = [f' "{target_title}"', closing]
    return prefix, suffix


@dataclass
class Prompt:
    prefix: list[int]  # token ids shared by all candidates of one user
    suffix: list[int]  # token ids of this candidate
    user_slot: int | None  # index into prefix of the user CF token (None when CF is off)
    item_slot: int | None  # index into suffix of the item CF token

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.suffix

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
        return Prompt(prefix, suffix, user_slot, item_slot)


def prompt_text(history_titles: Sequence[str], history_labels: Sequence[int] | None,
                target_title: str, with_cf: bool) -> str:
    """The prompt as text, slots shown as <UserID> / <ItemID> (for display)."""
    prefix, suffix = prompt_pieces(history_phrase(history_titles, history_labels), target_title, with_cf)
    return "".join(" " + p if p in (USER_SLOT, ITEM_SLOT) else p for p in prefix + suffix)


# --------------------------------------------------------------------------- projector

class Projector(nn.Module):
    """CoLLM's mapping module: Linear(d → 10d) → ReLU → Linear(10d → hidden), one token per ID."""

    def __init__(self, cf_dim: int, hidden_size: int, expand: int = 10, foldin_l2: float | None = None):
        super().__init__()
        self.cf_dim, self.hidden_size = cf_dim, hidden_size
        # Fold-in strength of the user vectors it was trained on (users unseen in training are
        # folded in from their history, see foldin.py); it must be fed vectors made the same way.
        # None: the CF model's own strength.
        self.foldin_l2 = foldin_l2
        self.net = nn.Sequential(nn.Linear(cf_dim, expand * cf_dim), nn.ReLU(),
                                 nn.Linear(expand * cf_dim, hidden_size))

    def forward(self, cf_vectors: torch.Tensor) -> torch.Tensor:
        return self.net(cf_vectors.float())


# ------------------------------------------------------------------------ the forward

class CoLLM(nn.Module):
    """LLM (+ optional LoRA) + projector. Only the projector has trainable state of its own."""

    def __init__(self, llm: nn.Module, tokenizer, projector: Projector | None = None,
                 bf16: bool = False):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.projector = projector
        self.bf16 = bf16  # CPU autocast; parity tests run in float32
        self.builder = PromptBuilder(tokenizer)
        self.yes_id, self.no_id = answer_token_ids(tokenizer)

    # -- adapter switch: zero-shot = LoRA disabled, text_only / collm = LoRA enabled
    def adapter(self, enabled: bool):
        if not enabled and hasattr(self.llm, "disable_adapter"):
            return self.llm.disable_adapter()
        return contextlib.nullcontext()

    def autocast(self):
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
        tokens = self.projector(cf_vectors).to(embeds.dtype)
        # Out-of-place: a fresh tensor plus torch.where, never an in-place write into the
        # embedding output (that breaks autograd / gradient checkpointing).
        injected = torch.zeros_like(embeds).index_put((slot_rows, slot_cols), tokens)
        mask = torch.zeros(embeds.shape[:2], dtype=torch.bool).index_put(
            (slot_rows, slot_cols), torch.ones(len(slot_rows), dtype=torch.bool))
        return torch.where(mask.unsqueeze(-1), injected, embeds)

    # Step 2: a padded batch → Yes-minus-No logit at the answer position.
    def forward(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
                item_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """Returns logit(Yes) - logit(No) per prompt; P(Yes | {Yes, No}) = sigmoid of it."""
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        slot_rows, slot_cols, vectors = [], [], []
        for row, prompt in enumerate(prompts):
            offset = width - len(prompt)  # left padding: the answer position is always -1
            ids[row, offset:] = torch.tensor(prompt.ids)
            attention[row, offset:] = 1
            if user_vecs is not None and prompt.user_slot is not None:
                slot_rows.append(row), slot_cols.append(offset + prompt.user_slot)
                vectors.append(user_vecs[row])
            if item_vecs is not None and prompt.item_slot is not None:
                slot_rows.append(row), slot_cols.append(offset + len(prompt.prefix) + prompt.item_slot)
                vectors.append(item_vecs[row])
        cf = torch.stack(vectors) if vectors else None
        embeds = self.embed(ids, torch.tensor(slot_rows, dtype=torch.long),
                            torch.tensor(slot_cols, dtype=torch.long), cf)
        # Explicit positions: padding must not shift the real tokens' rotary positions.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden = self._base().model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                                    use_cache=False).last_hidden_state
        return self.answer_logit(hidden[:, -1])

    # Step 3: the answer. Only the two rows of the output layer that matter, in float32
    # even under bf16 autocast: a bf16 logit near 12 is only resolved to ~0.06, which
    # would make P(Yes) move in steps of ~0.015 and drown the CF on/off differences.
    def answer_logit(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """logit(Yes) - logit(No) from the final hidden state at the answer position."""
        head = self._base().lm_head
        rows = torch.tensor([self.yes_id, self.no_id])
        weight = head.weight[rows].float()
        bias = head.bias[rows].float() if getattr(head, "bias", None) is not None else None
        with torch.autocast("cpu", enabled=False):
            logits = torch.nn.functional.linear(last_hidden.float(), weight, bias)
        return logits[:, 0] - logits[:, 1]

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
              item_vecs: torch.Tensor | None = None, use_lora: bool = True, batch_size: int = 16,
              progress=None) -> torch.Tensor:
        """P(Yes) for each prompt. Batches are formed by length to cut padding."""
        order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))
        out = torch.empty(len(prompts))
        batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
        with self.adapter(use_lora), self.autocast():
            for batch in (progress(batches) if progress else batches):
                logits = self.forward([prompts[n] for n in batch],
                                      None if user_vecs is None else user_vecs[batch],
                                      None if item_vecs is None else item_vecs[batch])
                out[batch] = torch.sigmoid(logits)
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
                     suffix_batch: int = 64, progress=None) -> torch.Tensor:
        """P(Yes) like ``score``, computed by sharing prefixes.

        Prompts with the same prefix (same history, same user CF vector) form a group. The
        distinct prefixes run once, left-padded in batches, with a KV cache; each group's
        candidate suffixes then run right-padded on a copy of their prefix's cache, and are
        read at their own last token. Same scores as ``score`` (tested within 1e-4).
        """
        from transformers import DynamicCache

        out = torch.empty(len(prompts))
        if not prompts:
            return out
        groups: dict[tuple, list[int]] = {}
        for n, p in enumerate(prompts):
            user = None
            if user_vecs is not None and p.user_slot is not None:
                user = user_vecs[n].detach().float().numpy().tobytes()
            groups.setdefault((tuple(p.prefix), user), []).append(n)
        ordered = sorted(groups.values(), key=lambda members: len(prompts[members[0]].prefix))
        batches, current, count = [], [], 0
        for members in ordered:  # batches of prefixes, bounded in prefixes and in suffixes
            if current and (len(current) >= prefix_batch or count + len(members) > suffix_batch):
                batches.append(current)
                current, count = [], 0
            current.append(members)
            count += len(members)
        batches.append(current)
        base = self._base()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with self.adapter(use_lora), self.autocast():
            for batch in (progress(batches) if progress else batches):
                # 1. the distinct prefixes, left-padded, user CF token injected, KV cached
                heads = [prompts[members[0]] for members in batch]
                width = max(len(h.prefix) for h in heads)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                rows, cols, vecs = [], [], []
                for b, (head, members) in enumerate(zip(heads, batch)):
                    offset = width - len(head.prefix)
                    ids[b, offset:] = torch.tensor(head.prefix)
                    attention[b, offset:] = 1
                    if user_vecs is not None and head.user_slot is not None:
                        rows.append(b), cols.append(offset + head.user_slot), vecs.append(user_vecs[members[0]])
                embeds = self.embed(ids, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                                    torch.stack(vecs) if vecs else None)
                positions = (attention.cumsum(-1) - 1).clamp(min=0)
                cache = DynamicCache()
                base.model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                           cache=cache, use_cache=True)
                prefix_len = attention.sum(-1)
                # 2. every candidate suffix, on its own prefix's cache
                members = [(b, n) for b, group in enumerate(batch) for n in group]
                for start in range(0, len(members), suffix_batch):
                    chunk = members[start: start + suffix_batch]
                    owner = torch.tensor([b for b, _ in chunk])
                    s_width = max(len(prompts[n].suffix) for _, n in chunk)
                    s_ids = torch.full((len(chunk), s_width), pad, dtype=torch.long)
                    s_mask = torch.zeros((len(chunk), s_width), dtype=torch.long)
                    rows, cols, vecs = [], [], []
                    for r, (_, n) in enumerate(chunk):
                        suffix = prompts[n].suffix
                        s_ids[r, : len(suffix)] = torch.tensor(suffix)
                        s_mask[r, : len(suffix)] = 1
                        if item_vecs is not None and prompts[n].item_slot is not None:
                            rows.append(r), cols.append(prompts[n].item_slot), vecs.append(item_vecs[n])
                    s_embeds = self.embed(s_ids, torch.tensor(rows, dtype=torch.long),
                                          torch.tensor(cols, dtype=torch.long), torch.stack(vecs) if vecs else None)
                    chunk_cache = DynamicCache()
                    for layer in range(len(cache.layers)):
                        chunk_cache.update(cache.layers[layer].keys.index_select(0, owner),
                                           cache.layers[layer].values.index_select(0, owner), layer)
                    s_positions = prefix_len[owner].unsqueeze(1) + torch.arange(s_width)
                    hidden = base.model(inputs_embeds=s_embeds, attention_mask=torch.cat([attention[owner], s_mask], 1),
                                        position_ids=s_positions, cache=chunk_cache, use_cache=True).last_hidden_state
                    last = s_mask.sum(-1) - 1
                    answer = self.answer_logit(hidden[torch.arange(len(chunk)), last])
                    out[[n for _, n in chunk]] = torch.sigmoid(answer)
        return out


def build_prompts(builder: PromptBuilder, title_of, histories: Sequence[Sequence[str]],
                  history_labels: Sequence[Sequence[int]], targets: Sequence[str],
                  with_cf: bool) -> list[Prompt]:
    """Prompts for many rows; ``title_of(item_id) -> str``."""
    return [builder.build([title_of(i) for i in hist], labels, title_of(target), with_cf)
            for hist, labels, target in zip(histories, history_labels, targets)]
