"""Shared fixtures, the only ones: tiny models and tiny MovieLens files, built by the tests themselves
(the default); and, at the end, the app on the real embedded LLM for the tests about the app."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ------------------------------------------------------------------ precision
# Every test that asserts equality or parity says which precision it runs in: ``fp32`` pins float32
# (this fixture sets COLLM_PRECISION=fp32 for the test, so the CLI and the app inside it use it
# too); ``any_precision`` runs in what COLLM_PRECISION names and asserts within that precision's
# stated tolerance (``scoring_runtime().tolerance``). CI runs the ``any_precision`` tests twice:
# as they come (float32 on a CPU) and with COLLM_PRECISION=bf16, which forces the bf16 path on
# any CPU, so a machine without bf16 units catches what one with them would.

def scoring_runtime():
    """The runtime the app and the CLI score in here (COLLM_PRECISION, else auto, on the CPU)."""
    from collm_demo.config import precision_from_env
    from collm_demo.device import Runtime

    return Runtime.choose("cpu", precision_from_env())


@pytest.fixture(autouse=True)
def _pinned_precision(request, monkeypatch):
    if request.node.get_closest_marker("fp32") is not None:
        monkeypatch.setenv("COLLM_PRECISION", "fp32")


def pytest_report_header(config):
    from collm_demo.device import cpu_has_native_bf16

    runtime = scoring_runtime()
    return (f"scoring precision: {runtime.precision} ({runtime.reason}); tolerance {runtime.tolerance:g}; "
            f"COLLM_PRECISION={os.environ.get('COLLM_PRECISION', '')!r}; cpu {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 units: {'yes' if cpu_has_native_bf16() else 'no'}")

WORDS = ("Question A user has rated the following movies liked disliked Additionally we have information "
         "about user's preferences encoded in feature Using all available make prediction whether would "
         "enjoy movie titled with Answer Yes or No Leverage to predict Toy Story Heat Jaws Alien Casino "
         "Fargo Brazil Clerks Babe Speed Twister Vertigo").split()


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS) + ' "#?:.,()\n' + " Yes No" * 20] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def make_tiny_llm(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A 2-layer Llama with a tiny BPE tokenizer, saved as a local model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


TITLES = ["Toy Story", "Heat", "Jaws", "Alien", "Casino", "Fargo", "Brazil", "Clerks", "Babe", "Speed",
          "Twister", "Vertigo"]


def synthetic_ratings(n_users: int = 40, n_items: int = 12, per_user: int = 9, seed: int = 0):
    """Two taste groups: group-0 users like even items, group-1 users like odd items."""
    rng = np.random.default_rng(seed)
    rows = []
    stamps = iter(880_000_000 + rng.permutation(10_000_000)[: n_users * per_user])  # interleaved in time
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False)
        for i in items:
            t = int(next(stamps))
            liked = (i % 2) == (u % 2)
            rating = int(rng.choice([4, 5])) if liked else int(rng.choice([1, 2]))
            rows.append((u, int(i), rating, t))
    return rows


def write_ml100k(folder: Path, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = ratings or synthetic_ratings()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    lines = []
    for n, title in enumerate(TITLES, 1):
        flags = ["0"] * 19
        flags[1 + n % 5] = "1"
        lines.append(f"{n}|{title} (199{n % 10})|01-Jan-1995||http://x|" + "|".join(flags))
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_ml1m(folder: Path, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = ratings or synthetic_ratings()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings))
    (folder / "movies.dat").write_text("".join(f"{n}::{t} (1995)::Comedy|Drama\n" for n, t in enumerate(TITLES, 1)),
                                       encoding="latin-1")
    return folder


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    return make_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("ml100k_tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_llm_dir, tiny_data_dir) -> Path:
    """All three stages trained (quick) on the tiny LLM and tiny data."""
    from collm_demo.__main__ import main

    out = tmp_path_factory.mktemp("tiny_ckpt")
    assert main(["train", "--quick", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
                 "--checkpoints", str(out)]) == 0
    return out


# ------------------------------------------------------------------ the app on the real embedded LLM
# Only for the tests about the app itself (handlers, API, browser, robustness). Which checkpoints:
# ``COLLM_TEST_CHECKPOINTS``, else ``COLLM_CHECKPOINTS``, else the project's ``checkpoints/``; if that
# folder has no CF model + projector, quick checkpoints are trained once (``python -m collm_demo train
# --quick``, a minute or two) into a temporary folder. The embedding-map layout and the results file:
# ``COLLM_TEST_LAYOUT`` / ``COLLM_TEST_RESULTS`` if set; else the project's assets when the checkpoints
# are the project's; else a quick layout computed once for those checkpoints, and FAKE_RESULTS (the UI
# only renders it). All session-scoped: one training run, one model load, one server per session.

FAKE_RESULTS = {
    "protocol": {"data": "ml-100k", "split": "test", "rows": 48, "subset": True, "llm": "test fixture",
                 "counts": {"rows": 9828, "warm": 1295, "cold": 8533}},
    "methods": {m: {s: {"auc": a + d, "uauc": a - 0.05 + d, "n": n, "uauc_users": 5}
                    for s, d, n in (("all", 0.0, 48), ("warm", 0.05, 8), ("cold", -0.02, 40))}
                for m, a in (("mf", 0.68), ("zero_shot", 0.56), ("text_only", 0.70), ("collm", 0.73))},
}
ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], what: str, timeout: int = 1800) -> None:
    started = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"[app tests] {what}: {time.time() - started:.0f} s", file=sys.stderr)


def _has_projector(folder: Path) -> bool:
    from collm_demo.cf import backend
    from collm_demo.config import DEFAULT_CF

    spec = backend(DEFAULT_CF)
    return (folder / spec.cf_file).exists() and (folder / spec.projector_file).exists()


def _app_checkpoints(tmp_path_factory) -> Path:
    from collm_demo.config import CHECKPOINT_DIR

    folder = Path(os.environ.get("COLLM_TEST_CHECKPOINTS") or os.environ.get("COLLM_CHECKPOINTS")
                  or CHECKPOINT_DIR)
    if not _has_projector(folder):
        folder = tmp_path_factory.mktemp("quick_checkpoints")
        _run([sys.executable, "-m", "collm_demo", "train", "--quick", "--checkpoints", str(folder)],
             "quick training for the app tests")
    return folder


def _app_layout(tmp_path_factory, ckpt: Path) -> Path:
    from collm_demo.config import CHECKPOINT_DIR, LAYOUT_PATH

    if os.environ.get("COLLM_TEST_LAYOUT"):
        return Path(os.environ["COLLM_TEST_LAYOUT"])
    if ckpt.resolve() == CHECKPOINT_DIR.resolve() and LAYOUT_PATH.exists():
        return LAYOUT_PATH
    if (ckpt / "embedding_map_quick.json").exists():
        return ckpt / "embedding_map_quick.json"
    path = tmp_path_factory.mktemp("app_layout") / "embedding_map_quick.json"
    code = ("from pathlib import Path; from collm_demo.embedding_map import run; "
            f"run(Path({str(ckpt)!r}), quick=True, out=Path({str(path)!r}))")
    _run([sys.executable, "-c", code], "quick embedding-map layout for the app tests")
    return path


def _app_results(tmp_path_factory, ckpt: Path) -> Path:
    from collm_demo.config import CHECKPOINT_DIR, RESULTS_PATH

    if os.environ.get("COLLM_TEST_RESULTS"):
        return Path(os.environ["COLLM_TEST_RESULTS"])
    if ckpt.resolve() == CHECKPOINT_DIR.resolve() and RESULTS_PATH.exists():
        return RESULTS_PATH
    path = tmp_path_factory.mktemp("app_results") / "results_fixture.json"
    path.write_text(json.dumps(FAKE_RESULTS))
    return path


@pytest.fixture(scope="session")
def app_config(tmp_path_factory):
    """The app's configuration for the app tests: the settings an ``AppConfig.from_env`` would
    give (device, threads, ...), pointed at the checkpoints, layout and results chosen above."""
    from collm_demo.config import AppConfig

    ckpt = _app_checkpoints(tmp_path_factory)
    return dataclasses.replace(AppConfig.from_env(), checkpoint_dir=ckpt,
                               layout_path=_app_layout(tmp_path_factory, ckpt),
                               results_path=_app_results(tmp_path_factory, ckpt))


@pytest.fixture(scope="session")
def app_env(app_config) -> dict[str, str]:
    """``app_config`` as environment variables, for apps started in a subprocess (``_launch.AppServer``,
    ``python -m benchmarks.load_compare``); this process's environment is left alone."""
    return {"COLLM_CHECKPOINTS": str(app_config.checkpoint_dir), "COLLM_LAYOUT": str(app_config.layout_path),
            "COLLM_RESULTS": str(app_config.results_path), "GRADIO_ANALYTICS_ENABLED": "False"}


