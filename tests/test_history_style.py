"""The history style of the prompts (issue 26's "paper's own history" lever): "marked" (the last ten
films with marks) or "liked" (the paper's: the last <= 10 liked films from the whole past, unmarked),
chosen at training time, recorded in the manifest and read back by every command (tiny LLM + data)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from collm_demo.__main__ import main
from collm_demo.checkpoints import history_style
from collm_demo.collm import history_phrase, prompt_text
from collm_demo.data import build_protocol
from collm_demo.errors import CheckpointError
from collm_demo.pipeline import load_pipeline

pytestmark = pytest.mark.fp32


def test_the_liked_style_lists_only_liked_titles_without_marks():
    assert history_phrase(["Heat", "Jaws", "Babe"], [1, 0, 1]) == '"Heat" (liked), "Jaws" (disliked), "Babe" (liked)'
    assert history_phrase(["Heat", "Jaws", "Babe"], [1, 0, 1], "liked") == '"Heat", "Babe"'
    assert history_phrase(["Jaws"], [0], "liked") == "none"


def test_the_liked_style_opens_with_the_papers_words_and_the_marked_one_is_unchanged():
    liked = prompt_text(["Heat", "Jaws"], [1, 0], "Babe", True, "liked")
    assert liked.startswith('#Question: A user has given high ratings to the following movies: "Heat". Additionally')
    marked = prompt_text(["Heat", "Jaws"], [1, 0], "Babe", True)
    assert marked.startswith('#Question: A user has rated the following movies: "Heat" (liked), "Jaws" (disliked). ')
    assert liked.split(". Additionally")[1] == marked.split(". Additionally")[1]  # only the history differs


def _frame(labels: list[int]) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"user": ["u"] * n, "item": [f"i{k}" for k in range(n)], "timestamp": list(range(n)),
                         "rating": [5.0 if y else 1.0 for y in labels]})


def test_a_rows_liked_history_is_its_last_ten_liked_films_from_the_whole_past():
    # 12 liked films, then 10 disliked ones, then the row: its marked history (the last ten) holds no
    # liked film, its liked history the last ten of the twelve
    labels = [1] * 12 + [0] * 10 + [1]
    items = pd.DataFrame({"title": [f"Film {k}" for k in range(len(labels))]}, index=[f"i{k}" for k in range(len(labels))])
    rows = build_protocol("toy", _frame(labels), items).rows
    last = rows.set_index("item").loc["i22"]
    assert last["history_items"] == tuple(f"i{k}" for k in range(12, 22)) and sum(last["history_labels"]) == 0
    assert last["liked_items"] == tuple(f"i{k}" for k in range(2, 12))
    # strictly earlier: the first row has no history of either kind, and rows keep their place
    assert len(rows) == len(labels) - 1
    assert all(set(liked) <= set(f"i{k}" for k in range(n)) for n, liked in zip(range(1, 23), rows["liked_items"]))


def test_history_style_is_read_from_the_lora_record_and_a_mismatched_projector_is_refused():
    assert history_style({}) == "marked"
    manifest = {"stages": {"lora": {"history_style": "liked"}, "projector": {"history_style": "liked"}}}
    assert history_style(manifest, "projector") == "liked"
    manifest["stages"]["projector"]["history_style"] = "marked"
    with pytest.raises(CheckpointError, match="marked history"):
        history_style(manifest, "projector")
    with pytest.raises(CheckpointError, match="not one of"):
        history_style({"stages": {"lora": {"history_style": "bold"}}})


def test_training_with_the_liked_style_records_it_and_every_load_prompts_with_it(tiny_checkpoints, tiny_llm_dir,
                                                                                 tiny_data_dir, tmp_path, capsys):
    folder = tmp_path / "liked"
    shutil.copytree(tiny_checkpoints, folder)
    common = ["--quick", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints", str(folder)]
    assert main(["train", "--stage", "lora", "--history-style", "liked", *common]) == 0
    # the old projector read the marked prompts: the folder is refused until it is retrained
    with pytest.raises(CheckpointError, match="trained on prompts with the marked history"):
        load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    # a stage 2 of the other style than the LoRA's is refused, with the way out
    assert main(["train", "--stage", "projector", *common]) == 2
    assert "--history-style liked" in capsys.readouterr().err
    assert main(["train", "--stage", "projector", "--history-style", "liked", *common]) == 0
    stages = json.loads((folder / "manifest.json").read_text())["stages"]
    assert stages["lora"]["history_style"] == stages["projector"]["history_style"] == "liked"
    assert "history_style" in stages["projector"]["recipe_overrides"]
    pipe = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    assert pipe.history_style == "liked"
    rows = pipe.dataset.split("test").head(6)
    texts = [pipe.model.tokenizer.decode(p.ids) for p in pipe.prompts(rows, with_cf=False)]
    assert all("given high ratings" in t and "(liked)" not in t and "(disliked)" not in t for t in texts)
    shown = pipe.prompt_histories(rows)[0]
    assert shown == rows["liked_items"].tolist() != rows["history_items"].tolist()
    # the shipped-style folder is untouched and still prompts with the marks
    marked = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    assert marked.history_style == "marked"
    assert "(liked)" in marked.prompt_text(["1", "2"], [1, 0], "3", True)
