"""The checkpoint folder: manifest, CF files, projectors, and the checks that keep them honest.

    checkpoints/
      manifest.json                 what was trained, how, on which data and LLM; test metrics
      cf_<name>.safetensors         a CF model (``collm_demo.cf``)
      lora/                         the stage-1 adapter (PEFT, safetensors)
      projector_<name>.safetensors  the stage-2 projector for CF backend <name>

File names come from the backend's description (``collm_demo.cf.backend``). The manifest is
read *before* any weight, and checkpoints that do not fit the running LLM (hidden size), the CF
model (dimension, id maps) or each other are refused with a :class:`CheckpointError` naming the
mismatch. Missing files are not an error here: the caller decides which mode it can run in.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .cf import CFModel, backend, load_cf
from .cf.foldin import DEFAULT_L2, parse_l2
from .collm import Projector
from .config import CHECKPOINT_DIR
from .errors import CheckpointError, CoLLMError
from .llm import LoadedLLM

TRAIN_HINT = "train them with `python -m collm_demo train --stage all`"


def read_manifest(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> dict:
    """The folder's manifest ({} when there is none); anything but a JSON object is refused."""
    path = Path(checkpoint_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a JSON object (found {type(manifest).__name__})")
    return manifest


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
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        got_hidden, got_dim = int(meta.get("hidden_size", -1)), int(meta.get("cf_dim", -1))
    except ValueError:
        got_hidden = got_dim = -1
    if got_hidden != hidden_size:
        raise CheckpointError(f"{path}: projector outputs hidden size {got_hidden}, but the "
                              f"running LLM has hidden size {hidden_size}")
    if got_dim != cf_dim:
        raise CheckpointError(f"{path}: projector expects CF vectors of dim {got_dim}, but the "
                              f"CF model gives dim {cf_dim}")
    # A file without a recorded fold-in strength predates the record: it was trained when the
    # strength was always DEFAULT_L2.
    try:
        foldin_l2 = parse_l2(meta.get("foldin_l2", DEFAULT_L2))
    except CoLLMError as error:
        raise CheckpointError(f"{path}: the recorded fold-in strength is unusable ({error}); retrain the "
                              "projector (train --stage projector)") from None
    projector = Projector(cf_dim, hidden_size, foldin_l2=foldin_l2)
    try:
        projector.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{path}: projector weights do not fit ({str(err).splitlines()[0][:200]})") from None
    projector.eval()
    return projector


def check_manifest(manifest: dict, llm: LoadedLLM, cf: CFModel | None, cf_name: str) -> None:
    """Cheap consistency checks from the manifest alone, before any weight is loaded."""
    if not manifest:
        return
    want = manifest.get("llm", {})
    if not isinstance(want, dict):
        raise CheckpointError(f"the manifest's 'llm' entry is not an object: {str(want)[:60]!r}")
    if want.get("hidden_size") not in (None, llm.hidden_size):
        raise CheckpointError(
            f"checkpoints were trained for an LLM with hidden size {want['hidden_size']} "
            f"({want.get('name')}), but the running LLM {llm.name} has hidden size {llm.hidden_size}")
    cf_info = manifest.get("cf", {}).get(cf_name)
    if cf is not None and cf_info:
        if cf_info.get("vector_dim") not in (None, cf.dim):
            raise CheckpointError(f"manifest says the {cf_name} CF vectors have dim "
                                  f"{cf_info['vector_dim']}, the CF file has dim {cf.dim}")
        for side, ids in (("users", cf.user_ids), ("items", cf.item_ids)):
            if cf_info.get(side) not in (None, len(ids)):
                raise CheckpointError(f"manifest says the {cf_name} CF model has {cf_info[side]} "
                                      f"{side}, the CF file has {len(ids)}")


def available_backends(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> list[str]:
    """CF backends with both a CF file and a projector in ``checkpoint_dir`` (from file names only)."""
    checkpoint_dir = Path(checkpoint_dir)
    names = sorted(path.stem[len("cf_"):] for path in checkpoint_dir.glob("cf_*.safetensors"))
    return [name for name in names if (checkpoint_dir / backend(name).projector_file).exists()]


def load_backend(checkpoint_dir: Path, cf_name: str, llm: LoadedLLM, manifest: dict
                 ) -> tuple[CFModel | None, Projector | None, list[str]]:
    """One CF backend's two files, checked against the manifest and the LLM; missing parts
    are listed in the returned notes, not raised."""
    notes = []
    spec = backend(cf_name)
    cf_path = Path(checkpoint_dir) / spec.cf_file
    cf = load_cf(cf_path) if cf_path.exists() else None
    if cf is None:
        notes.append(f"no CF model ({cf_path.name})")
    else:
        check_manifest(manifest, llm, cf, cf_name)
    projector = None
    projector_path = Path(checkpoint_dir) / spec.projector_file
    if cf is not None and projector_path.exists():
        projector = load_projector(projector_path, llm.hidden_size, cf.dim)
    else:
        notes.append(f"no projector ({projector_path.name})")
    return cf, projector, notes


def record_cf(manifest: dict, cf_name: str, cf: CFModel, **extra) -> None:
    """The manifest's entry for a CF file (what the load-time checks compare against)."""
    manifest.setdefault("cf", {})[cf_name] = {"file": backend(cf_name).cf_file, "kind": cf.kind,
                                              "vector_dim": cf.dim, "users": len(cf.user_ids),
                                              "items": len(cf.item_ids)} | extra
