"""Device and precision: ``auto`` decides from the hardware's capabilities (faked here)."""

from __future__ import annotations

import pytest
import torch

from collm_demo import device as dev
from collm_demo.device import Runtime, resolve_device, resolve_precision
from collm_demo.errors import InputError


@pytest.fixture
def fake(monkeypatch):
    def set_caps(cuda=False, cuda_bf16=False, cpu_bf16=False, amx=False, mps=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return set_caps


@pytest.mark.parametrize("caps,device,precision", [
    ({}, "cpu", "fp32"),  # a CPU without bf16 units: emulated bf16 is slower, so float32
    ({"cpu_bf16": True}, "cpu", "bf16"),  # AVX512-BF16
    ({"amx": True}, "cpu", "bf16"),  # AMX tiles
    ({"cuda": True, "cuda_bf16": True}, "cuda", "bf16"),
    ({"cuda": True, "cuda_bf16": False}, "cuda", "fp32"),  # e.g. a T4: no native bf16
    ({"mps": True}, "mps", "fp32"),
])
def test_auto_follows_the_hardware(fake, caps, device, precision):
    fake(**caps)
    chosen = Runtime.choose()
    assert chosen.device.type == device and chosen.precision == precision


def test_explicit_choices_are_kept_or_refused(fake):
    fake()
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: honoured, even if slow
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="not one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_runtime_is_recorded_with_the_cpu_capability(fake):
    fake(cpu_bf16=True)
    info = Runtime.choose().describe()
    assert info["device"] == "cpu" and info["precision"] == "bf16" and info["cpu_native_bf16"] is True
    assert dev.cpu_has_native_bf16()


def test_cli_accepts_device_and_precision_on_every_model_command():
    from collm_demo.__main__ import build_parser

    parser = build_parser()
    for command in ("train", "evaluate", "embedding-map", "ceiling", "import-embeddings"):
        extra = ["--name", "x", "--users", "u", "--items", "i"] if command == "import-embeddings" else []
        args = parser.parse_args([command, *extra, "--device", "cpu", "--precision", "fp32"])
        assert args.device == "cpu" and args.precision == "fp32"


def test_gradient_checkpointing_keeps_gradients_reaching_the_projector(tiny_llm_dir):
    """The CF tokens are written out of place, so non-reentrant checkpointing still trains the projector."""
    from collm_demo.collm import CoLLM, Projector
    from collm_demo.llm import load_llm

    grads = []
    for checkpointing in (False, True):
        llm = load_llm(str(tiny_llm_dir))
        if checkpointing:
            llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(0)
        model = CoLLM(llm.model, llm.tokenizer, Projector(6, llm.hidden_size))
        model.train()
        prompts = [model.builder.build(["Heat", "Jaws"], [1, 0], t, True) for t in ("Babe", "Fargo")]
        torch.manual_seed(1)
        users, items = torch.randn(2, 6), torch.randn(2, 6)
        model(prompts, users, items).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.projector.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
