"""THE CoLLM forward pass, in one place, top to bottom: the model.

    prompt with two CF slots  →  token embeddings  →  slots ← projector(cf vector)
    →  LLM on inputs_embeds  →  score = P("Yes") over {"Yes", "No"} at the answer position

A prompt is built from separately tokenised pieces, so the part before the candidate
(the *prefix*: history + user slot + "…the movie titled") is the same token sequence
for every candidate of a user. This file holds the model: prompt pieces, the projector, the
forward (``CoLLM.forward`` over one packing function and one run, ``CoLLM._run``), ``inspect``
for one prompt and ``run_whole`` for the analyses. How prompts are scored (whole, or sharing
prefixes) is in ``scoring.py`` (a mixin, so ``model.score_shared(...)`` reads as before); what
the analyses make of a run is in ``analysis.py``; tensor packing in ``packing.py``. Nothing else
in the project runs the LLM or writes the CF slots.

CF off = the text-only prompt (TALLRec's, no slots) through the same LLM and LoRA.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import HISTORY_STYLES, PROJECTOR_EXPAND, use_gqa_attention
from .device import Runtime
from .llm import answer_token_ids
from .packing import Batch, Prompt, Slot, pack
from .scoring import ScoringMixin

USER_SLOT, ITEM_SLOT = "<UserID>", "<ItemID>"
# The opening of each history style (config.HISTORY_STYLES).
OPENINGS = {"marked": "#Question: A user has rated the following movies: ",
            "liked": "#Question: A user has given high ratings to the following movies: "}


# ----------------------------------------------------------------------------- prompts

def history_phrase(titles: Sequence[str], labels: Sequence[int] | None, style: str = "marked") -> str:
    """'"Heat" (liked), "Jaws" (disliked)': CoLLM lists liked items; we mark both kinds. With
    ``style="liked"`` (the paper's) only the liked titles, unmarked ('"Heat"'); "none" if there are none."""
    if style == "liked":
        liked = [t for n, t in enumerate(titles) if labels is None or int(labels[n])]
        return ", ".join(f'"{t}"' for t in liked) or "none"
    if labels is None:
        return ", ".join(f'"{t}"' for t in titles)
    return ", ".join(f'"{t}" ({"liked" if int(y) else "disliked"})' for t, y in zip(titles, labels))


def prompt_pieces(history: str, target_title: str, with_cf: bool,
                  style: str = "marked") -> tuple[list[str], list[str]]:
    """Text pieces of the prefix and the suffix; slots as their marker strings.

    The first piece (the opening, up to the end of the history) is the same with and without CF,
    so both modes of one user can share its encoding. Tokenising it apart changes no token: a
    byte-level BPE never merges across the "." / " Additionally" (or " Leverage") boundary."""
    opening = f"{OPENINGS[style]}{history}."
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


class PromptBuilder:
    def __init__(self, tokenizer, placeholder_id: int | None = None, history_style: str = "marked"):
        if history_style not in HISTORY_STYLES:
            raise ValueError(f"history style {history_style!r} is not one of {', '.join(HISTORY_STYLES)}")
        self.tokenizer = tokenizer
        self.history_style = history_style
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
        style = self.history_style
        prefix_pieces, suffix_pieces = prompt_pieces(
            history_phrase(history_titles, history_labels, style), target_title, with_cf, style)
        prefix, user_slot = self._join(prefix_pieces)
        suffix, item_slot = self._join(suffix_pieces)
        return Prompt(prefix, suffix, user_slot, item_slot, shared=len(self._encode(prefix_pieces[0])))

    def position_groups(self, prompt: Prompt, target_title: str) -> list[str]:
        """One label per position of ``prompt.ids``: "user slot", "item slot", "title" (the candidate's
        quoted title), "history" (the rated movies, from after "movies:" to the end of the opening)
        or "template" (the rest of the instruction)."""
        opening = prompt_pieces("\0", target_title, prompt.user_slot is not None,
                                self.history_style)[0][0].split("\0")[0].rstrip()
        head = _common_prefix(self._encode(opening), prompt.prefix)
        title = _common_prefix(self._encode(f' "{target_title}"'), prompt.suffix)
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


def prompt_text(history_titles: Sequence[str], history_labels: Sequence[int] | None,
                target_title: str, with_cf: bool, history_style: str = "marked") -> str:
    """The prompt as text, slots shown as <UserID> / <ItemID> (for display)."""
    prefix, suffix = prompt_pieces(history_phrase(history_titles, history_labels, history_style), target_title,
                                   with_cf, history_style)
    return "".join(" " + p if p in (USER_SLOT, ITEM_SLOT) else p for p in prefix + suffix)


# --------------------------------------------------------------------------- projector

class Projector(nn.Module):
    """CoLLM's mapping module: Linear(d → 10d) → ReLU → Linear(10d → hidden), one token per ID.

    One MLP for users and items, as in the paper; with ``separate_users`` users get an MLP of their
    own (``user_net``, beyond the paper: issue 26's "keep users apart in the projector", as
    A-LLMRec and others map users and items separately). Then every call says which rows are users.
    """

    def __init__(self, cf_dim: int, hidden_size: int, expand: int = PROJECTOR_EXPAND, foldin_l2: float | None = None,
                 separate_users: bool = False, token_norm: float | None = None):
        super().__init__()
        self.cf_dim, self.hidden_size, self.expand = cf_dim, hidden_size, expand
        # Every token rescaled to this L2 norm (beyond the paper, issue 26's token-norm lever: a word
        # embedding's norm keeps a token from swamping the residual stream at its position); None:
        # the MLP's output as it comes, the paper's.
        self.token_norm = token_norm
        # Fold-in strength of the user vectors it was trained on (users unseen in training are
        # folded in from their history, see foldin.py); it must be fed vectors made the same way.
        # None: the CF model's own strength.
        self.foldin_l2 = foldin_l2
        self.net = nn.Sequential(nn.Linear(cf_dim, expand * cf_dim), nn.ReLU(),
                                 nn.Linear(expand * cf_dim, hidden_size))
        self.user_net = (nn.Sequential(nn.Linear(cf_dim, expand * cf_dim), nn.ReLU(),
                                       nn.Linear(expand * cf_dim, hidden_size)) if separate_users else None)

    @property
    def separate_users(self) -> bool:
        return self.user_net is not None

    def forward(self, cf_vectors: torch.Tensor, users: torch.Tensor | bool | None = None) -> torch.Tensor:
        """The tokens of ``cf_vectors`` (N, d). ``users``: True / a (N,) mask of the rows that are
        users; ignored by a shared projector, required by one with ``separate_users``."""
        tokens = self._map(cf_vectors.float(), users)
        if self.token_norm is None:
            return tokens
        return tokens * (self.token_norm / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6))

    def _map(self, vectors: torch.Tensor, users: torch.Tensor | bool | None) -> torch.Tensor:
        if self.user_net is None:
            return self.net(vectors)
        if users is None:
            raise ValueError("this projector maps users and items separately: say which rows are users")
        if isinstance(users, bool):
            return (self.user_net if users else self.net)(vectors)
        users = users.to(vectors.device).view(-1)
        # Each row through its own kind's MLP only (a fresh tensor filled by index keeps autograd intact).
        tokens = vectors.new_empty(len(vectors), self.hidden_size)
        tokens[users] = self.user_net(vectors[users])
        tokens[~users] = self.net(vectors[~users])
        return tokens


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


