"""Start-up never dies on a bad checkpoint file (issue 17): every tampered copy of a small trained
folder starts the app in the documented fallback (the plain LLM, a banner naming the file and the
reason), and nothing from the refused folder is served afterwards. Issue 24: every backend's files
are checked before the page is built (shape, dtype, finite values), not only the configured one's,
so a refused folder offers nothing from the first /config on."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from collm_demo.checkpoints import read_manifest
from collm_demo.config import AppConfig
from collm_demo.errors import CheckpointError, InputError
from collm_demo.ui import banner, core
from collm_demo.ui.hub import REFUSED_CHOICE
from collm_demo.ui.state import AppState

# ------------------------------------------------------------------ how a folder is tampered with

def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _rewrite(path: Path, change) -> None:
    """Rewrite a safetensors file with its metadata kept and its tensors changed."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: change(v) for k, v in load_file(str(path)).items()}, str(path), metadata=metadata)


def _header_only(path: Path, header: dict) -> None:
    """A safetensors header (8-byte length, JSON) with no data behind it."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _second_backend(folder: Path, change_cf=None, change_projector=None) -> None:
    """Add a backend 'toy' (a copy of mf's two files, one of them changed): not the configured one."""
    shutil.copy(folder / CF, folder / "cf_toy.safetensors")
    shutil.copy(folder / PROJECTOR, folder / "projector_toy.safetensors")
    if change_cf is not None:
        _rewrite(folder / "cf_toy.safetensors", change_cf)
    if change_projector is not None:
        _rewrite(folder / "projector_toy.safetensors", change_projector)


CF, PROJECTOR, LORA = "cf_mf.safetensors", "projector_mf.safetensors", "lora/adapter_model.safetensors"
HUGE = {"user_table": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}

# name: (tamper(folder), file named in the banner, reason named in the banner, known before the LLM loads)
VARIANTS = {
    "cf truncated": (lambda d: _truncate(d / CF), CF, "not a readable safetensors", True),
    "projector truncated": (lambda d: _truncate(d / PROJECTOR, 0.05), PROJECTOR, "not a readable safetensors", True),
    "header claims 2^62 bytes": (lambda d: (d / CF).write_bytes(struct.pack("<Q", 2**62) + b"{}"), CF,
                                 "not a readable safetensors", True),
    "header claims 10^12 elements": (lambda d: _header_only(d / CF, HUGE), CF, "not a readable safetensors", True),
    "pickle renamed .safetensors (CF)": (lambda d: torch.save({"user_table": torch.zeros(2, 2)}, d / CF), CF,
                                         "not a readable safetensors", True),
    "pickle renamed .safetensors (LoRA)": (lambda d: torch.save({"w": torch.zeros(2)}, d / LORA),
                                           "adapter_model.safetensors", "not a readable safetensors", True),
    "LoRA truncated": (lambda d: _truncate(d / LORA, 0.02), "adapter_model.safetensors", "not a readable", True),
    "LoRA config not JSON": (lambda d: (d / "lora/adapter_config.json").write_text("{nope"), "adapter_config.json",
                             "not valid JSON", True),
    "LoRA config a list": (lambda d: (d / "lora/adapter_config.json").write_text("[1, 2, 3]"),
                           "adapter_config.json", "not a JSON object", True),
    "LoRA config missing": (lambda d: (d / "lora/adapter_config.json").unlink(), "adapter_config.json", "missing",
                            True),
    "manifest a list": (lambda d: (d / "manifest.json").write_text("[1, 2, 3]"), "manifest.json",
                        "not a JSON object", True),
    "manifest llm a string": (lambda d: _edit_manifest(d, lambda m: m.update(llm="str")), "manifest.json",
                              "'llm' is not an object", True),
    "manifest cf a string": (lambda d: _edit_manifest(d, lambda m: m.update(cf="str")), "manifest.json",
                             "'cf' is not an object", True),
    "manifest cf entry a list": (lambda d: _edit_manifest(d, lambda m: m["cf"].update(mf=[1])), "manifest.json",
                                 "is not an object", True),
    "manifest hidden size a string": (lambda d: _edit_manifest(d, lambda m: m["llm"].update(hidden_size="32")),
                                      "manifest.json", "whole number", True),
    "manifest data protocol a string": (lambda d: _edit_manifest(d, lambda m: m["data"].update(protocol="x")),
                                        "manifest.json", "data.protocol", True),
    "manifest names a missing LLM folder": (lambda d: _edit_manifest(d, lambda m: m["llm"].update(name="/no/such/llm")),
                                            "/no/such/llm", "trained for the LLM", True),
    "CF file is a folder": (lambda d: ((d / CF).unlink(), (d / CF).mkdir()), CF, "not a file", True),
    "projector of the wrong shape": (lambda d: _rewrite(d / PROJECTOR, lambda t: torch.zeros(3, 3)), PROJECTOR,
                                     "size mismatch", True),
    "projector of NaN": (lambda d: _rewrite(d / PROJECTOR, lambda t: torch.full_like(t, float("nan"))), PROJECTOR,
                         "NaN", True),
    "projector of integers": (lambda d: _rewrite(d / PROJECTOR, lambda t: t.to(torch.int32)), PROJECTOR,
                              "must be floating point", True),
    "LoRA of another shape": (lambda d: _rewrite(d / LORA, lambda t: torch.zeros(3, 3)), "lora",
                              "does not fit this LLM", True),
    "LoRA of NaN": (lambda d: _rewrite(d / LORA, lambda t: torch.full_like(t, float("nan"))), "adapter_model",
                    "NaN", True),
    # issue 24: a backend other than the configured one is checked as fully, before the page is built
    "another backend's projector of the wrong shape": (
        lambda d: _second_backend(d, change_projector=lambda t: torch.zeros(3, 3)), "projector_toy.safetensors",
        "size mismatch", True),
    "another backend's projector of NaN": (
        lambda d: _second_backend(d, change_projector=lambda t: torch.full_like(t, float("nan"))),
        "projector_toy.safetensors", "NaN", True),
    "another backend's CF vectors of NaN": (
        lambda d: _second_backend(d, change_cf=lambda t: torch.full_like(t, float("nan"))), "cf_toy.safetensors",
        "NaN", True),
    "another backend's CF file not in the manifest's record": (
        lambda d: (_second_backend(d), _edit_manifest(d, lambda m: m["cf"].update(toy=m["cf"]["mf"] | {"users": 3}))),
        "toy CF model has 3 users", "the CF file has", True),
    "manifest records another LLM depth": (lambda d: _edit_manifest(d, lambda m: m["llm"].update(layers=99)),
                                           "99 layers", "has 2", True),
}


def tampered(source: Path, folder: Path, tamper) -> Path:
    shutil.copytree(source, folder)
    tamper(folder)
    return folder


def app_state(folder: Path, llm: Path, data: Path) -> AppState:
    """The app's state as app.py builds it, on the tiny LLM and data (the model not loaded yet)."""
    return AppState(AppConfig(checkpoint_dir=folder, llm=str(llm), data=str(data), device="cpu", precision="fp32",
                              layout_path=folder / "none.json", results_path=folder / "none.json"))


# ------------------------------------------------------------------ every variant: fallback + banner

@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_corrupt_file_starts_the_app_in_fallback_naming_file_and_reason(
        name, tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    tamper, file, reason, before_load = VARIANTS[name]
    folder = tampered(tiny_checkpoints, tmp_path / "ckpt", tamper)
    state = app_state(folder, tiny_llm_dir, tiny_data_dir)
    if before_load:  # found without the LLM: the page, built next, offers no CF model at all
        assert state.hub.refusal is not None and file in state.hub.refusal
        assert state.hub.backend_choices() == [REFUSED_CHOICE]
    pipe = state.pipeline()  # the load never raises: the fallback is the plain LLM
    assert pipe.cf is None and not pipe.has_lora and not pipe.has_projector
    assert pipe.available_methods() == ["zero_shot"]
    text = banner(state)
    assert "The checkpoints were refused" in text and file in text and reason in text, text
    assert str(folder) in text
    # nothing from the refused folder is served: no backend offered, none loadable
    assert state.hub.backends() == []
    assert state.hub.backend_choices() == [REFUSED_CHOICE]
    assert state.pipeline("mf") is pipe  # the configured name is the fallback itself, holding no CF model
    with pytest.raises(InputError, match="refused"):
        state.pipeline("lightgcn")
    with pytest.raises(InputError, match="not available"):
        core.compare(state, "1", "1, 2", "mf")
    out = core.compare(state, "1", "1, 2")  # still scores, without CF tokens
    assert [o["id"] for o in out] == ["1", "2"] and all(o["score_cf"] is None for o in out)


def test_a_refusal_found_once_the_llm_is_loaded_loads_no_backend(tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                               tmp_path):
    """What only the loaded LLM tells: a manifest that records no hidden size, and another backend's
    projector made for an LLM of width 64 (the running one has 32; the projector is consistent with
    its own record). The selector built before listed the folder's backends; the loader compares
    every projector with the LLM, refuses the folder, and none of its backends is loaded."""
    from collm_demo.checkpoints import save_projector
    from collm_demo.collm import Projector

    folder = tampered(tiny_checkpoints, tmp_path / "ckpt", lambda d: _second_backend(d))
    _edit_manifest(folder, lambda m: m["llm"].pop("hidden_size"))
    cf_dim = json.loads((folder / "manifest.json").read_text())["cf"]["mf"]["vector_dim"]
    save_projector(Projector(cf_dim, 64), folder / "projector_toy.safetensors", "mf")
    state = app_state(folder, tiny_llm_dir, tiny_data_dir)
    assert state.hub.backends() == ["mf", "toy"]  # before the load: the files fit one another
    assert state.pipeline().cf is None
    assert "projector_toy.safetensors" in state.hub.refusal and "hidden size 64" in state.hub.refusal
    assert state.hub.backends() == [] and state.hub.backend_choices() == [REFUSED_CHOICE]
    with pytest.raises(InputError, match="refused.*hidden size 64"):
        state.pipeline("toy")
    with pytest.raises(InputError):
        core.compare(state, "1", "1, 2", "toy")
    assert state.hub._variants == {}  # noqa: SLF001 - the point: nothing was loaded from the folder


@pytest.mark.parametrize("name", ["LoRA config a list", "another backend's projector of the wrong shape"])
def test_the_page_of_a_refused_folder_offers_no_cf_model(name, tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                          tmp_path):
    """The page is built (it never raises on a bad folder); its CF-model selector holds the one
    'refused' entry in the page's config (what /config serves before any event has run), and the
    first score works on it."""
    from collm_demo.ui import build_demo, recommend

    folder = tampered(tiny_checkpoints, tmp_path / "ckpt", VARIANTS[name][0])
    state = app_state(folder, tiny_llm_dir, tiny_data_dir)
    demo = build_demo(state)
    selector = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "cf-model")
    assert [tuple(choice) for choice in selector.choices] == [REFUSED_CHOICE] and not selector.interactive
    served = next(c["props"] for c in demo.config["components"] if c["props"].get("elem_id") == "cf-model")
    assert [tuple(choice) for choice in served["choices"]] == [REFUSED_CHOICE]
    user = state.catalog.default_user()
    table, _ = recommend.load_history(state, "user", user)
    result = recommend.score(state, "user", user, table, ["1", "2"], cf=selector.value)
    assert all(r.score_cf is None for r in result.rows)


# ------------------------------------------------------------------ the LLM is never the manifest's choice

def test_the_manifest_never_chooses_the_llm(tiny_checkpoints, tiny_data_dir, monkeypatch):
    """Without --llm / COLLM_LLM the LLM is the embedded default, whatever path the manifest records."""
    from collm_demo import pipeline

    assert read_manifest(tiny_checkpoints)["llm"]["name"] != "embedded:SmolLM2-135M-Instruct"
    asked = []

    def no_load(name=None, *args, **kwargs):
        asked.append(name)
        raise CheckpointError("stop here")

    monkeypatch.setattr(pipeline, "load_llm", no_load)
    with pytest.raises(CheckpointError, match="stop here"):
        pipeline.load_pipeline(tiny_checkpoints, None, str(tiny_data_dir))
    assert asked == [None]  # None: the embedded default (llm.resolve_llm_name)


def test_checkpoints_of_another_llm_are_refused_by_name(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    from collm_demo.pipeline import load_pipeline

    other = tmp_path / "other_llm"
    shutil.copytree(tiny_llm_dir, other)  # the same shapes: only the name tells them apart
    with pytest.raises(CheckpointError, match="trained for the LLM .*running LLM is"):
        load_pipeline(tiny_checkpoints, str(other), str(tiny_data_dir))
    again = load_pipeline(tiny_checkpoints, str(tiny_llm_dir) + "/", str(tiny_data_dir))  # same folder, other spelling
    assert again.has_projector


def test_the_app_refuses_checkpoints_trained_on_other_data(tiny_checkpoints, tiny_llm_dir, tmp_path):
    from conftest import synthetic_ratings, write_ml100k

    data = write_ml100k(tmp_path / "other_data", synthetic_ratings(seed=7))
    state = app_state(tampered(tiny_checkpoints, tmp_path / "ckpt", lambda d: None), tiny_llm_dir, data)
    assert state.hub.refusal is not None and "trained on other data" in state.hub.refusal
    assert state.pipeline().cf is None and state.hub.backends() == []


# ------------------------------------------------------------------ the real app process

@pytest.mark.integration
def test_the_app_process_starts_and_serves_in_fallback(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """`python app.py` on a folder with a pickle for an adapter: it starts, /compare scores without
    CF tokens, and a cf_model from that folder is refused with a message."""
    from _launch import AppServer
    from gradio_client.exceptions import AppError

    folder = tampered(tiny_checkpoints, tmp_path / "ckpt", VARIANTS["pickle renamed .safetensors (LoRA)"][0])
    env = {"COLLM_CHECKPOINTS": str(folder), "COLLM_LLM": str(tiny_llm_dir), "COLLM_DATA": str(tiny_data_dir),
           "COLLM_LAYOUT": str(tmp_path / "none.json"), "COLLM_RESULTS": str(tmp_path / "none.json"),
           "COLLM_DEVICE": "cpu", "COLLM_THREADS": "1"}
    with AppServer(env=env, log_path=str(tmp_path / "app.log")) as server:
        client = server.client(timeout=120)
        out = client.predict("1", "1, 2", "", api_name="/compare")
        assert [o["id"] for o in out] == ["1", "2"] and all(o["score_cf"] is None for o in out)
        with pytest.raises(AppError, match="not available|refused"):
            client.predict("1", "1, 2", "mf", api_name="/compare")
        assert server.process.poll() is None
    assert "Traceback" not in (tmp_path / "app.log").read_text()


def test_stage_two_lora_copies_are_checked_at_start(tiny_checkpoints, tmp_path):
    """A stage-2 LoRA copy (lora_<cf>/) is read and checked with the rest of the folder before the
    page is built: a truncated one, or one that does not fit the LLM, is named."""
    from collm_demo.checkpoints import check_folder, check_lora_fits

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, folder)
    shutil.copytree(folder / "lora", folder / "lora_mf")
    check_folder(folder)  # a good copy passes
    tensors = load_file(str(folder / "lora_mf" / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith(".lora_A.weight"))
    module = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
    rank, width = tensors[key].shape
    out = tensors[key.replace("lora_A", "lora_B")].shape[0]
    with pytest.raises(CheckpointError, match="lora_mf"):
        check_lora_fits(folder / "lora_mf", {module + ".weight": [out, width + 1]})
    path = folder / "lora_mf" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="lora_mf"):
        check_folder(folder)
