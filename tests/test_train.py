"""Training and evaluation commands end to end (tiny LLM + tiny data; and the real defaults)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from collm_demo.__main__ import main
from collm_demo.checkpoints import read_manifest, write_manifest
from collm_demo.errors import CheckpointError
from collm_demo.pipeline import load_pipeline

# Pipelines here are loaded with bf16=False: float32, so scores are compared exactly.
pytestmark = pytest.mark.fp32


def test_quick_training_writes_every_checkpoint_and_a_manifest(tiny_checkpoints, tiny_llm_dir):
    for name in ("cf_mf.safetensors", "projector_mf.safetensors", "lora/adapter_model.safetensors",
                 "manifest.json"):
        assert (tiny_checkpoints / name).exists(), name
    manifest = read_manifest(tiny_checkpoints)
    assert manifest["llm"]["name"] == str(tiny_llm_dir) and manifest["llm"]["hidden_size"] == 32
    assert manifest["cf"]["mf"]["vector_dim"] == 66
    assert manifest["seed"] == 0 and "train --quick" in manifest["command"]
    assert manifest["data"]["counts"]["splits"]["test"]["rows"] > 0
    for stage in ("cf", "lora", "projector"):
        assert manifest["stages"][stage]["wall_s"] >= 0 and manifest["stages"][stage]["rows_per_s"] > 0


def test_checkpoints_round_trip_into_the_pipeline(tiny_checkpoints, tiny_llm_dir, tiny_data_dir):
    pipeline = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    assert pipeline.notice == "" and pipeline.available_methods() == ["mf", "mf_no_foldin", "like_share", "zero_shot", "text_only", "collm"]
    saved = load_file(str(tiny_checkpoints / "projector_mf.safetensors"))
    for key, value in pipeline.model.projector.state_dict().items():
        assert torch.equal(value, saved[key])
    saved_lora = load_file(str(tiny_checkpoints / "lora" / "adapter_model.safetensors"))
    live = {k: v for k, v in pipeline.model.llm.state_dict().items() if "lora_" in k}
    assert len(live) == len(saved_lora) > 0
    # same rows, same scores, twice (deterministic), in every mode
    rows = pipeline.dataset.split("test").head(5)
    for method in pipeline.available_methods():
        torch.testing.assert_close(pipeline.score_rows(rows, method), pipeline.score_rows(rows, method))


def test_mf_without_fold_in_differs_from_mf_only_for_users_unseen_in_training(tiny_checkpoints, tiny_llm_dir,
                                                                              tiny_data_dir):
    """The paper-style reference row: seen users score as MF; unseen users with a history score
    as the no-information user (item popularity alone), where MF folds them in."""
    pipeline = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    rows = pipeline.dataset.split("test").head(12).copy()
    # every tiny user is seen in training: rename half of them into users MF never saw
    rows.loc[rows.index[::2], "user"] = [f"new-{n}" for n in range(len(rows.index[::2]))]
    seen = torch.tensor(rows["user"].map(pipeline.cf.has_user).to_numpy())
    assert seen.any() and (~seen).any()
    mf, plain = pipeline.score_rows(rows, "mf"), pipeline.score_rows(rows, "mf_no_foldin")
    torch.testing.assert_close(plain[seen], mf[seen])
    popularity = pipeline.cf.score_vectors(pipeline.cf.default_user.expand(int((~seen).sum()), -1),
                                           pipeline.cf.item_vectors(rows["item"][(~seen).numpy()].tolist()))
    torch.testing.assert_close(plain[~seen], popularity)
    assert not torch.allclose(plain[~seen], mf[~seen])  # fold-in moved the unseen users


def test_like_share_scores_the_share_of_liked_marks_in_each_rows_own_history(tiny_checkpoints, tiny_llm_dir,
                                                                              tiny_data_dir):
    """The headline's no-model baseline: per row, liked marks / films in its history (hand count)."""
    pipeline = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    rows = pipeline.dataset.split("test").head(12).copy()
    rows.loc[rows.index[0], "history_labels"] = (1, 0, 0, 1)
    rows.loc[rows.index[1], "history_labels"] = ()
    scores = pipeline.score_rows(rows, "like_share")
    expected = [sum(labels) / len(labels) if len(labels) else 0.5 for labels in rows["history_labels"]]
    assert scores[0].item() == 0.5 and scores[1].item() == 0.5
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float32))
    assert len(set(expected)) > 1  # the tiny rows' histories differ: the test can tell rows apart


