"""Device and precision: what ``auto`` picks on each kind of hardware (capabilities faked here),
the reason it records, and the promise each precision keeps."""

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
    ({}, "cpu", "fp32"),  # a CPU without bf16 units
    # CPUs with bf16 units still score in float32: measured no faster, and bf16 makes a score depend
    # on the other rows in its batch (issue 24). Capability flags alone never decide.
    ({"cpu_bf16": True}, "cpu", "fp32"),  # AVX512-BF16
    ({"amx": True}, "cpu", "fp32"),  # AMX tiles
    ({"cuda": True, "cuda_bf16": True}, "cuda", "bf16"),
    ({"cuda": True, "cuda_bf16": False}, "cuda", "fp32"),  # e.g. a T4: no native bf16
    ({"mps": True}, "mps", "fp32"),
])
def test_auto_scoring_precision(fake, monkeypatch, caps, device, precision):
    fake(**caps)
    monkeypatch.setattr(dev, "measure_cpu_bf16", lambda *a, **k: pytest.fail("scoring never times bf16"))
    chosen = Runtime.choose()
    assert chosen.device.type == device and chosen.precision == precision
    assert chosen.reason.startswith("auto:")


@pytest.mark.parametrize("caps,measured,precision", [
    ({}, None, "fp32"),  # no bf16 units: not even measured
    ({"cpu_bf16": True}, (105.0, 65.0), "fp32"),  # AVX512-BF16 without AMX, as measured in issue 24
    ({"amx": True}, (105.0, 400.0), "bf16"),  # measured much faster: taken, and the numbers are the reason
    ({"amx": True}, (105.0, 120.0), "fp32"),  # faster, but under BF16_MIN_SPEEDUP
])
def test_auto_training_precision_on_a_cpu_follows_a_measurement(fake, monkeypatch, caps, measured, precision):
    fake(**caps)
    widths = []

    def measure(width=576, **_):
        if measured is None:
            pytest.fail("a CPU without bf16 units is not measured")
        widths.append(width)
        return measured
    monkeypatch.setattr(dev, "measure_cpu_bf16", measure)
    chosen = Runtime.choose(purpose="train", width=64)
    assert chosen.precision == precision
    if measured is not None:
        assert widths == [64]  # the model's own width
        assert f"{measured[1]:.0f} GFLOP/s in bf16 vs {measured[0]:.0f}" in chosen.reason
        assert chosen.describe()["precision_reason"] == chosen.reason


def test_measuring_bf16_gives_positive_rates():
    fp32, bf16 = dev.measure_cpu_bf16(width=32, rows=16, repeats=1)
    assert fp32 > 0 and bf16 > 0


def test_explicit_choices_are_kept_or_refused(fake):
    fake()
    # asked for: honoured on any CPU, even one without bf16 units (how CI tests the bf16 path)
    assert resolve_precision("bf16", torch.device("cpu")) == ("bf16", "asked for (--precision / COLLM_PRECISION)")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="not one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_runtime_is_recorded_with_the_cpu_capability_and_the_reason(fake):
    fake(cpu_bf16=True)
    runtime = Runtime.choose()
    info = runtime.describe()
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["cpu_native_bf16"] is True
    assert info["precision_reason"] == runtime.reason and "float32" in str(runtime)
    assert dev.cpu_has_native_bf16()


def test_the_environment_forces_the_precision_of_the_app_and_the_cli(monkeypatch):
    from collm_demo.__main__ import build_parser
    from collm_demo.config import AppConfig

    monkeypatch.setenv("COLLM_PRECISION", "bf16")
    assert AppConfig.from_env().precision == "bf16"
    assert build_parser().parse_args(["evaluate"]).precision == "bf16"
    monkeypatch.delenv("COLLM_PRECISION")
    assert AppConfig.from_env().precision == "auto" and build_parser().parse_args(["evaluate"]).precision == "auto"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_score_keeps_its_precisions_promise_whatever_the_batch(tiny, precision):
    """The promise (``SCORE_TOLERANCE``) on the tiny model: a prompt scored alone, with others
    before it, and after them. bf16 runs emulated on a CPU without bf16 units: the same path."""
    from collm_demo.collm import CoLLM

    llm, base = tiny
    model = CoLLM(llm.model, llm.tokenizer, base.projector, runtime=Runtime(torch.device("cpu"), precision, "test"))
    torch.manual_seed(3)
    # one user (one history, one user vector), five candidates: as the app scores a request
    prompts = [model.builder.build(["Heat", "Jaws", "Alien"], [1, 0, 1], t, True)
               for t in ["Fargo", "Babe", "Speed", "Vertigo", "Toy Story"]]
    users, items = torch.randn(1, 6).expand(5, -1), torch.randn(5, 6)
    alone = model.score_shared(prompts[:1], users[:1], items[:1])
    first = model.score_shared(prompts, users, items)
    last = model.score_shared(prompts[::-1], users.flip(0), items.flip(0))
    assert abs(float(alone[0] - first[0])) <= dev.SCORE_TOLERANCE[precision]
    assert abs(float(alone[0] - last[-1])) <= dev.SCORE_TOLERANCE[precision]


def test_cli_accepts_device_and_precision_on_every_model_command():
    from collm_demo.__main__ import build_parser

    parser = build_parser()
    for command in ("train", "evaluate", "embedding-map", "ceiling", "import-embeddings"):
        extra = ["--name", "x", "--users", "u", "--items", "i"] if command == "import-embeddings" else []
        args = parser.parse_args([command, *extra, "--device", "cpu", "--precision", "fp32"])
        assert args.device == "cpu" and args.precision == "fp32"


@pytest.mark.fp32
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