class CoLLM(ScoringMixin, nn.Module):
    """LLM (+ optional LoRA) + projector. Only the projector has trainable state of its own.

    Every way of running the LLM goes through ``_pack`` → ``_run`` → ``answer_logit``:
    ``forward`` (training, whole prompts), ``score`` (the naive reference), ``score_shared``
    (prefixes once, then suffixes on their cache) and ``inspect`` (one prompt, for the views).
    ``lock`` serialises calls that flip the LoRA switch; pipelines that share one LLM share it.
    """

    def __init__(self, llm: nn.Module, tokenizer, projector: Projector | None = None,
                 runtime: Runtime | None = None, lock: threading.RLock | None = None,
                 cf_adapter: str | None = None, history_style: str = "marked"):
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.projector = projector
        # The peft adapter that CF prompts run with, when stage 2 trained its own copy of the LoRA
        # (``TrainConfig.projector_lora_lr``); None: the stage-1 LoRA for both modes (the paper).
        self.cf_adapter = cf_adapter
        # Device and precision (bf16 = autocast; the answer head stays float32). The caller has
        # put the LLM and the projector on ``runtime.device``; batches are moved there in ``_run``.
        self.runtime = runtime or Runtime()
        if self.runtime.device.type == "cpu":
            use_gqa_attention()
        self.lock = lock or threading.RLock()
        self.builder = PromptBuilder(tokenizer, history_style=history_style)
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- adapter switch: zero-shot = LoRA disabled, text_only / collm = LoRA enabled
    @contextlib.contextmanager
    def adapter(self, enabled: bool, with_cf: bool = False):
        """LoRA on or off for one call. Scoring (no gradients) runs LoRA *merged*: each adapted
        layer computes with W + ΔW in one matmul instead of W x + B A x (four small, slow matmuls
        and an add per layer, ~10 % of a scoring call on CPU). The base W is kept and put back
        after the call, so switching is exact (peft's merge/unmerge would drift by rounding).
        With gradients (training, attribution) peft's own path runs: dropout and trainable A, B."""
        if not hasattr(self.llm, "disable_adapter"):
            yield
            return
        with self._grad_flags_kept():
            if enabled:
                self.activate(self.cf_adapter if with_cf and self.cf_adapter else "default")
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

    @contextlib.contextmanager
    def _grad_flags_kept(self):
        """peft's ``set_adapter`` and the exit of ``disable_adapter`` set ``requires_grad`` on the
        active adapter's weights; put every LoRA weight's flag back, so a call never changes what trains."""
        lora = [p for n, p in self.llm.named_parameters() if "lora_" in n]
        flags = [p.requires_grad for p in lora]
        try:
            yield
        finally:
            for param, flag in zip(lora, flags):
                param.requires_grad_(flag)

    def activate(self, name: str) -> None:
        """Make peft adapter ``name`` the active one (when the LLM holds several; the caller holds
        the lock, as ``adapter`` does)."""
        if getattr(self.llm, "active_adapter", name) != name and name in getattr(self.llm, "peft_config", {}):
            self.llm.set_adapter(name)

    def _merged_lora(self) -> dict[nn.Module, tuple[nn.Parameter, nn.Parameter]]:
        """Per adapted layer: (its base weight, base + ΔW of the active adapter), made once per
        adapter and again only when a LoRA weight has changed (training in the same process bumps
        versions). One entry per adapter, so the text and CF adapters do not re-merge on every switch."""
        lora = [(name, p) for name, p in self.llm.named_parameters() if "lora_" in name]
        active = getattr(self.llm, "active_adapter", None)
        version = tuple((p.data_ptr(), p._version) for _, p in lora)
        cache = self.__dict__.setdefault("_merged_cache", {})  # adapter -> (weights' version, merged layers)
        if cache.get(active, (None,))[0] != version:
            merged = {}
            for module in self.llm.modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    base = module.base_layer.weight
                    delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                    merged[module] = (base, nn.Parameter((base + delta).to(base.dtype).detach(), requires_grad=False))
            cache[active] = (version, merged)
        return cache[active][1]

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
    def session(self, use_lora: bool, with_cf: bool = False):
        """One model call: the lock, the adapter switch and the precision, in that order."""
        with self.lock, self.adapter(use_lora, with_cf), self.autocast():
            yield

    def _base(self) -> nn.Module:
        """The underlying *ForCausalLM (LoRA layers stay injected inside it)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    # Step 1: ids → embeddings, with the CF slots overwritten by projected CF vectors.
    def embed(self, ids: torch.Tensor, slot_rows: torch.Tensor, slot_cols: torch.Tensor,
              cf_vectors: torch.Tensor | None, slot_users: torch.Tensor | None = None) -> torch.Tensor:
        """``slot_users``: which slots are user slots (a projector with its own user mapping needs it)."""
        embeds = self.llm.get_input_embeddings()(ids)
        if cf_vectors is None or len(slot_rows) == 0:
            return embeds
        if self.projector is None:
            raise ValueError("CF injection asked for, but no projector is loaded")
        tokens = self.projector(cf_vectors.to(embeds.device), slot_users).to(embeds.dtype)
        # Out-of-place: a fresh tensor plus torch.where, never an in-place write into the
        # embedding output (that breaks autograd / gradient checkpointing).
        injected = torch.zeros_like(embeds).index_put((slot_rows, slot_cols), tokens)
        mask = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device).index_put(
            (slot_rows, slot_cols), torch.ones(len(slot_rows), dtype=torch.bool, device=embeds.device))
        return torch.where(mask.unsqueeze(-1), injected, embeds)

    # Step 2: the CF slots of a prompt, as (index, vector, is_user) for ``pack``.
    @staticmethod
    def _slots(prompt: Prompt, part: str, user_vec: torch.Tensor | None,
               item_vec: torch.Tensor | None) -> list[Slot]:
        """``part``: "all" (indices into the whole prompt), "prefix" or "suffix" (into that part)."""
        out = []
        if user_vec is not None and prompt.user_slot is not None and part in ("all", "prefix"):
            out.append((prompt.user_slot, user_vec, True))
        if item_vec is not None and prompt.item_slot is not None and part in ("all", "suffix"):
            out.append((prompt.item_pos if part == "all" else prompt.item_slot, item_vec, False))
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
        embeds = self.embed(batch.ids, batch.slot_rows, batch.slot_cols, batch.cf, batch.slot_users)
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
    def inspect(self, prompt: Prompt, user_vec: torch.Tensor | None = None, item_vec: torch.Tensor | None = None,
                use_lora: bool = True, top_k: int = 5, attentions: bool = False,
                hidden_states: bool = False) -> Inspection:
        """One prompt through the same path as ``score``, keeping what the teaching views need."""
        batch = self._pack([prompt.ids], [self._slots(prompt, "all", user_vec, item_vec)], left=True)
        with self.session(use_lora, user_vec is not None or item_vec is not None), self._attention_weights(attentions):
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

    def run_whole(self, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
                  item_vecs: torch.Tensor | None = None, use_lora: bool = True, attentions: bool = False,
                  leaf_embeds: bool = False) -> WholeRun:
        """Whole prompts (left-padded) through the one forward, in float32, for the analyses
        (``analysis.py``): logit(Yes) - logit(No) per prompt, the decoder's input embeddings *after*
        the CF slots are written and, when asked, the attention weights (the eager kernel runs while
        they are). ``leaf_embeds``: those embeddings are made a leaf that requires grad (a forward
        pre-hook on the decoder), so a gradient x input reaches the slots too; the run then keeps
        its graph, and the caller holds ``self.lock`` until it has taken its gradients."""
        batch = self._pack([p.ids for p in prompts],
                           [self._slots(p, "all", None if user_vecs is None else user_vecs[n],
                                        None if item_vecs is None else item_vecs[n])
                            for n, p in enumerate(prompts)], left=True)
        captured: dict[str, torch.Tensor] = {}

        def leaf(module, args, kwargs):
            kwargs["inputs_embeds"] = kwargs["inputs_embeds"].detach().requires_grad_(leaf_embeds)
            captured["embeds"] = kwargs["inputs_embeds"]
            return args, kwargs

        grad_mode = torch.enable_grad() if leaf_embeds else torch.no_grad()
        with self.lock:  # the hook is on the shared decoder: no other call may run while it is there
            handle = self._base().model.register_forward_pre_hook(leaf, with_kwargs=True)
            try:
                with grad_mode, self.adapter(use_lora, user_vecs is not None or item_vecs is not None), \
                        self._attention_weights(attentions):
                    out = self._run(batch, output_attentions=attentions)
                    diff = self.answer_logit(out.last_hidden_state[:, -1])
            finally:
                handle.remove()
        return WholeRun(diff=diff, embeds=captured["embeds"], width=batch.ids.shape[1],
                        attentions=out.attentions if attentions else None)

    @torch.no_grad()
    def read_out(self, hidden: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """Float32 logits over the whole vocabulary of hidden states ``(N, hidden)``, read through
        the final norm first (``final_norm``) and the output head, as if the model stopped there."""
        hidden = hidden.to(self.device).float()
        return self._head(self._base().model.norm(hidden) if final_norm else hidden)


@dataclass
class WholeRun:
    """What ``CoLLM.run_whole`` returns for a batch of whole prompts (left-padded to ``width``)."""

    diff: torch.Tensor  # (B,) logit(Yes) - logit(No), as ``score`` computes it
    embeds: torch.Tensor  # (B, width, hidden) the decoder's input embeddings, CF slots written
    width: int  # columns of the padded batch: prompt b's real tokens are the last len(prompt) columns
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, heads, width, width)