def test_cf_tokens_are_folded_in_as_the_projector_was_trained(tiny_checkpoints, tiny_llm_dir, tiny_data_dir,
                                                               tmp_path):
    """MF alone folds unseen users in with its own tuned strength; CoLLM's user token with the
    strength its projector was trained on (recorded in the projector file)."""
    from collm_demo.cf.foldin import DEFAULT_L2
    from collm_demo.checkpoints import load_projector, save_projector
    from collm_demo.config import QuickConfig

    pipeline = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    assert pipeline.token_foldin_l2() == QuickConfig().projector_foldin_l2
    assert read_manifest(tiny_checkpoints)["stages"]["projector"]["projector"]["user_foldin_l2"] == \
        pipeline.token_foldin_l2()
    pipeline.cf.meta["foldin_l2"] = 30.0  # the CF model's own strength now differs from the projector's
    rows = pipeline.dataset.split("test").head(8).copy()
    rows["user"] = [f"new-{n}" for n in range(len(rows))]  # all folded in
    token_users, items = pipeline.cf_vectors(rows, for_tokens=True)
    cf_users, _ = pipeline.cf_vectors(rows)
    assert not torch.allclose(token_users, cf_users)
    expected_collm = pipeline.model.score_shared(pipeline.prompts(rows, True), token_users, items)
    torch.testing.assert_close(pipeline.score_rows(rows, "collm"), expected_collm)
    torch.testing.assert_close(pipeline.score_rows(rows, "mf"), pipeline.cf.score_vectors(cf_users, items))
    assert pipeline.cf.foldin_l2 == 30.0
    # the strength survives save/load; a file from before it was recorded was trained with the default
    projector = pipeline.model.projector
    save_projector(projector, tmp_path / "p.safetensors", "mf")
    assert load_projector(tmp_path / "p.safetensors", projector.hidden_size, projector.cf_dim).foldin_l2 == \
        projector.foldin_l2
    projector.foldin_l2 = None
    save_projector(projector, tmp_path / "old.safetensors", "mf")
    assert load_projector(tmp_path / "old.safetensors", projector.hidden_size, projector.cf_dim).foldin_l2 == \
        DEFAULT_L2
    for bad in ("-1", "nan", "strong"):
        projector.foldin_l2 = bad
        save_projector(projector, tmp_path / "bad.safetensors", "mf")
        with pytest.raises(CheckpointError, match="fold-in strength"):
            load_projector(tmp_path / "bad.safetensors", projector.hidden_size, projector.cf_dim)


def test_projector_foldin_strength_option_is_checked():
    import argparse

    from collm_demo.__main__ import foldin_strength, train_config

    assert foldin_strength("cf") == "cf" and foldin_strength("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "strong"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number or 'cf'"):
            foldin_strength(bad)
    args = argparse.Namespace(seed=0, quick=True, projector_foldin_l2="cf")
    assert train_config(args).projector_foldin_l2 is None
    args.projector_foldin_l2 = 3.0
    assert train_config(args).projector_foldin_l2 == 3.0


