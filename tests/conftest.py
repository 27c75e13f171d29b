"""Shared fixtures: tiny models and tiny MovieLens files, built by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
