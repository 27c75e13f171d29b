"""Load the LLM and its tokenizer: the embedded SmolLM2 or any causal LM id / folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_LLM = "embedded:SmolLM2-135M-Instruct"


@dataclass
class LoadedLLM:
    name: str  # what the user asked for (recorded in manifests)
    model: torch.nn.Module
    tokenizer: object
    hidden_size: int


def resolve_llm_name(name: str | None) -> str:
    return name or os.environ.get("COLLM_LLM") or DEFAULT_LLM


def load_llm(name: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedLLM:
    """``None`` / ``embedded:...`` = SmolLM2-135M-Instruct from the cached safetensors
    conversion of the embedded GGUF (converted once on first use). Anything else is
    passed to ``from_pretrained`` (a local folder, or a Hub id where there is internet)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_llm_name(name)
    if name.startswith("embedded:"):
        from .assets import ensure_converted_llm

        path: str | Path = ensure_converted_llm()
    else:
        path = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ValueError(f"could not load the LLM {name!r}: {err}") from err
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)  # the LLM itself is never tuned
    return LoadedLLM(name=name, model=model, tokenizer=tokenizer,
                     hidden_size=int(model.get_input_embeddings().weight.shape[1]))


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of the first token of " Yes" and " No" (the word after "#Answer:")."""
    yes = tokenizer.encode(" Yes", add_special_tokens=False)
    no = tokenizer.encode(" No", add_special_tokens=False)
    if not yes or not no or yes[0] == no[0]:
        raise ValueError("the tokenizer cannot tell ' Yes' from ' No'")
    return yes[0], no[0]
