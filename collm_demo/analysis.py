"""What the "Inside the LLM" view measures in one run of the model, next to ``inside.py``.

Three measurements over the model's public runs (``CoLLM.run_whole``, ``score_shared``,
``read_out``), all in float32 (no autocast: attributions and attention shares are read to 3
digits, bf16 would blur them):

* :func:`analyse`: per prompt, the answer position's attention by layer (mean over heads) and
  gradient x input of logit(Yes) - logit(No) per input position, taken on the embeddings *after*
  the CF slots are written, so the slots get attributions too;
* :func:`ablation_scores`: P(Yes) with the user slot, the item slot or both holding the CF
  model's no-information vectors;
* :func:`logit_lens`: what a position's hidden state points to after each layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .collm import CoLLM, Prompt


@dataclass
class Analysis:
    """What ``analyse`` measures for each prompt of a batch (padding removed)."""

    diff: torch.Tensor  # (B,) logit(Yes) - logit(No), as ``score`` computes it (float32)
    attention: list[torch.Tensor] | None  # per prompt (layers, T): answer position's attention, mean over heads
    attribution: list[torch.Tensor] | None  # per prompt (T,): gradient x input, summed over the hidden size


def grad_x_input(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Gradient x input of a scalar ``output`` per input vector: (..., hidden) -> (...). For a
    function linear in ``inputs`` (no bias) the values are exactly each vector's contribution."""
    (grad,) = torch.autograd.grad(output, inputs)
    return (grad * inputs).sum(-1)


def analyse(model: CoLLM, prompts: Sequence[Prompt], user_vecs: torch.Tensor | None = None,
            item_vecs: torch.Tensor | None = None, use_lora: bool = True, attention: bool = True,
            attribution: bool = True) -> Analysis:
    """Whole prompts through the model once: attention shares and gradient x input per prompt."""
    with model.lock:  # held through the backward: the run's graph uses the shared model
        run = model.run_whole(prompts, user_vecs, item_vecs, use_lora, attentions=attention, leaf_embeds=attribution)
        # rows are independent: one backward gives every row's gradient
        contrib = grad_x_input(run.diff.sum(), run.embeds) if attribution else None
    attn = None
    if attention:  # (B, layers, T): the last row of each layer's weights, averaged over heads
        attn = torch.stack([a[:, :, -1, :].float().mean(1) for a in run.attentions], 1).detach().cpu()
    rows = [slice(run.width - len(p), run.width) for p in prompts]  # left padding: real tokens end at the last column
    return Analysis(diff=run.diff.detach().cpu(),
                    attention=None if attn is None else [attn[b, :, r] for b, r in enumerate(rows)],
                    attribution=None if contrib is None else [contrib[b, r].detach().cpu() for b, r in enumerate(rows)])


@torch.no_grad()
def ablation_scores(model: CoLLM, prompts: Sequence[Prompt], user_vecs: torch.Tensor, item_vecs: torch.Tensor,
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
    scores = model.score_shared(list(prompts) * len(variants), users, items, use_lora, **kwargs)
    return {name: scores[k * n: (k + 1) * n] for k, name in enumerate(variants)}


def logit_lens(model: CoLLM, hidden_states: Sequence[torch.Tensor], position: int, top_k: int = 5
               ) -> list[list[tuple[str, float]]]:
    """Per layer, the ``top_k`` next-token words a position's hidden state points to when read
    through the final norm and the output head (float32), as if the model stopped there.
    ``hidden_states`` is ``Inspection.hidden_states`` (index 0 = the input embeddings); its last
    entry already has the final norm applied (transformers returns the normed last state)."""
    out = []
    for layer, states in enumerate(hidden_states):
        logits = model.read_out(states[position].view(1, -1), final_norm=layer < len(hidden_states) - 1)
        top = torch.topk(torch.softmax(logits[0], -1), top_k)
        out.append([(model.tokenizer.decode([int(t)]), float(p)) for p, t in zip(top.values, top.indices)])
    return out
