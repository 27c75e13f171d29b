"""The token-norm option of stage 2 (issue 26's lever: mapped tokens at a word's norm): the tokens
have the norm asked for, the file keeps it, and a file without it maps as before (tiny LLM + data)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from collm_demo.__main__ import main
from collm_demo.checkpoints import load_projector, save_projector
from collm_demo.collm import Projector
from collm_demo.errors import CheckpointError
from collm_demo.pipeline import load_pipeline

pytestmark = pytest.mark.fp32


def test_a_scaled_projector_gives_tokens_of_that_norm_in_the_unscaled_ones_direction(tmp_path):
    torch.manual_seed(0)
    plain = Projector(6, 16)
    scaled = Projector(6, 16, token_norm=2.5)
    scaled.load_state_dict(plain.state_dict())
    vectors = torch.randn(5, 6)
    tokens = scaled(vectors)
    torch.testing.assert_close(tokens.norm(dim=-1), torch.full((5,), 2.5))
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(tokens, plain(vectors)), torch.ones(5))
    save_projector(scaled, tmp_path / "p.safetensors", "mf")
    torch.testing.assert_close(load_projector(tmp_path / "p.safetensors", 16, 6)(vectors), tokens)
    save_projector(plain, tmp_path / "q.safetensors", "mf")
    assert load_projector(tmp_path / "q.safetensors", 16, 6).token_norm is None


def test_an_unusable_recorded_token_norm_is_refused(tmp_path):
    from safetensors.torch import save_file

    projector = Projector(6, 16)
    for bad in ("-1", "abc", "inf"):
        save_file(projector.state_dict(), str(tmp_path / "p.safetensors"),
                  metadata={"cf_dim": "6", "hidden_size": "16", "token_norm": bad})
        with pytest.raises(CheckpointError, match="token norm"):
            load_projector(tmp_path / "p.safetensors", 16, 6)


def test_stage_two_at_a_words_norm_records_it_and_the_pipeline_maps_to_it(tiny_checkpoints, tiny_llm_dir,
                                                                          tiny_data_dir, tmp_path):
    folder = tmp_path / "norm"
    shutil.copytree(tiny_checkpoints, folder)
    assert main(["train", "--stage", "projector", "--quick", "--projector-token-norm", "0", "--llm", str(tiny_llm_dir),
                 "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
    record = json.loads((folder / "manifest.json").read_text())["stages"]["projector"]
    pipe = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    word = float(pipe.model.llm.get_input_embeddings().weight.norm(dim=-1).mean())
    assert record["projector"]["token_norm"] == pytest.approx(word, abs=1e-4)
    assert "projector_token_norm" in record["recipe_overrides"]
    tokens = pipe.model.projector(torch.randn(4, pipe.cf.dim))
    torch.testing.assert_close(tokens.norm(dim=-1), torch.full((4,), record["projector"]["token_norm"]))
