"""Where the model runs and in which precision, each choice with the reason it was made.

``--device auto`` picks CUDA when present, then Apple's MPS, else the CPU.

``--precision auto`` (the default) picks:

* **scoring on a CPU: float32, always.** bf16 autocast on CPUs was measured to buy nothing and to
  cost exactness: on a CPU with AVX512-BF16 (no AMX) 20 candidates took 2.97 s in bf16 vs 3.06 s in
  float32 (576-wide matmuls: bf16 65 vs float32 105 GFLOP/s), and an item's score moved by up to
  3.7e-3 with the other candidates in its batch, larger than many of the deltas the app shows. On a
  CPU without bf16 units autocast is emulated and 3.5x *slower* (docs/performance.md). Capability
  flags (``torch.cpu._is_avx512_bf16_supported``) say what the CPU can do, not what is faster.
* **training on a CPU: bf16 only if a micro-benchmark says so.** ``measure_cpu_bf16`` times the
  model's own matmul shape in both precisions; bf16 is picked only when it is at least
  ``BF16_MIN_SPEEDUP`` times faster (AMX-class hardware). The measurement is the recorded reason.
* **CUDA: bf16 where the device computes it natively** (``torch.cuda.is_bf16_supported``).
* MPS: float32 (bf16 support varies by OS version).

``--precision bf16`` / ``COLLM_PRECISION=bf16`` forces bf16 autocast on any device, e.g. to test
that path on a CPU without bf16 units. Whatever the precision, the answer head runs in float32
(``CoLLM.answer_logit``). ``SCORE_TOLERANCE`` is the promise each precision keeps: the same request
gives the same scores within it, whatever else is in its batch (``tests/test_robustness.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .config import DEVICES, PRECISIONS
from .errors import InputError

# The same (user, item) scores within this much whatever the batch company, per precision. float32:
# summation order only (measured ~1e-7). bf16: an 8-bit mantissa in every matmul (measured up to 4e-3).
SCORE_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}
BF16_MIN_SPEEDUP = 1.3  # training on a CPU takes bf16 only when measured at least this much faster
PURPOSES = ("score", "train")


def score_tolerance(precision: str) -> float:
    """How far the same request's scores may move with its batch company, in ``precision``."""
    return SCORE_TOLERANCE[precision]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: the CPU *can* multiply bf16 in hardware (not that it is faster)."""
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


def measure_cpu_bf16(width: int = 576, rows: int = 800, repeats: int = 5) -> tuple[float, float]:
    """(float32, bf16) GFLOP/s of one ``rows x width x 4*width`` matmul (the shape of a feed-forward
    projection of the model, e.g. SmolLM2's 576 -> 1536 is close), best of ``repeats``, under the same
    autocast the model would run in."""
    a, b = torch.randn(rows, width), torch.randn(width, 4 * width)
    flop = 2 * rows * width * 4 * width

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first call warms up the kernel
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                a @ b
            times.append(time.perf_counter() - start)
        return flop / min(times[1:]) / 1e9

    return best(False), best(True)


def resolve_precision(name: str, device: torch.device, purpose: str = "score",
                      width: int = 576) -> tuple[str, str]:
    """('fp32' or 'bf16', why): the precision ``name`` asks for on ``device``, for ``purpose``."""
    if name not in PRECISIONS:
        raise InputError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r} is not one of {PURPOSES}")
    if name != "auto":
        return name, "asked for (--precision / COLLM_PRECISION)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this CUDA device computes bf16 natively"
        return "fp32", "auto: this CUDA device has no native bf16"
    if device.type != "cpu":
        return "fp32", f"auto: float32 on {device.type}"
    if purpose == "score":
        return "fp32", ("auto: float32 for scoring on a CPU (exact, independent of the batch; bf16 autocast "
                        "was measured no faster on CPUs)")
    if not cpu_has_native_bf16():
        return "fp32", "auto: this CPU has no bf16 units (emulated bf16 is slower)"
    fp32, bf16 = measure_cpu_bf16(width)
    measured = f"a {width}-wide matmul ran at {bf16:.0f} GFLOP/s in bf16 vs {fp32:.0f} in float32"
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        return "bf16", f"auto: measured faster, {measured}"
    return "fp32", f"auto: bf16 measured not faster ({measured})"


@dataclass(frozen=True)
class Runtime:
    """The device and precision one process runs on, and why (recorded in manifests and results)."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; the answer head stays float32)
    reason: str = "the default"  # why this precision: shown in the app's status line and the manifest

    @classmethod
    def choose(cls, device: str = "auto", precision: str = "auto", purpose: str = "score",
               width: int = 576) -> Runtime:
        """``purpose``: "score" (the app, evaluation, analyses) or "train"; ``width``: the LLM's hidden
        size, the shape a CPU training micro-benchmark measures."""
        chosen = resolve_device(device)
        return cls(chosen, *resolve_precision(precision, chosen, purpose, width))

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def tolerance(self) -> float:
        """The promise: same request, same scores within this, whatever the batch company."""
        return score_tolerance(self.precision)

    def describe(self) -> dict:
        """What the manifest and the results record."""
        info = {"device": str(self.device), "precision": self.precision, "precision_reason": self.reason}
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        elif self.device.type == "cpu":
            info["cpu"] = torch.backends.cpu.get_cpu_capability()
            info["cpu_native_bf16"] = cpu_has_native_bf16()
        return info

    def __str__(self) -> str:
        return f"{self.device.type} · {'bf16 autocast' if self.bf16 else 'float32'} ({self.reason})"