def test_named_recipes_set_their_values_and_flags_override_them():
    from collm_demo.__main__ import build_parser, train_config
    from collm_demo.config import DEFAULT_RECIPE, RECIPES, TrainConfig

    parse = build_parser().parse_args
    paper = train_config(parse(["train", "--recipe", "paper"]))
    where = {"device", "precision"}  # from the environment (COLLM_PRECISION), not from a recipe
    assert paper.recipe == "paper" and paper.recipe_overrides == ()  # the dataclass's values are the paper's
    assert {k: v for k, v in paper.to_dict().items() if k not in where} == \
        {k: v for k, v in TrainConfig().to_dict().items() if k not in where}
    shipped = train_config(parse(["train"]))  # the default is the recipe the rule keeps, which ships
    assert shipped.recipe == DEFAULT_RECIPE == "grouped-stage2" and shipped.recipe_overrides == ()
    assert shipped.to_dict() == train_config(parse(["train", "--recipe", DEFAULT_RECIPE])).to_dict()
    # a flag that changes what is trained is recorded; where it runs (--precision) is not
    assert train_config(parse(["train", "--precision", "fp32", "--seed", "3"])).recipe_overrides == ()
    assert train_config(parse(["train", "--projector-lr", "0.003"])).recipe_overrides == ("projector_lr",)
    assert train_config(parse(["train", "--projector-lr", "0.01"])).recipe_overrides == ()  # the recipe's own value
    grouped = train_config(parse(["train", "--recipe", "grouped"]))
    assert grouped.recipe == "grouped" and grouped.to_dict() != paper.to_dict()
    for field, value in RECIPES["grouped"].items():
        assert getattr(grouped, field) == value, field
    assert grouped.eval_every_for("projector") == 50 and grouped.eval_every_for("lora") == paper.eval_every
    # a flag wins over the recipe; an explicit cadence is both stages' cadence
    tuned = train_config(parse(["train", "--recipe", "grouped", "--group-size", "4", "--eval-every", "10"]))
    assert tuned.group_size == 4 and tuned.pairwise_weight == 1.0
    assert tuned.eval_every_for("projector") == tuned.eval_every_for("lora") == 10
    quick = train_config(parse(["train", "--recipe", "grouped", "--quick"]))  # --quick keeps its tiny sizes
    assert quick.group_size == 8 and quick.lora_rows == train_config(parse(["train", "--quick"])).lora_rows
    # lever 1: stage 1 as the paper's, per row; only stage 2 on user groups
    lever1 = train_config(parse(["train", "--recipe", "grouped-stage2"]))
    assert lever1.lora_rows == paper.lora_rows and lever1.projector_lr == 1e-2
    assert (lever1.for_stage("lora").group_size, lever1.for_stage("lora").pairwise_weight) == (1, 0.0)
    assert (lever1.for_stage("projector").group_size, lever1.for_stage("projector").pairwise_weight) == (8, 1.0)
    assert grouped.for_stage("lora").group_size == grouped.for_stage("projector").group_size == 8
    with pytest.raises(SystemExit):  # argparse: an unknown recipe is one line and exit status 2
        parse(["train", "--recipe", "magic"])


def test_retraining_stage_one_starts_from_the_plain_llm(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """Re-running stage 1 in a folder that already holds an adapter must not stack a second one."""
    import shutil
    import warnings

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, folder)
    old_keys = set(load_file(str(folder / "lora" / "adapter_model.safetensors")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--quick", "--stage", "lora", "--seed", "1", "--llm", str(tiny_llm_dir),
                     "--data", str(tiny_data_dir), "--checkpoints", str(folder)]) == 0
    stacked = [str(w.message) for w in caught if "second time" in str(w.message) or "multiple adapters" in str(w.message)]
    assert stacked == []
    new = load_file(str(folder / "lora" / "adapter_model.safetensors"))
    assert set(new) == old_keys  # same adapter layout, no nested prefixes
    pipeline = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    live = {k: v for k, v in pipeline.model.llm.state_dict().items() if "lora_" in k}
    assert len(live) == len(new)


def test_manifest_mismatch_is_refused_before_weights(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, copy)
    manifest = read_manifest(copy)
    manifest["llm"]["hidden_size"] = 576
    write_manifest(manifest, copy)
    with pytest.raises(CheckpointError, match="hidden size 576.*hidden size 32"):
        load_pipeline(copy, str(tiny_llm_dir), str(tiny_data_dir))
    manifest["llm"]["hidden_size"] = 32
    manifest["cf"]["mf"]["items"] = 999
    write_manifest(manifest, copy)
    with pytest.raises(CheckpointError, match="999 items"):
        load_pipeline(copy, str(tiny_llm_dir), str(tiny_data_dir))


