"""Several processes, one result: ``torchrun --nproc-per-node N -m collm_demo train ...``.

The engine is PyTorch's own: ``torchrun`` starts N processes, ``torch.distributed`` connects them
(NCCL between GPUs, gloo on CPUs), and training wraps the model in ``DistributedDataParallel``,
which all-reduces the gradients of the trainable parameters only (LoRA or the projector; the
frozen LLM is replicated and never synchronised). What the project adds is the bookkeeping that
makes N processes equal one:

* training rows: a global micro-batch of ``batch_size × N`` rows in the one-process order; rank r
  takes its contiguous share and scales its loss so that the averaged gradient is the global
  mean (a rank whose share is empty runs one padding row with weight 0, so every rank steps);
* scoring: ``score_shared``'s batches are dealt out whole (rank r runs batches r, r+N, ...), so
  every batch is computed exactly as in one process, and the shares are summed back: sharded
  scores are *equal* to unsharded ones, not just close;
* only rank 0 writes files; early stopping reads the merged scores, so every rank decides alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist

from .config import torchrun_env


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self) -> tuple[int, int] | None:
        """What ``CoLLM.score_shared`` takes: (this rank, world size), or None alone."""
        return (self.rank, self.world) if self.active else None

    def merge(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum the ranks' shares (each holds zeros where another rank computed): exact."""
        if not self.active:
            return partial
        merged = partial.clone()
        dist.all_reduce(merged, op=dist.ReduceOp.SUM)
        return merged

    def from_main(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank: a decision that must not differ between processes (one
        made from a timing, say). CPU (gloo) only: callers on CUDA decide without measuring."""
        if not self.active:
            return flag
        value = torch.tensor([int(flag)])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def share(self, batch: pd.DataFrame) -> tuple[pd.DataFrame, torch.Tensor]:
        """This rank's contiguous share of a global micro-batch and the weight of each of its rows
        (1; a rank with no real row gets one padding row of weight 0)."""
        if not self.active:
            return batch, torch.ones(len(batch))
        per = -(-len(batch) // self.world)  # ceil: shares of batch_size, the last one shorter
        part = batch.iloc[self.rank * per: (self.rank + 1) * per]
        if len(part):
            return part, torch.ones(len(part))
        return batch.iloc[:1], torch.zeros(1)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP over the trainable parameters only (frozen ones are neither broadcast nor reduced)."""
        if not self.active:
            return model
        frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        device = next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    @staticmethod
    def no_sync(model: torch.nn.Module, accumulate: bool):
        """While accumulating gradients over micro-batches, skip the all-reduce (DDP's no_sync)."""
        if accumulate and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()


def init_ranks(device_type: str = "cpu") -> Ranks:
    """Join the process group when started by ``torchrun``; one process otherwise."""
    launched = torchrun_env()
    if launched is None:
        return Ranks()
    rank, world, local = launched
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Ranks(rank, world, local)
