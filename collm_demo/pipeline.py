"""Checkpoints in, scores out: the object the CLI, the evaluation and the app share.

A :class:`Pipeline` is the dataset, the LLM (+ LoRA) wrapped in :class:`CoLLM`, and one CF
backend with its projector. ``load_pipeline`` builds it from a checkpoint folder
(``checkpoints.py`` reads and checks the files); missing checkpoints are not an error: the
pipeline then runs in the best mode it can (``text_only`` without a projector, ``zero_shot``
without LoRA) and says so in ``notice``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .cf import Backend, CFModel, backend
from .cf.backend import MF_NO_FOLDIN
from .checkpoints import TRAIN_HINT, available_backends, check_lora, check_manifest, load_backend, read_manifest
from .collm import CoLLM, build_prompts
from .config import CHECKPOINT_DIR, DEFAULT_CF, ProtocolConfig
from .data import Dataset, load_dataset
from .device import Runtime
from .distributed import Ranks
from .errors import CheckpointError, InputError
from .llm import LoadedLLM, load_llm


@dataclass
class Pipeline:
    dataset: Dataset
    llm: LoadedLLM
    model: CoLLM
    cf: CFModel | None
    manifest: dict = field(default_factory=dict)
    has_lora: bool = False
    notice: str = ""  # what is missing and how to fix it; empty when all is loaded
    cf_name: str = DEFAULT_CF  # which CF backend feeds the CF tokens (mf, lightgcn, or an imported name)
    ranks: Ranks = field(default_factory=Ranks)  # under torchrun: scoring is sharded over the processes

    @property
    def backend(self) -> Backend:
        return backend(self.cf_name)

    @property
    def cf_method(self) -> str:
        """Results key of the CF model alone: 'mf', 'lightgcn', ..."""
        return self.backend.alone_key

    @property
    def collm_method(self) -> str:
        """Results key of CoLLM with this backend: 'collm' for MF (the paper's main row), else 'collm_<name>'."""
        return self.backend.collm_key

    @property
    def has_projector(self) -> bool:
        return self.model.projector is not None and self.cf is not None

    def available_methods(self) -> list[str]:
        methods = ["zero_shot"]
        if self.cf is not None:
            methods[:0] = [self.cf_method, *self.backend.extra_methods]
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

    def joint_methods(self, methods: Sequence[str]) -> tuple[str, ...]:
        """Methods that can be scored in one call: text-only and CoLLM share the LoRA and the history."""
        pair = ("text_only", self.collm_method)
        return pair if self.has_lora and self.has_projector and all(m in methods for m in pair) else ()

    def score_methods(self, rows: pd.DataFrame, methods: Sequence[str], progress=None) -> dict[str, torch.Tensor]:
        """Scores of several methods on the same rows; the pair of ``joint_methods`` in one pass
        that encodes each user's history once for both (``CoLLM.score_modes``)."""
        joint = self.joint_methods(methods)
        out = {}
        if joint:
            users, items = self.cf_vectors(rows, for_tokens=True)
            text, collm = self.model.score_modes(self.prompts(rows, False), self.prompts(rows, True), users, items,
                                                 progress=progress, shard=self.ranks.shard())
            out = {joint[0]: self.ranks.merge(text), joint[1]: self.ranks.merge(collm)}
        return out | {m: self.score_rows(rows, m, progress) for m in methods if m not in out}

    def score_rows(self, rows: pd.DataFrame, method: str, progress=None) -> torch.Tensor:
        """Scores in [0, 1] for protocol rows under one of ``available_methods()``."""
        if method not in self.available_methods():
            raise InputError(f"method {method!r} is not available here (available: "
                             f"{', '.join(self.available_methods())}){'; ' + self.notice if self.notice else ''}")
        if method == self.cf_method:
            users, items = self.cf_vectors(rows)
            return self.cf.score_vectors(users, items)
        if method == MF_NO_FOLDIN:
            return self.cf_scores_without_foldin(rows)
        # Rows of one user with the same history share their prompt prefix: score_shared
        # encodes each distinct prefix once (about half as many as rows on ML-100K's test split).
        shard = self.ranks.shard()
        if method == self.collm_method:
            users, items = self.cf_vectors(rows, for_tokens=True)
            return self.ranks.merge(self.model.score_shared(self.prompts(rows, True), users, items, use_lora=True,
                                                            progress=progress, shard=shard))
        return self.ranks.merge(self.model.score_shared(self.prompts(rows, False), use_lora=(method == "text_only"),
                                                        progress=progress, shard=shard))


def with_backend(base: Pipeline, checkpoint_dir: str | Path, cf_name: str) -> Pipeline:
    """The same LLM, LoRA and data with another CF backend and its own projector.

    Nothing of the LLM is copied: the new pipeline's CoLLM wraps the very same (frozen) modules
    and shares their lock, which is CoLLM's decoupling: swapping the CF model swaps two small files.
    """
    if cf_name == base.cf_name:
        return base
    cf, projector, notes = load_backend(Path(checkpoint_dir), cf_name, base.llm, base.manifest)
    if notes:
        raise CheckpointError(f"CF backend {cf_name!r} is not trained in {checkpoint_dir}: {', '.join(notes)}; "
                              f"available: {', '.join(available_backends(checkpoint_dir)) or 'none'}")
    if projector is not None:
        projector.to(base.model.device)
    model = CoLLM(base.model.llm, base.model.tokenizer, projector, runtime=base.model.runtime, lock=base.model.lock)
    notice = "" if base.has_lora else base.notice  # the base's note may be about its own CF files
    return Pipeline(base.dataset, base.llm, model, cf, base.manifest, base.has_lora, notice, cf_name, base.ranks)


def check_protocol(manifest: dict, dataset: Dataset) -> None:
    """Checkpoints trained under one protocol are not scored under another (their rows differ)."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    recorded = (data.get("protocol") or {}).get("name", "global") if isinstance(data.get("protocol"), dict) else "global"
    if data and recorded != dataset.protocol.name:
        raise CheckpointError(f"the checkpoints were trained under protocol {recorded!r}, the data is loaded "
                              f"under {dataset.protocol.name!r}: pass --protocol {recorded}")


# What the manifest's data record is compared on: the counts are a deterministic function of the
# data and the protocol, so another data set (or an edited one) almost surely differs in one of them.
DATA_FINGERPRINT = ("interactions", "users", "items", "splits")


def _describe_counts(counts: dict) -> str:
    return ", ".join(f"{counts.get(key, '?')} {key}" for key in ("interactions", "users", "items"))


def check_data(manifest: dict, dataset: Dataset) -> None:
    """Checkpoints trained on one data set are not scored on another: the CF model's ids, the
    projector and the LoRA belong to the data in the manifest's record (shipped checkpoints on
    other MovieLens data scored AUC 0.40, with no warning). A copy of the same data, under any
    folder name, has the same counts and passes."""
    data = manifest.get("data")
    recorded = data.get("counts") if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        return  # nothing recorded (imported vectors only, an old folder): nothing to compare
    here = json.loads(json.dumps(dataset.counts))  # the manifest's JSON types (lists, not tuples)
    differ = [key for key in DATA_FINGERPRINT if key in recorded and recorded[key] != here.get(key)]
    if differ:
        what = (f"{_describe_counts(recorded)} vs {_describe_counts(here)}"
                if set(differ) - {"splits"} else "the same totals but different splits")
        raise CheckpointError(f"the checkpoints were trained on other data: {str(data.get('name'))[:80]!r}, not "
                              f"{dataset.name!r} ({what}), so their scores here mean nothing; train checkpoints "
                              "on this data, or pass --other-data to evaluate them on it anyway")


def runtime_for(runtime: Runtime | None, bf16: bool | None) -> Runtime:
    """``runtime`` as given; else the CPU in the precision ``bf16`` names; else what ``auto`` picks."""
    if runtime is not None:
        return runtime
    if bf16 is not None:
        return Runtime(torch.device("cpu"), "bf16" if bf16 else "fp32", "asked for by the caller")
    return Runtime.choose()


def zero_shot(llm: LoadedLLM, dataset: Dataset, bf16: bool | None = None, notice: str = "",
              runtime: Runtime | None = None) -> Pipeline:
    """The plain LLM and no checkpoint at all (the app's fallback when checkpoints are refused)."""
    runtime = runtime_for(runtime, bf16)
    llm.model.to(runtime.device)
    return Pipeline(dataset, llm, CoLLM(llm.model, llm.tokenizer, None, runtime=runtime), None, {}, False, notice)


def load_pipeline(checkpoint_dir: str | Path = CHECKPOINT_DIR, llm_name: str | None = None,
                  data_path: str | None = None, cf_name: str = DEFAULT_CF, bf16: bool | None = None,
                  dataset: Dataset | None = None, llm: LoadedLLM | None = None,
                  with_lora: bool = True, runtime: Runtime | None = None, ranks: Ranks | None = None,
                  protocol: ProtocolConfig | None = None, allow_other_data: bool = True) -> Pipeline:
    """Everything the app and evaluation need, on ``runtime``'s device and precision (see
    ``runtime_for``). ``with_lora=False`` leaves a saved adapter unloaded: stage 1 re-trained in
    a folder that already holds one must start from the plain LLM, not stack a second adapter.

    The LLM is ``llm``, else ``llm_name`` (``--llm`` / ``COLLM_LLM``), else the embedded default:
    never a path read from the checkpoint folder, whose manifest is only checked against it.
    ``allow_other_data=False`` (evaluation, the app) refuses checkpoints whose manifest records
    other data than ``dataset`` (``check_data``); training, which rewrites that record, allows it."""
    runtime = runtime_for(runtime, bf16)
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint_dir} is a file, not a folder")
    dataset = dataset or load_dataset(data_path, protocol)  # first: a bad data path fails in seconds
    manifest = read_manifest(checkpoint_dir)
    check_protocol(manifest, dataset)
    if not allow_other_data:
        check_data(manifest, dataset)
    loads_llm = llm is None  # a caller that brings its own LLM (training) is replacing what the folder holds
    llm = llm or load_llm(llm_name)
    check_manifest(manifest, llm, None, cf_name, check_name=loads_llm)  # LLM mismatch: refuse before any weight
    cf, projector, notes = load_backend(checkpoint_dir, cf_name, llm, manifest)
    llm.model.to(runtime.device)
    if projector is not None:
        projector.to(runtime.device)
    model_llm = llm.model
    lora_dir = checkpoint_dir / "lora"
    has_lora = with_lora and (lora_dir / "adapter_model.safetensors").exists()
    if has_lora:
        from peft import PeftModel  # peft is heavy: only where an adapter exists
        from safetensors import SafetensorError

        check_lora(lora_dir)  # a bad config or file is named here; PEFT's own errors name neither
        try:
            model_llm = PeftModel.from_pretrained(llm.model, str(lora_dir), is_trainable=False)
        except (SafetensorError, ValueError, RuntimeError, TypeError, KeyError, OSError) as err:
            # e.g. target modules this LLM lacks, or tensors of another shape
            detail = "; ".join(line.strip() for line in str(err).splitlines()[:2] if line.strip())[:300]
            raise CheckpointError(f"{lora_dir}: the LoRA adapter does not fit this LLM "
                                  f"({type(err).__name__}: {detail})") from None
        model_llm.eval()
    elif with_lora:  # a deliberate skip (stage 1 retraining) is not a missing file
        notes.insert(1 if cf is None else 0, "no LoRA adapter (lora/)")
    model = CoLLM(model_llm, llm.tokenizer, projector, runtime=runtime)
    notice = ""
    if notes:
        mode = "CoLLM" if projector is not None else ("text-only" if has_lora else "zero-shot")
        notice = (f"Running in {mode} mode: {', '.join(notes)} in {checkpoint_dir}; {TRAIN_HINT}.")
    return Pipeline(dataset, llm, model, cf, manifest, has_lora, notice, cf_name, ranks or Ranks())
