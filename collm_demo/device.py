"""Where the model runs and in which precision: decided from what the hardware can do, never assumed.

``--device auto`` picks CUDA when present, then Apple's MPS, else the CPU. ``--precision auto``
picks bf16 only where the hardware computes it natively: a CUDA device with bf16 support, or a
CPU with AVX512-BF16 or AMX units (torch reports both). Elsewhere bf16 autocast is emulated, and
on a 2-core CPU without those units it was measured 3.5x *slower* than float32 (docs/performance.md).
The answer head always runs in float32 (see ``CoLLM.answer_logit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DEVICES, PRECISIONS
from .errors import InputError


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: the CPU multiplies bf16 in hardware."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise InputError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but torch sees no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was asked for, but this machine has no MPS device")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False  # MPS: bf16 support varies by OS version; float32 is the safe choice


def resolve_precision(name: str, device: torch.device) -> str:
    """'fp32' or 'bf16' (autocast)."""
    if name not in PRECISIONS:
        raise InputError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


@dataclass(frozen=True)
class Runtime:
    """The device and precision one process runs on (recorded in manifests and results)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; the answer head stays float32)

    @classmethod
    def choose(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        chosen = resolve_device(device)
        return cls(chosen, resolve_precision(precision, chosen))

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def describe(self) -> dict:
        """What the manifest and the results record."""
        info = {"device": str(self.device), "precision": self.precision}
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        elif self.device.type == "cpu":
            info["cpu"] = torch.backends.cpu.get_cpu_capability()
            info["cpu_native_bf16"] = cpu_has_native_bf16()
        return info

    def __str__(self) -> str:
        return f"{self.device.type} · {'bf16 autocast' if self.bf16 else 'float32'}"