def test_missing_checkpoints_fall_back_to_text_or_zero_shot(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    empty = load_pipeline(tmp_path / "nothing", str(tiny_llm_dir), str(tiny_data_dir))
    assert empty.available_methods() == ["zero_shot"] and "train" in empty.notice
    with pytest.raises(ValueError, match="not available"):
        empty.score_rows(empty.dataset.split("test").head(2), "collm")


def test_quick_evaluation_writes_the_results_schema(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "results.json"
    assert main(["evaluate", "--quick", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
                 "--checkpoints", str(tiny_checkpoints), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["methods"]) == {"mf", "mf_no_foldin", "like_share", "zero_shot", "text_only", "collm"}
    for slices in results["methods"].values():
        assert set(slices) == {"all", "warm", "cold"}
        assert slices["all"]["n"] == slices["warm"]["n"] + slices["cold"]["n"] > 0
        assert {"auc", "uauc", "n"} <= set(slices["all"])


@pytest.mark.integration
@pytest.mark.slow
def test_quick_train_and_evaluate_on_the_embedded_defaults(tmp_path):
    """`train --quick` / `evaluate --quick` on the real SmolLM2 + ML-100K (about a minute)."""
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--quick", "--checkpoints", str(ckpt)]) == 0
    manifest = read_manifest(ckpt)
    assert manifest["llm"]["hidden_size"] == 576 and manifest["llm"]["layers"] == 30
    assert manifest["data"]["counts"]["interactions"] == 100_000
    out = tmp_path / "results.json"
    assert main(["evaluate", "--quick", "--checkpoints", str(ckpt), "--out", str(out), "--max-rows", "24"]) == 0
    results = json.loads(out.read_text())
    assert results["protocol"]["rows"] == 24 and "collm" in results["methods"]


def test_stage_two_can_train_its_own_copy_of_the_lora(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """--projector-lora-lr: stage 2 trains a copy of the stage-1 LoRA for the CF prompts (lora_mf/);
    the text-only mode keeps stage 1's adapter, and a later stage 2 without it removes the copy."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints, folder)
    before = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    rows = before.dataset.split("test").head(12).copy()
    text_before = before.score_rows(rows, "text_only")
    assert before.model.cf_adapter is None
    assert main(["train", "--quick", "--stage", "projector", "--projector-lora-lr", "0.05", "--group-size", "4",
                 "--pairwise-weight", "1", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
                 "--checkpoints", str(folder)]) == 0
    saved = load_file(str(folder / "lora_mf" / "adapter_model.safetensors"))
    stage1 = load_file(str(folder / "lora" / "adapter_model.safetensors"))
    assert set(saved) == set(stage1)  # the same layout, readable by peft as a plain adapter
    record = read_manifest(folder)["stages"]["projector"]
    assert record["stage2_lora"]["dir"] == "lora_mf"
    # the copy saved is the one early stopping kept: stage 1's own values if the best check was before training
    assert any(not torch.equal(saved[k], stage1[k]) for k in saved) == (record["best_step"] > 0)

    after = load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    assert after.model.cf_adapter == "cf_mf"
    assert torch.equal(after.score_rows(rows, "text_only"), text_before)  # stage 1's adapter, untouched
    joint = after.score_methods(rows, ["text_only", "collm"])  # the two modes no longer share a cache
    assert torch.allclose(joint["collm"], after.score_rows(rows, "collm"), atol=1e-5)
    assert torch.allclose(joint["text_only"], text_before, atol=1e-5)
    users, items = after.cf_vectors(rows, for_tokens=True)
    reference = after.model.score(after.prompts(rows, True), users, items)  # whole prompts, no cache
    assert torch.allclose(joint["collm"], reference, atol=1e-5)
    live = {n: p for n, p in after.model.llm.named_parameters() if "lora_" in n}
    assert live and not any(p.requires_grad for p in live.values())  # scoring switched adapters, trained nothing

    assert main(["train", "--quick", "--stage", "projector", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
                 "--checkpoints", str(folder)]) == 0
    assert not (folder / "lora_mf").exists()
    assert load_pipeline(folder, str(tiny_llm_dir), str(tiny_data_dir), bf16=False).model.cf_adapter is None


def test_stage_two_lora_copy_is_what_trains(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path):
    """The gradient of a CF prompt reaches the copy (and the projector), never stage 1's adapter."""
    from collm_demo.cf import backend
    from collm_demo.collm import CoLLM
    from collm_demo.train import stage2_lora

    pipe = load_pipeline(tiny_checkpoints, str(tiny_llm_dir), str(tiny_data_dir), bf16=False)
    spec = backend("mf")
    copy = stage2_lora(pipe, tiny_checkpoints, spec)
    model = CoLLM(pipe.model.llm, pipe.model.tokenizer, pipe.model.projector, runtime=pipe.model.runtime,
                  cf_adapter=spec.adapter_name)
    rows = pipe.dataset.split("valid").head(4)
    users, items = pipe.cf_vectors(rows, for_tokens=True)
    model.train()
    model(pipe.prompts(rows, True), users, items).sum().backward()
    copy_ids = {id(p) for p in copy}
    stage1 = [p for n, p in model.llm.named_parameters() if "lora_" in n and id(p) not in copy_ids]
    assert copy and len(stage1) == len(copy)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in copy)
    assert all(p.grad is None for p in stage1)


def test_an_interrupted_stage_resumes_to_the_same_weights(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path,
                                                          monkeypatch):
    """Stage 1 stopped after its first check and run again ends where an uninterrupted run ends:
    the same LoRA weights, the same history, and no progress file left behind."""
    import shutil

    from collm_demo import train

    args = ["train", "--quick", "--stage", "lora", "--lora-rows", "24", "--batch-size", "2", "--grad-accum", "2",
            "--eval-every", "2", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir), "--checkpoints"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole, cut):
        shutil.copytree(tiny_checkpoints, folder)
    assert main(args + [str(whole)]) == 0
    progress = cut / train.PROGRESS_DIR / "lora.safetensors"
    real, calls = train.micro_batch_loss, {"n": 0}

    def interrupted(*a, **k):  # the power goes after the 5th micro-batch: one check (step 2) is saved
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "micro_batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args + [str(cut)])
    assert progress.is_file()
    rerun = {"n": 0}

    def counted(*a, **k):
        rerun["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(train, "micro_batch_loss", counted)
    assert main(args + [str(cut)]) == 0
    assert not progress.exists()
    done = read_manifest(cut)["stages"]["lora"]["rows_seen"] // 2  # micro-batches of 2 rows in the whole stage
    assert rerun["n"] == done - 4  # the 4 micro-batches before the saved check were not taken again
    a = load_file(str(whole / "lora" / "adapter_model.safetensors"))
    b = load_file(str(cut / "lora" / "adapter_model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    history = [read_manifest(f)["stages"]["lora"]["history"] for f in (whole, cut)]
    assert history[0] == history[1] and len(history[0]) > 2


def test_a_progress_file_of_another_run_is_ignored(tmp_path):
    from collm_demo import resume

    param = torch.nn.Parameter(torch.ones(3))
    optimiser = torch.optim.AdamW([param], lr=0.1)
    path = tmp_path / "p.safetensors"
    resume.save(path, resume.Position("abc", step=4), [param], None, optimiser)
    said = []
    assert resume.load(path, "other", said.append) is None and "another run" in said[0]
    position, tensors = resume.load(path, "abc")
    assert position.step == 4 and torch.equal(tensors["param.0"], torch.ones(3))
    path.write_bytes(b"garbage")
    assert resume.load(path, "abc", said.append) is None and "unreadable" in said[1]


def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_checkpoints, tiny_llm_dir, tiny_data_dir, tmp_path,
                                                            monkeypatch):
    """Evaluation saves each piece of the test rows as it is scored; stopped and run again, it
    scores only the missing pieces and writes the same metrics as an uninterrupted run."""
    from collm_demo.pipeline import Pipeline

    args = ["evaluate", "--quick", "--methods", "collm", "--llm", str(tiny_llm_dir), "--data", str(tiny_data_dir),
            "--checkpoints", str(tiny_checkpoints), "--out"]
    real = Pipeline.score_methods
    calls = {"whole": 0, "cut": 0, "rerun": 0}

    def counting(run: str, stop_after: int | None = None):
        def score_methods(self, *a, **k):
            calls[run] += 1
            if stop_after is not None and calls[run] > stop_after:
                raise KeyboardInterrupt  # the power goes during the third piece
            return real(self, *a, **k)
        return score_methods

    monkeypatch.setattr(Pipeline, "score_methods", counting("whole"))
    assert main(args + [str(tmp_path / "whole.json")]) == 0
    assert calls["whole"] > 3  # the rows go in pieces
    out, progress = tmp_path / "cut.json", tmp_path / "cut.progress.safetensors"
    monkeypatch.setattr(Pipeline, "score_methods", counting("cut", stop_after=2))
    with pytest.raises(KeyboardInterrupt):
        main(args + [str(out)])
    assert progress.is_file()
    monkeypatch.setattr(Pipeline, "score_methods", counting("rerun"))
    assert main(args + [str(out)]) == 0
    assert calls["rerun"] == calls["whole"] - 2 and not progress.exists()
    whole = json.loads((tmp_path / "whole.json").read_text())["methods"]["collm"]
    assert json.loads(out.read_text())["methods"]["collm"] == whole
