"""Checkpoints in, scores out: the object the CLI, the evaluation and the app share.

``load_pipeline`` reads ``checkpoints/manifest.json`` *before* any weight and refuses
checkpoints that do not fit the running LLM (hidden size), the CF model (dimension,
id maps) or each other, naming the mismatch. Missing checkpoints are not an error:
the pipeline then runs in the best mode it can (``text_only`` without a projector,
``zero_shot`` without LoRA) and says so in ``notice``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .cf.base import CFModel, load_cf
from .collm import CoLLM, Projector, build_prompts
from .config import CHECKPOINT_DIR
from .data import Dataset, load_dataset
from .foldin import DEFAULT_L2, parse_l2
from .llm import LoadedLLM, load_llm

METHODS = ("mf", "mf_no_foldin", "zero_shot", "text_only", "collm")  # plus "<cf>" and "collm_<cf>" for other CF backends
# MF as the CoLLM paper scores it: users unseen in training stay at the no-information vector
# instead of being folded in from their history. A reference row, not a method of ours: it shows
# how much of MF's strength on cold rows (mostly unseen users here) is the fold-in.
MF_NO_FOLDIN = "mf_no_foldin"
TRAIN_HINT = "train them with `python -m collm_demo train --stage all`"


class CheckpointMismatch(ValueError):
    """Checkpoints that do not fit the running LLM, CF model or each other."""


def read_manifest(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> dict:
    path = Path(checkpoint_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointMismatch(f"{path} is not valid JSON: {err}") from err


def write_manifest(manifest: dict, checkpoint_dir: str | Path = CHECKPOINT_DIR) -> None:
    path = Path(checkpoint_dir) / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a manifest


def save_projector(projector: Projector, path: str | Path, cf_kind: str) -> None:
    metadata = {"cf_dim": str(projector.cf_dim), "hidden_size": str(projector.hidden_size), "cf_kind": cf_kind}
    if projector.foldin_l2 is not None:
        metadata["foldin_l2"] = str(projector.foldin_l2)
    save_file({k: v.detach().contiguous() for k, v in projector.state_dict().items()}, str(path),
              metadata=metadata)


def load_projector(path: str | Path, hidden_size: int, cf_dim: int) -> Projector:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    got_hidden, got_dim = int(meta.get("hidden_size", -1)), int(meta.get("cf_dim", -1))
    if got_hidden != hidden_size:
        raise CheckpointMismatch(f"{path}: projector outputs hidden size {got_hidden}, but the "
                                 f"running LLM has hidden size {hidden_size}")
    if got_dim != cf_dim:
        raise CheckpointMismatch(f"{path}: projector expects CF vectors of dim {got_dim}, but the "
                                 f"CF model gives dim {cf_dim}")
    # A file without a recorded fold-in strength predates the record: it was trained when the
    # strength was always DEFAULT_L2.
    try:
        foldin_l2 = parse_l2(meta.get("foldin_l2", DEFAULT_L2))
    except ValueError as error:
        raise CheckpointMismatch(f"{path}: the recorded fold-in strength is unusable ({error}); retrain the "
                                 "projector (train --stage projector)") from None
    projector = Projector(cf_dim, hidden_size, foldin_l2=foldin_l2)
    projector.load_state_dict(load_file(str(path)))
    projector.eval()
    return projector


def check_manifest(manifest: dict, llm: LoadedLLM, cf: CFModel | None, cf_name: str) -> None:
    """Cheap consistency checks from the manifest alone, before any weight is loaded."""
    if not manifest:
        return
    want = manifest.get("llm", {})
    if want.get("hidden_size") not in (None, llm.hidden_size):
        raise CheckpointMismatch(
            f"checkpoints were trained for an LLM with hidden size {want['hidden_size']} "
            f"({want.get('name')}), but the running LLM {llm.name} has hidden size {llm.hidden_size}")
    cf_info = manifest.get("cf", {}).get(cf_name)
    if cf is not None and cf_info:
        if cf_info.get("vector_dim") not in (None, cf.dim):
            raise CheckpointMismatch(f"manifest says the {cf_name} CF vectors have dim "
                                     f"{cf_info['vector_dim']}, the CF file has dim {cf.dim}")
        for side, ids in (("users", cf.user_ids), ("items", cf.item_ids)):
            if cf_info.get(side) not in (None, len(ids)):
                raise CheckpointMismatch(f"manifest says the {cf_name} CF model has {cf_info[side]} "
                                         f"{side}, the CF file has {len(ids)}")


@dataclass
class Pipeline:
    dataset: Dataset
    llm: LoadedLLM
    model: CoLLM
    cf: CFModel | None
    manifest: dict = field(default_factory=dict)
    has_lora: bool = False
    notice: str = ""  # what is missing and how to fix it; empty when all is loaded
    cf_name: str = "mf"  # which CF backend feeds the CF tokens (mf, lightgcn, or an imported name)

    @property
    def cf_method(self) -> str:
        """Results key of the CF model alone: 'mf', 'lightgcn', ..."""
        return self.cf_name

    @property
    def collm_method(self) -> str:
        """Results key of CoLLM with this backend: 'collm' for MF (the paper's main row), else 'collm_<name>'."""
        return "collm" if self.cf_name == "mf" else f"collm_{self.cf_name}"

    @property
    def has_projector(self) -> bool:
        return self.model.projector is not None and self.cf is not None

    def available_methods(self) -> list[str]:
        methods = ["zero_shot"]
        if self.cf is not None:
            methods[:0] = [self.cf_method] + ([MF_NO_FOLDIN] if self.cf_name == "mf" else [])
        if self.has_lora:
            methods.append("text_only")
        if self.has_projector:
            methods.append(self.collm_method)
        return methods

    # ---- inputs for rows: prompts + CF vectors ------------------------------------
    def token_foldin_l2(self) -> float | None:
        """Fold-in strength for the vectors CoLLM's CF tokens are made from: the projector's own."""
        return self.model.projector.foldin_l2 if self.model.projector is not None else None

    def cf_vectors(self, rows: pd.DataFrame, for_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item CF vectors per row. ``for_tokens``: as the projector was trained on
        (its fold-in strength), else as the CF model scores alone (the model's own strength)."""
        users = self.cf.row_user_vectors(rows["user"].tolist(), rows["history_items"].tolist(),
                                         rows["history_labels"].tolist(),
                                         l2=self.token_foldin_l2() if for_tokens else None)
        return users, self.cf.item_vectors(rows["item"].tolist())

    def cf_scores_without_foldin(self, rows: pd.DataFrame) -> torch.Tensor:
        """The CF model alone, users unseen in training left at the no-information vector."""
        users = self.cf.user_vectors(rows["user"].tolist())
        return self.cf.score_vectors(users, self.cf.item_vectors(rows["item"].tolist()))

    def prompts(self, rows: pd.DataFrame, with_cf: bool):
        return build_prompts(self.model.builder, self.dataset.title, rows["history_items"].tolist(),
                             rows["history_labels"].tolist(), rows["item"].tolist(), with_cf)

    def score_rows(self, rows: pd.DataFrame, method: str, progress=None) -> torch.Tensor:
        """Scores in [0, 1] for protocol rows under one of ``METHODS``."""
        if method not in self.available_methods():
            raise ValueError(f"method {method!r} is not available here ({self.notice or 'unknown method'})")
        if method == self.cf_method:
            users, items = self.cf_vectors(rows)
            return self.cf.score_vectors(users, items)
        if method == MF_NO_FOLDIN:
            return self.cf_scores_without_foldin(rows)
        # Rows of one user with the same history share their prompt prefix: score_shared
        # encodes each distinct prefix once (about half as many as rows on ML-100K's test split).
        if method == self.collm_method:
            users, items = self.cf_vectors(rows, for_tokens=True)
            return self.model.score_shared(self.prompts(rows, True), users, items, use_lora=True,
                                           progress=progress)
        return self.model.score_shared(self.prompts(rows, False), use_lora=(method == "text_only"),
                                       progress=progress)


def available_backends(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> list[str]:
    """CF backends with both a CF file and a projector in ``checkpoint_dir`` (from file names only)."""
    checkpoint_dir = Path(checkpoint_dir)
    names = sorted(path.stem[len("cf_"):] for path in checkpoint_dir.glob("cf_*.safetensors"))
    return [name for name in names if (checkpoint_dir / f"projector_{name}.safetensors").exists()]


def load_backend(checkpoint_dir: Path, cf_name: str, llm: LoadedLLM, manifest: dict
                 ) -> tuple[CFModel | None, Projector | None, list[str]]:
    """One CF backend's two files (``cf_<name>``, ``projector_<name>``), checked against the
    manifest and the LLM; missing parts are listed in the returned notes, not raised."""
    notes = []
    cf_path = checkpoint_dir / f"cf_{cf_name}.safetensors"
    cf = load_cf(cf_path) if cf_path.exists() else None
    if cf is None:
        notes.append(f"no CF model ({cf_path.name})")
    else:
        check_manifest(manifest, llm, cf, cf_name)
    projector = None
    projector_path = checkpoint_dir / f"projector_{cf_name}.safetensors"
    if cf is not None and projector_path.exists():
        projector = load_projector(projector_path, llm.hidden_size, cf.dim)
    else:
        notes.append(f"no projector ({projector_path.name})")
    return cf, projector, notes


def with_backend(base: Pipeline, checkpoint_dir: str | Path, cf_name: str) -> Pipeline:
    """The same LLM, LoRA and data with another CF backend and its own projector.

    Nothing of the LLM is copied: the new pipeline's CoLLM wraps the very same (frozen) modules,
    which is CoLLM's decoupling: swapping the CF model swaps two small files.
    """
    if cf_name == base.cf_name:
        return base
    cf, projector, notes = load_backend(Path(checkpoint_dir), cf_name, base.llm, base.manifest)
    if notes:
        raise ValueError(f"CF backend {cf_name!r} is not trained in {checkpoint_dir}: {', '.join(notes)}; "
                         f"available: {', '.join(available_backends(checkpoint_dir)) or 'none'}")
    model = CoLLM(base.model.llm, base.model.tokenizer, projector, bf16=base.model.bf16)
    notice = "" if base.has_lora else base.notice  # the base's note may be about its own CF files
    return Pipeline(base.dataset, base.llm, model, cf, base.manifest, base.has_lora, notice, cf_name)


def load_pipeline(checkpoint_dir: str | Path = CHECKPOINT_DIR, llm_name: str | None = None,
                  data_path: str | None = None, cf_name: str = "mf", bf16: bool = True,
                  dataset: Dataset | None = None, llm: LoadedLLM | None = None,
                  with_lora: bool = True) -> Pipeline:
    """Everything the app and evaluation need. ``with_lora=False`` leaves a saved adapter
    unloaded: stage 1 re-trained in a folder that already holds one must start from the plain
    LLM, not stack a second adapter on the first."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    if llm_name is None and manifest.get("llm", {}).get("name") and llm is None:
        llm_name = manifest["llm"]["name"]
    llm = llm or load_llm(llm_name)
    check_manifest(manifest, llm, None, cf_name)  # LLM mismatch: refuse before reading weights
    dataset = dataset or load_dataset(data_path)
    cf, projector, notes = load_backend(checkpoint_dir, cf_name, llm, manifest)
    model_llm = llm.model
    lora_dir = checkpoint_dir / "lora"
    has_lora = with_lora and (lora_dir / "adapter_model.safetensors").exists()
    if has_lora:
        from peft import PeftModel

        model_llm = PeftModel.from_pretrained(llm.model, str(lora_dir), is_trainable=False)
        model_llm.eval()
    elif with_lora:  # a deliberate skip (stage 1 retraining) is not a missing file
        notes.insert(1 if cf is None else 0, "no LoRA adapter (lora/)")
    model = CoLLM(model_llm, llm.tokenizer, projector, bf16=bf16)
    notice = ""
    if notes:
        mode = "CoLLM" if projector is not None else ("text-only" if has_lora else "zero-shot")
        notice = (f"Running in {mode} mode: {', '.join(notes)} in {checkpoint_dir}; {TRAIN_HINT}.")
    return Pipeline(dataset, llm, model, cf, manifest, has_lora, notice, cf_name)
