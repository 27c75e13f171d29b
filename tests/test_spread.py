"""The term that keeps users apart in the projector (collm_demo/spread.py), on tiny tensors and the
tiny pipeline. Runs in float32 whatever the machine (the projector is float32 code)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from collm_demo.collm import Projector
from collm_demo.spread import cosines, similarity_loss, spread_loss, spread_sample

pytestmark = pytest.mark.fp32


def test_a_mapping_that_keeps_every_angle_costs_nothing():
    """A rotation and a scale leave every angle as it was: the term is 0."""
    torch.manual_seed(0)
    vectors = torch.randn(32, 8)
    keep = nn.Linear(8, 24)
    with torch.no_grad():
        columns, _ = torch.linalg.qr(torch.randn(24, 8))  # orthonormal columns: an isometry 8 → 24
        keep.weight.copy_(3.0 * columns)
        keep.bias.zero_()
    assert similarity_loss(keep, vectors).item() < 1e-10
    assert torch.allclose(cosines(keep(vectors)), cosines(vectors), atol=1e-5)


def test_a_large_shared_offset_is_the_collapse_it_penalises():
    """What the shipped projector does: every token = one big shared vector + small differences.
    The angles between them shrink towards 0 and the term grows with the offset."""
    torch.manual_seed(0)
    vectors = torch.randn(32, 8)
    losses = []
    for offset in (0.0, 1.0, 10.0):
        shifted = nn.Linear(8, 24)
        with torch.no_grad():
            columns, _ = torch.linalg.qr(torch.randn(24, 8))
            shifted.weight.copy_(columns)
            shifted.bias.copy_(offset * torch.ones(24))
        losses.append(similarity_loss(shifted, vectors).item())
    assert losses[0] < 1e-10 < losses[1] < losses[2]


def test_a_collapsing_mapping_costs_what_the_lost_angles_were_worth():
    """A rank-one map sends every vector onto one line: every centred cosine becomes ±1."""
    torch.manual_seed(0)
    vectors = torch.randn(32, 8)
    collapse = nn.Linear(8, 24, bias=False)
    with torch.no_grad():
        collapse.weight.copy_(torch.outer(torch.randn(24), torch.randn(8)))
    off = ~torch.eye(32, dtype=torch.bool)
    wanted = cosines(vectors)[off]
    expected = ((cosines(collapse(vectors))[off] - wanted) ** 2).mean()
    assert cosines(collapse(vectors))[off].abs().min() > 0.999
    assert similarity_loss(collapse, vectors).item() == pytest.approx(expected.item(), rel=1e-6)
    assert similarity_loss(collapse, vectors).item() > 0.5


def test_minimising_the_term_spreads_a_projector():
    """Its gradient points the right way: a few Adam steps on the term alone lower it a lot."""
    torch.manual_seed(0)
    table = torch.randn(200, 8)
    projector = Projector(8, 24)
    with torch.no_grad():  # start collapsed: a large shared output, tiny differences
        projector.net[2].bias.fill_(5.0)
        projector.net[2].weight.mul_(0.01)
    before = similarity_loss(projector, table).item()
    optimiser = torch.optim.Adam(projector.parameters(), lr=1e-2)
    for step in range(60):
        optimiser.zero_grad()
        spread_loss(projector, table, table, seed=0, batch=step).backward()
        optimiser.step()
    assert similarity_loss(projector, table).item() < 0.5 * before


def test_the_sample_depends_only_on_seed_and_batch():
    """A resumed run draws at batch n what an uninterrupted run drew there."""
    users, items = torch.randn(100, 4), torch.randn(300, 4)
    first = spread_sample(users, items, seed=3, batch=7)
    assert all(torch.equal(a, b) for a, b in zip(first, spread_sample(users, items, seed=3, batch=7), strict=True))
    assert not torch.equal(first[0], spread_sample(users, items, seed=3, batch=8)[0])
    assert first[0].shape == (64, 4) and first[1].shape == (64, 4)
    assert len({tuple(row.tolist()) for row in first[0]}) == 64  # without replacement


def test_stage_two_uses_the_term_when_asked(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """The flag reaches training: the manifest records it, and the training loss logged at the
    first check (BCE + the term) is larger with the term than without it (same seed, same rows).
    The saved weights are not compared: early stopping may restore the untrained projector in both."""
    from collm_demo.__main__ import main

    first_loss = {}
    for weight in ("0", "5"):
        folder = tmp_path / weight
        shutil.copytree(tiny_checkpoints, folder)
        assert main(["train", "--stage", "projector", "--quick", "--similarity-weight", weight,
                     "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["config"]["similarity_weight"] == float(weight)
        history = manifest["stages"]["projector"]["history"]
        first_loss[weight] = next(check["loss"] for check in history if "loss" in check)
    assert first_loss["5"] > first_loss["0"] + 0.01


def test_stage_two_can_train_a_separate_user_projector(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """``--separate-projectors`` (with the similarity term, which then spreads each MLP's own kind):
    the saved projector has its own user MLP, the manifest says so, and the folder loads and scores
    with CF tokens."""
    from safetensors.torch import load_file

    from collm_demo.__main__ import main
    from collm_demo.pipeline import load_pipeline

    folder = tmp_path / "separate"
    shutil.copytree(tiny_checkpoints, folder)
    assert main(["train", "--stage", "projector", "--quick", "--separate-projectors", "--similarity-weight", "1",
                 "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
    assert any(name.startswith("user_net.") for name in load_file(folder / "projector_mf.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["separate_projectors"] is True
    assert manifest["stages"]["projector"]["projector"]["separate_users"] is True
    pipe = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir))
    assert pipe.model.projector.separate_users and pipe.separate_user_projector
    rows = pipe.dataset.split("valid").head(4)
    scores = pipe.score_rows(rows, pipe.collm_method)
    assert scores.shape == (4,) and torch.isfinite(scores).all()
    assert pipe.project(torch.randn(2, pipe.cf.dim), [True, False]).shape == (2, pipe.model.projector.hidden_size)
