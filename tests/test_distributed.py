"""Several processes = one process: torchrun with the gloo backend on this CPU, tiny models.

Measured here (2 cores, float32): after training, 2 ranks × batch b and 1 process × batch 2b give
LoRA / projector weights that differ by at most ~6e-4 (weights up to ~0.2, lr 0.05): the same
rows, order and averaged gradients, summed in another order — float rounding that Adam's
division by sqrt(v) magnifies where a gradient is near zero. The early-stopping trajectory is the
same. Sharded scoring is exactly equal to unsharded scoring.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from collm_demo.collm import CoLLM, Projector
from collm_demo.distributed import Ranks
from collm_demo.llm import load_llm
from conftest import TITLES, synthetic_ratings, write_ml100k

WEIGHT_TOLERANCE = 2e-3
pytestmark = pytest.mark.fp32


def cli(*args: str, ranks: int = 1, expect: int = 0) -> str:
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    # float32 pinned: the tolerances below are float32's (bf16 training diverges between 1 and 2 ranks)
    proc = subprocess.run([sys.executable, *launcher, "-m", "collm_demo", *args, "--precision", "fp32"],
                          capture_output=True, text=True, timeout=600)
    assert (proc.returncode == 0) == (expect == 0), proc.stderr[-3000:]
    return proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llm_dir):
    root = tmp_path_factory.mktemp("ddp")
    data = write_ml100k(root / "data", synthetic_ratings(n_users=160, per_user=9, seed=3))
    base = root / "base"
    cli("train", "--stage", "cf", "--quick", "--llm", str(tiny_llm_dir), "--data", str(data), "--checkpoints", str(base))
    return root, data, base


def train_both(setup, tiny_llm_dir, stage: str, extra: list[str], lora_from: Path | None = None) -> tuple[Path, Path]:
    root, data, base = setup
    folders = []
    for ranks, batch in ((1, 8), (2, 4)):
        folder = root / f"{stage}_{ranks}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(lora_from or base, folder)
        # the paper's recipe: the default's grouped stage 2 runs in one process only (train.micro_batches)
        cli("train", "--stage", stage, "--quick", "--recipe", "paper", "--batch-size", str(batch), *extra,
            "--llm", str(tiny_llm_dir),
            "--data", str(data), "--checkpoints", str(folder), ranks=ranks)
        folders.append(folder)
    return folders[0], folders[1]


def max_diff(a: Path, b: Path) -> tuple[float, float]:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x), max(float(x[k].abs().max()) for k in x)


def histories(folder: Path, stage: str) -> list:
    record = json.loads((folder / "manifest.json").read_text())["stages"][stage]
    return [(h["step"], h["valid_auc"]) for h in record["history"]], record["best_step"]


@pytest.mark.slow
def test_two_ranks_train_the_same_lora_and_projector_as_one_process(setup, tiny_llm_dir):
    one, two = train_both(setup, tiny_llm_dir, "lora", ["--lora-rows", "64", "--lora-lr", "0.05", "--lora-dropout", "0"])
    (hist_one, best_one), (hist_two, best_two) = histories(one, "lora"), histories(two, "lora")
    assert hist_one == hist_two and best_one == best_two
    diff, scale = max_diff(one / "lora" / "adapter_model.safetensors", two / "lora" / "adapter_model.safetensors")
    assert diff < WEIGHT_TOLERANCE, (diff, scale)
    assert json.loads((two / "manifest.json").read_text())["runtime"]["processes"] == 2

    p_one, p_two = train_both(setup, tiny_llm_dir, "projector", ["--projector-rows", "96", "--projector-lr", "0.01"],
                              lora_from=one)
    (hist_one, best_one), (hist_two, best_two) = histories(p_one, "projector"), histories(p_two, "projector")
    assert hist_one == hist_two and best_one == best_two and len(hist_one) > 2
    diff, scale = max_diff(p_one / "projector_mf.safetensors", p_two / "projector_mf.safetensors")
    assert diff < WEIGHT_TOLERANCE, (diff, scale)


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(setup, tiny_llm_dir, tmp_path):
    root, data, base = setup
    folder = root / "lora_1" if (root / "lora_1").exists() else base
    outs = []
    for ranks in (1, 2):
        out = tmp_path / f"results_{ranks}.json"
        cli("evaluate", "--quick", "--methods", "mf,zero_shot", "--llm", str(tiny_llm_dir), "--data", str(data),
            "--checkpoints", str(folder), "--out", str(out), ranks=ranks)
        outs.append(json.loads(out.read_text()))
    assert outs[0]["methods"] == outs[1]["methods"]
    assert outs[1]["protocol"]["runtime"]["processes"] == 2


def test_shards_sum_back_to_the_unsharded_scores_exactly(tiny_llm_dir):
    llm = load_llm(str(tiny_llm_dir))
    torch.manual_seed(0)
    model = CoLLM(llm.model, llm.tokenizer, Projector(6, llm.hidden_size))
    histories_ = [(["Heat"], [1]), (["Jaws", "Alien"], [0, 1]), (["Fargo"], [1]), (["Babe", "Speed"], [1, 1])]
    prompts, users = [], []
    table = torch.randn(len(histories_), 6)
    for u, (hist, labels) in enumerate(histories_):
        for target in TITLES[: 3 + u]:
            prompts.append(model.builder.build(hist, labels, target, True))
            users.append(table[u])
    users, items = torch.stack(users), torch.randn(len(prompts), 6)
    whole = model.score_shared(prompts, users, items, prefix_batch=1, suffix_batch=4)
    for world in (2, 3):
        parts = [model.score_shared(prompts, users, items, prefix_batch=1, suffix_batch=4, shard=(r, world))
                 for r in range(world)]
        assert torch.equal(sum(parts[1:], parts[0]), whole)


def test_shares_of_a_global_batch():
    import pandas as pd

    batch = pd.DataFrame({"x": range(7)})
    shares = [Ranks(r, 2).share(batch) for r in range(2)]
    assert [list(s["x"]) for s, _ in shares] == [[0, 1, 2, 3], [4, 5, 6]]
    tail = pd.DataFrame({"x": [9]})
    (first, w0), (second, w1) = Ranks(0, 2).share(tail), Ranks(1, 2).share(tail)
    assert list(first["x"]) == [9] and w0.tolist() == [1.0]
    assert list(second["x"]) == [9] and w1.tolist() == [0.0]  # padding: runs, weighs nothing


def test_the_default_recipe_is_refused_under_torchrun_before_any_stage_runs(setup, tiny_llm_dir):
    """Its grouped stage 2 runs in one process: ``train --stage all`` says so at once, with the way
    out, instead of after stage 1 (hours on a real model)."""
    root, data, base = setup
    folder = root / "refused"
    shutil.copytree(base, folder, dirs_exist_ok=True)
    err = cli("train", "--stage", "all", "--quick", "--llm", str(tiny_llm_dir), "--data", str(data),
              "--checkpoints", str(folder), ranks=2, expect=2)
    assert "the projector stage of recipe grouped-stage2" in err and "--recipe paper" in err
    assert not (folder / "lora").exists() and "lora" not in json.loads((folder / "manifest.json").read_text())["stages"]