@pytest.fixture(scope="session")
def real_state(app_config):
    """The app's process-wide state (``set_state``) on ``app_config``, with the model loaded."""
    from collm_demo.ui.state import AppState, set_state

    state = set_state(AppState(config=app_config))
    state.pipeline()  # load the model now
    return state


def _close_when_idle(demo, timeout: float = 120.0) -> None:
    """Let running events finish first: a worker thread still inside a torch call while the
    interpreter shuts down makes the whole process abort ("terminate called ...", rc 134)."""
    queue = getattr(demo, "_queue", None)
    deadline = time.time() + timeout
    while queue is not None and time.time() < deadline:
        if not any(job is not None for job in getattr(queue, "active_jobs", [])):
            break
        time.sleep(0.2)
    demo.close()


@pytest.fixture(scope="session")
def app_url(real_state):
    """``app.demo`` (built by app.py from ``get_state()``, i.e. ``real_state``) served on a free
    loopback port for the session; closed at the end once no event is running."""
    import importlib

    from _launch import free_port

    from collm_demo.ui import launch_kwargs

    # app.py builds its demo at import, from the state installed then: rebuild it if imported earlier
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    _close_when_idle(app.demo)


@pytest.fixture
def vectors(tmp_path, tiny_data_dir):
    """User and item vectors from "an outside tool" (random), with id files, for import-embeddings."""
    import json

    from collm_demo.data import load_dataset

    ds = load_dataset(tiny_data_dir)
    users = sorted(ds.interactions["user"].unique())[:30]
    items = sorted(ds.items.index)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "users.npy", rng.normal(size=(len(users), 5)).astype(np.float32))
    np.save(tmp_path / "items.npy", rng.normal(size=(len(items), 5)).astype(np.float32))
    (tmp_path / "user_ids.json").write_text(json.dumps(users))
    (tmp_path / "item_ids.txt").write_text("\n".join(items))
    return ds, tmp_path, users, items


# Three prompts of mixed lengths, and a tiny CoLLM with a random projector (CF dim 6), shared by
# the forward-pass and the inside tests.
HISTORIES = [(["Heat", "Jaws"], [1, 0]), (["Toy Story"], [1]),
             (["Alien", "Casino", "Fargo", "Brazil", "Clerks"], [1, 1, 0, 1, 0])]
TARGETS = ["Vertigo", "Babe", "Twister Speed Heat"]


@pytest.fixture(scope="module")
def tiny(tiny_llm_dir):
    from collm_demo.collm import CoLLM, Projector
    from collm_demo.llm import load_llm

    llm = load_llm(str(tiny_llm_dir))
    torch.manual_seed(0)
    return llm, CoLLM(llm.model, llm.tokenizer, Projector(6, llm.hidden_size))
