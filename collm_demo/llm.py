"""Load the LLM and its tokenizer: the embedded SmolLM2 or any causal LM id / folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .assets import ensure_converted_llm
from .config import DEFAULT_LLM
from .errors import AssetError


@dataclass
class LoadedLLM:
    name: str  # what the user asked for (recorded in manifests)
    model: torch.nn.Module
    tokenizer: object
    hidden_size: int


def resolve_llm_name(name: str | None) -> str:
    """``None`` means the embedded default."""
    return name or DEFAULT_LLM


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def load_llm(name: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedLLM:
    """``None`` / ``embedded:...`` = SmolLM2-135M-Instruct from the cached safetensors
    conversion of the embedded GGUF (converted once on first use). Anything else is
    passed to ``from_pretrained`` (a local folder, or a Hub id where there is internet)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = resolve_llm_name(name)
    if name.startswith("embedded:"):
        path: str | Path = ensure_converted_llm()
    else:
        path = name
        if _looks_like_path(name) and not Path(name).expanduser().is_dir():
            raise AssetError(f"LLM folder {name} does not exist (give a local model folder or a Hugging Face id)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        # "models/smol" is both a relative path and a well-formed Hub id: say that neither was found.
        hint = "" if Path(name).expanduser().exists() else " (there is no local folder of that name either)"
        raise AssetError(f"could not load the LLM {name!r}{hint}: {str(err).splitlines()[0][:300]}") from err
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
        raise AssetError("the tokenizer cannot tell ' Yes' from ' No'")
    return yes[0], no[0]
