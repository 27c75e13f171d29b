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


# Entries of the manifest that the loaders read, and the type each must have: a manifest that is
# JSON but of another shape (``[1, 2, 3]``, ``{"llm": "str"}``) is refused here, naming the entry,
# so that no loader meets a str where it expects an object.
MANIFEST_OBJECTS = ("llm", "cf", "data", "stages", "test_metrics")


def read_manifest(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> dict:
    """The folder's manifest ({} when there is none); anything but a JSON object whose entries
    have the shapes the loaders read (``MANIFEST_OBJECTS``, one object per CF model) is refused."""
    path = Path(checkpoint_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    except OSError as err:  # a folder named manifest.json, no permission, ...
        raise CheckpointError(f"{path} cannot be read: {err.strerror or err}") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a JSON object (found {type(manifest).__name__})")
    for key in MANIFEST_OBJECTS:
        if key in manifest and not isinstance(manifest[key], dict):
            raise CheckpointError(f"{path}: the entry {key!r} is not an object (found "
                                  f"{type(manifest[key]).__name__} {_short(manifest[key])})")
    for name, entry in manifest.get("cf", {}).items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: the entry cf.{_short(name)} is not an object (found "
                                  f"{type(entry).__name__} {_short(entry)})")
    for key in ("protocol", "counts"):  # what the protocol and data checks compare
        value = manifest.get("data", {}).get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: the entry data.{key} is not an object (found "
                                  f"{type(value).__name__} {_short(value)})")
    llm = manifest.get("llm", {})
    for key in ("hidden_size", "layers"):
        if key in llm and (isinstance(llm[key], bool) or not isinstance(llm[key], int)):
            raise CheckpointError(f"{path}: llm.{key} must be a whole number, found {_short(llm[key])}")
    if "name" in llm and not isinstance(llm["name"], str):
        raise CheckpointError(f"{path}: llm.name must be a string, found {_short(llm['name'])}")
    return manifest


def _short(value: object, limit: int = 60) -> str:
    """A value as it may appear in a message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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
    meta = check_safetensors(path)
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
        weights = load_file(str(path))
        projector.load_state_dict(weights)
    except (SafetensorError, RuntimeError, OSError) as err:
        # the first lines of torch's message name the tensors and both shapes
        detail = "; ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())
        raise CheckpointError(f"{path}: projector weights do not fit ({detail[:300]})") from None
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:  # NaN weights would make every CoLLM score NaN, silently
        raise CheckpointError(f"{path}: projector weights contain NaN or infinite values ({', '.join(bad[:3])})")
    projector.eval()
    return projector


def same_llm(recorded: str, running: str) -> bool:
    """Whether a manifest's LLM name and the running LLM's name are the same model: equal
    strings, or two spellings of the same local folder."""
    if recorded == running:
        return True
    a, b = Path(recorded).expanduser(), Path(running).expanduser()
    return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()


def check_llm_name(manifest: dict, running: str) -> None:
    """The LLM the manifest records is the one running (needs only the name: the app checks it
    before the LLM is loaded)."""
    want = manifest.get("llm", {})
    recorded = want.get("name") if isinstance(want, dict) else None
    if isinstance(recorded, str) and not same_llm(recorded, running):
        raise CheckpointError(
            f"checkpoints were trained for the LLM {_short(recorded, 200)}, but the running LLM is "
            f"{running!r}; to use them, run that LLM (--llm / COLLM_LLM)")


def check_manifest(manifest: dict, llm: LoadedLLM, cf: CFModel | None, cf_name: str,
                   check_name: bool = False) -> None:
    """Cheap consistency checks from the manifest alone, before any weight is loaded.

    The manifest never chooses the LLM (the caller loaded it from ``--llm`` / ``COLLM_LLM`` or
    the default); it is only checked against it: hidden size and depth always, the name with
    ``check_name`` (callers that load the LLM for these checkpoints; training, which brings its
    own LLM to replace what the folder holds, does not ask).
    """
    if not manifest:
        return
    want = manifest.get("llm", {})
    if not isinstance(want, dict):
        raise CheckpointError(f"the manifest's 'llm' entry is not an object: {str(want)[:60]!r}")
    if check_name:
        check_llm_name(manifest, llm.name)
    if want.get("hidden_size") not in (None, llm.hidden_size):
        raise CheckpointError(
            f"checkpoints were trained for an LLM with hidden size {want['hidden_size']} "
            f"({want.get('name')}), but the running LLM {llm.name} has hidden size {llm.hidden_size}")
    layers = getattr(getattr(llm.model, "config", None), "num_hidden_layers", None)
    if isinstance(layers, int) and want.get("layers") not in (None, layers):
        raise CheckpointError(f"checkpoints were trained for an LLM with {want['layers']} layers "
                              f"({want.get('name')}), but the running LLM {llm.name} has {layers}")
    cf_info = manifest.get("cf", {}).get(cf_name)
    if cf is not None and cf_info:
        if cf_info.get("vector_dim") not in (None, cf.dim):
            raise CheckpointError(f"manifest says the {cf_name} CF vectors have dim "
                                  f"{cf_info['vector_dim']}, the CF file has dim {cf.dim}")
        for side, ids in (("users", cf.user_ids), ("items", cf.item_ids)):
            if cf_info.get(side) not in (None, len(ids)):
                raise CheckpointError(f"manifest says the {cf_name} CF model has {cf_info[side]} "
                                      f"{side}, the CF file has {len(ids)}")


def check_safetensors(path: str | Path) -> dict:
    """Open a safetensors file's header (no weight is read) and return its metadata; anything
    that is not one (truncated, a pickle renamed, a folder, a header claiming 2^62 bytes) is
    a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None


def check_lora(lora_dir: str | Path) -> None:
    """The stage-1 adapter's two files, checked before PEFT reads them: PEFT's own errors for a
    bad file are a bare JSON, type or safetensors error naming no file."""
    lora_dir = Path(lora_dir)
    config = lora_dir / "adapter_config.json"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing (the LoRA adapter in {lora_dir} needs it)")
    try:
        content = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{config} is not valid JSON: {err}") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"{config} is not a JSON object (found {type(content).__name__})")
    if content.get("peft_type") != "LORA":
        raise CheckpointError(f"{config}: not a LoRA adapter (peft_type {_short(content.get('peft_type'))})")
    check_safetensors(lora_dir / "adapter_model.safetensors")


def check_folder(checkpoint_dir: str | Path) -> None:
    """Everything that can be checked without the LLM and without reading weights: the manifest's
    shape, and that every CF file, projector and the adapter are readable safetensors. The app
    runs this before its page is built, so a folder refused here offers no CF model at all."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint_dir} is a file, not a folder")
    if not checkpoint_dir.exists():
        return
    read_manifest(checkpoint_dir)
    for path in sorted(checkpoint_dir.glob("*.safetensors")):
        check_safetensors(path)
    if (checkpoint_dir / "lora" / "adapter_model.safetensors").exists():
        check_lora(checkpoint_dir / "lora")


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
