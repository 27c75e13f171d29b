"""What the hardware allows: measured matrix-multiply throughput and the FLOPs a scoring job needs.

    limit time = FLOPs of the job ÷ this machine's matmul throughput (same precision, same run)

Every speed figure of the project is printed as ``measured / limit``: how close it comes to what
the machine can do, a ratio that does not depend on which machine of a kind one was given.

FLOPs count only real tokens (padding is waste, so it shows in the ratio): per token
2 × non-embedding parameters (every linear layer of every decoder block; the output head is
skipped, CoLLM reads two of its rows), plus attention, 4 × (query width) × (keys attended) per
layer. A token at position t of a prompt attends to t + 1 keys; a suffix token continuing a
cached prefix of P tokens attends to P + its own position + 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


def matmul_flops_per_s(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 2048,
                       repeats: int = 5) -> float:
    """Best of ``repeats`` large square matmuls (n × n @ n × n = 2 n³ FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs of a decoder."""

    layers: int
    query_width: int  # heads × head dim
    block_params: int  # parameters of the decoder blocks (+ final norm): the non-embedding ones

    @classmethod
    def of(cls, model: torch.nn.Module) -> Shape:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = base.config
        decoder = base.model
        blocks = sum(p.numel() for n, p in decoder.named_parameters() if not n.startswith("embed_tokens"))
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.num_attention_heads * head_dim, blocks)

    def token_flops(self, keys: int) -> int:
        return 2 * self.block_params + 4 * self.query_width * keys * self.layers


def sequence_flops(shape: Shape, new_tokens: int, cached: int = 0) -> int:
    """FLOPs for ``new_tokens`` tokens continuing ``cached`` cached ones."""
    return sum(shape.token_flops(cached + t + 1) for t in range(new_tokens))


def prompt_flops(shape: Shape, lengths: Iterable[int]) -> int:
    """Whole prompts, each run from scratch."""
    return sum(sequence_flops(shape, n) for n in lengths)


def shared_flops(shape: Shape, prompts: Sequence) -> int:
    """``score_shared``'s work on ``collm.Prompt``s: each distinct prefix once, then every suffix
    on its prefix's cache (the work a perfect implementation of that plan must do)."""
    prefixes = {tuple(p.prefix) for p in prompts}
    return (sum(sequence_flops(shape, len(p)) for p in prefixes)
            + sum(sequence_flops(shape, len(p.suffix), len(p.prefix)) for p in prompts))


def ratio_line(name: str, measured_s: float, flops: float, flops_per_s: float) -> str:
    limit = flops / flops_per_s
    return (f"{name}: measured {measured_s:.3f} s, limit {limit:.3f} s "
            f"({flops / 1e9:.0f} GFLOP at {flops_per_s / 1e9:.0f} GFLOP/s) → {measured_s / limit:.2f}× the limit")


def tree_flops(shape: Shape, prompts: Sequence) -> int:
    """Both modes in one pass: each distinct opening (the history) once, each mode's rest of the
    prefix once on it, every suffix on its prefix."""
    openings = {tuple(p.prefix[: p.shared]) for p in prompts}
    prefixes = {tuple(p.prefix): p.shared for p in prompts}
    return (sum(sequence_flops(shape, len(o)) for o in openings)
            + sum(sequence_flops(shape, len(p) - shared, shared) for p, shared in prefixes.items())
            + sum(sequence_flops(shape, len(p.suffix), len(p.prefix)) for p in prompts))
