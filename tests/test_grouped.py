"""Training one user at a time (issue 26): groups that share a history, the pairwise term, and the
shared-prefix training step, on the tiny model (float32)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from collm_demo.collm import CoLLM, Projector
from collm_demo.grouped import can_split_opening, grouped_logits, pairwise_loss, user_groups
from collm_demo.llm import load_llm

pytestmark = pytest.mark.fp32

# Two users: the first has three candidates after one history, the second two after another.
GROUPS = [[0, 1, 2], [3, 4]]
HISTORY = {0: (["Heat", "Jaws", "Alien"], [1, 0, 1]), 1: (["Toy Story", "Babe"], [1, 1])}
TARGETS = ["Fargo", "Speed", "Twister Vertigo", "Casino", "Brazil"]


@pytest.fixture
def model(tiny_llm_dir):
    llm = load_llm(str(tiny_llm_dir))
    torch.manual_seed(0)
    return CoLLM(llm.model, llm.tokenizer, Projector(6, llm.hidden_size))


def group_inputs(model, with_cf: bool):
    prompts, users = [], []
    torch.manual_seed(5)
    user_vec = torch.randn(2, 6)
    for g, members in enumerate(GROUPS):
        for n in members:
            prompts.append(model.builder.build(*HISTORY[g], TARGETS[n], with_cf))
            users.append(user_vec[g])
    return prompts, torch.stack(users), torch.randn(len(prompts), 6)


@pytest.mark.parametrize("with_cf", [True, False])
def test_grouped_step_equals_whole_prompts_in_logits_and_gradients(model, with_cf):
    """Prefix once per group + packed suffixes (one backward) == every whole prompt on its own:
    the same logits and the same gradients for the projector (and the LLM, when it trains)."""
    prompts, users, items = group_inputs(model, with_cf)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    trained = list(model.projector.parameters()) if with_cf else [model.llm.get_input_embeddings().weight]
    for p in trained:
        p.requires_grad_(True)

    def loss_and_grads(logits):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        grads = torch.autograd.grad(loss, trained)
        return logits.detach(), [g.detach() for g in grads]

    whole = loss_and_grads(torch.cat([model(prompts[n: n + 1], users[n: n + 1], items[n: n + 1])
                                      for n in range(len(prompts))]))
    grouped = loss_and_grads(grouped_logits(model, prompts, GROUPS, users, items, row_tokens=12))
    torch.testing.assert_close(grouped[0], whole[0], atol=1e-5, rtol=0)
    for g_grouped, g_whole in zip(grouped[1], whole[1]):
        torch.testing.assert_close(g_grouped, g_whole, atol=1e-5, rtol=1e-4)


def test_stage_two_runs_the_opening_without_gradients_and_gets_the_same_logits_and_gradients(model):
    """With the LLM frozen (stage 2, the paper's frozen LoRA) the history needs no backward: the
    split step (opening under no_grad, the rest from the user slot on with gradients) equals whole
    prompts one by one; once an LLM parameter trains, the split is not taken."""
    prompts, users, items = group_inputs(model, True)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    model.llm.requires_grad_(False)
    trained = list(model.projector.parameters())
    heads = [prompts[g[0]] for g in GROUPS]
    assert can_split_opening(model, heads)
    with torch.no_grad():
        assert not can_split_opening(model, heads)  # nothing to split when nothing has gradients

    def loss_and_grads(logits):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return logits.detach(), [g.detach() for g in torch.autograd.grad(loss, trained)]

    whole = loss_and_grads(torch.cat([model(prompts[n: n + 1], users[n: n + 1], items[n: n + 1])
                                      for n in range(len(prompts))]))
    split = loss_and_grads(grouped_logits(model, prompts, GROUPS, users, items, row_tokens=12))
    joined = loss_and_grads(grouped_logits(model, prompts, GROUPS, users, items, row_tokens=12, split_opening=False))
    for other in (split, joined):
        torch.testing.assert_close(other[0], whole[0], atol=1e-5, rtol=0)
        for g_other, g_whole in zip(other[1], whole[1]):
            torch.testing.assert_close(g_other, g_whole, atol=1e-5, rtol=1e-4)
    model.llm.get_input_embeddings().weight.requires_grad_(True)
    assert not can_split_opening(model, heads)  # the opening's embeddings train: its backward is needed


def test_grouped_step_refuses_prompts_with_different_histories(model):
    prompts, users, items = group_inputs(model, True)
    with pytest.raises(ValueError, match="share one prefix"):
        grouped_logits(model, prompts, [[0, 3]], users, items)


def test_pairwise_term_matches_a_hand_computed_value():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.1])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # pairs (liked, disliked) within a group: (0,1), (2,1) in group 0; none liked-over-disliked reversed
    # in group 1: (4,3). Mean of log(1 + exp(-(s_i - s_j))).
    expected = np.mean([math.log1p(math.exp(-(2.0 - 0.5))), math.log1p(math.exp(-(-1.0 - 0.5))),
                        math.log1p(math.exp(-(0.1 - 0.3)))])
    assert float(pairwise_loss(logits, labels, groups)) == pytest.approx(expected, rel=1e-6)


def test_pairwise_term_shrinks_as_the_groups_order_improves():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0])
    worse = pairwise_loss(torch.tensor([0.0, 1.0, 0.0, 1.0]), labels, groups)  # disliked above liked
    tied = pairwise_loss(torch.zeros(4), labels, groups)
    better = pairwise_loss(torch.tensor([1.0, 0.0, 1.0, 0.0]), labels, groups)
    assert float(tied) == pytest.approx(math.log(2))
    assert float(worse) > float(tied) > float(better)
    # a group with one class only adds nothing; across groups nothing is compared
    assert float(pairwise_loss(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))) == 0.0


def test_user_groups_share_the_first_rows_history_strictly_earlier():
    rows = pd.DataFrame({"user": ["a"] * 5 + ["b"] * 2, "item": list("1234567"),
                         "timestamp": [5, 1, 3, 4, 2, 9, 8], "label": [1, 0, 1, 0, 1, 1, 0]})
    rows["history_items"] = [[f"h{t}"] for t in rows["timestamp"]]  # each row's own (distinct) history
    rows["history_labels"] = [[1]] * len(rows)
    grouped = user_groups(rows, size=3, seed=0)
    assert sorted(grouped.index) == sorted(rows.index) and grouped["group"].nunique() == 3
    for _, group in grouped.groupby("group"):
        assert group["user"].nunique() == 1 and len(group) <= 3
        first = group["timestamp"].min()
        assert all(h == [f"h{first}"] for h in group["history_items"])  # the earliest row's history
        assert list(group["timestamp"]) == sorted(group["timestamp"])
    assert user_groups(rows, size=3, seed=0).equals(grouped)  # seeded
    single = user_groups(rows, size=1, seed=0)
    assert all(h == [f"h{t}"] for h, t in zip(single["history_items"], single["timestamp"]))  # own history kept


def test_micro_batches_keep_groups_whole():
    from collm_demo.config import TrainConfig
    from collm_demo.distributed import Ranks
    from collm_demo.train import micro_batches

    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"user": rng.integers(0, 6, 60).astype(str), "item": [str(n) for n in range(60)],
                         "timestamp": rng.permutation(60), "label": rng.integers(0, 2, 60)})
    rows["history_items"] = [[str(t)] for t in rows["timestamp"]]
    rows["history_labels"] = [[1]] * len(rows)
    batches = micro_batches(rows, 8, TrainConfig(group_size=4), Ranks())
    assert sum(len(b) for b in batches) == 60
    seen = set()
    for batch in batches:
        groups = set(batch["group"])
        assert not groups & seen  # a group is in exactly one batch
        seen |= groups
        assert len(batch) >= 8 or batch is batches[-1]
    assert micro_batches(rows, 8, TrainConfig(), Ranks())[0].equals(rows.iloc[:8])  # per row: as before


def test_grouped_training_is_deterministic_for_a_seed(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """Stage 2 on user groups with the pairwise term, twice from the same folder and seed: the same
    projector, bit for bit; the manifest records the recipe."""
    import shutil

    from safetensors.torch import load_file

    from collm_demo.__main__ import main

    weights = []
    for run in ("a", "b"):
        folder = tmp_path / run
        shutil.copytree(tiny_checkpoints, folder)
        assert main(["train", "--stage", "projector", "--quick", "--group-size", "4", "--pairwise-weight", "1",
                     "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
        weights.append(load_file(folder / "projector_mf.safetensors"))
        config = __import__("json").loads((folder / "manifest.json").read_text())["config"]
        assert config["group_size"] == 4 and config["pairwise_weight"] == 1.0
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key])


def test_a_recipe_can_group_only_stage_two(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """``--recipe grouped-stage2`` (lever 1): stage 1 per row, stage 2 on user groups with the pairwise
    term, as each stage's manifest record says."""
    import json
    import shutil

    from collm_demo.__main__ import main

    folder = tmp_path / "lever1"
    shutil.copytree(tiny_checkpoints, folder)
    for stage in ("lora", "projector"):
        assert main(["train", "--stage", stage, "--quick", "--recipe", "grouped-stage2", "--llm", str(tiny_llm_dir),
                     "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
    stages = json.loads((folder / "manifest.json").read_text())["stages"]
    assert (stages["lora"]["group_size"], stages["lora"]["pairwise_weight"]) == (1, 0.0)
    assert (stages["projector"]["group_size"], stages["projector"]["pairwise_weight"]) == (8, 1.0)
