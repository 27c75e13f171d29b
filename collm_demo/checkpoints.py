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

The app checks more before it offers anything (``check_backends``, ``check_llm_files``): every
backend's CF file and projector read in full (shapes, dtype, finite values) and the adapter
against the shapes in the LLM's files, so one bad file refuses the folder before the page exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .assets import converted_llm_dir
from .cf import Backend, CFModel, backend, load_cf
from .cf.backend import CF_FILE_GLOB
from .cf.foldin import DEFAULT_L2, parse_l2
from .collm import Projector
from .config import CHECKPOINT_DIR, HISTORY_STYLES
from .errors import CheckpointError, CoLLMError
from .llm import LoadedLLM, resolve_llm_name

TRAIN_HINT = "train them with `python -m collm_demo train --stage all`"


class _Entry(BaseModel):
    """An object of the manifest: entries not named here are kept and not checked; a named entry
    that is present must have its type (strict: no "32" for 32, no true for 1). A default only
    stands for an absent entry: pydantic does not validate defaults, and nothing reads them."""

    model_config = ConfigDict(extra="allow", strict=True)


class LLMRecord(_Entry):
    """``manifest["llm"]``: the LLM the checkpoints were trained for (compared with the running one)."""

    name: str = ""
    hidden_size: int = 0
    layers: int = 0


class DataRecord(_Entry):
    """``manifest["data"]``: what the protocol and data checks compare (null: not recorded)."""

    protocol: dict | None = None
    counts: dict | None = None


class Manifest(_Entry):
    """The entries of ``manifest.json`` that the loaders read, and their shapes: a manifest that is
    JSON but of another shape (``{"llm": "str"}``, a CF record that is a list) is refused when read,
    naming the entry, so that no loader meets a str where it expects an object."""

    llm: LLMRecord = LLMRecord()
    cf: dict[str, dict] = {}  # one object per CF model, by backend name
    data: DataRecord = DataRecord()
    stages: dict = {}
    test_metrics: dict = {}


# What each kind of pydantic error means in a manifest, in the words of the refusal.
_PROBLEMS = {"model_type": "is not an object", "dict_type": "is not an object",
             "int_type": "is not a whole number", "string_type": "is not a string"}


def read_manifest(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> dict:
    """The folder's manifest ({} when there is none); anything but a JSON object whose entries
    have the shapes the loaders read (:class:`Manifest`) is refused, naming the entry. The dict
    itself is returned, as read: training updates it and writes it back whole."""
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
    try:
        Manifest.model_validate(manifest)
    except ValidationError as err:
        first = err.errors()[0]
        entry = ".".join(str(part) for part in first["loc"])
        found = first.get("input")
        raise CheckpointError(f"{path}: the entry {_short(entry)} {_PROBLEMS.get(first['type'], first['msg'])} "
                              f"(found {type(found).__name__} {_short(found)})") from None
    return manifest


def projector_recipe(record: dict) -> str:
    """The recipe a stage record says trained it: "paper", "grouped-stage2", or a description
    of a variant ("grouped-stage2 with projector_lr changed", "a grouped variant")."""
    if "recipe" in record:  # a manifest is a file people edit: every value is read as text
        changed = record.get("recipe_overrides") or []
        changed = [str(c)[:40] for c in changed] if isinstance(changed, list) else [str(changed)[:40]]
        return str(record["recipe"])[:60] + (f" with {', '.join(changed)} changed" if changed else "")
    named = re.search(r"--recipe[ =](\S+)", str(record.get("command", "")))
    if named:  # recorded before the record said so: the command that trained it does
        return named.group(1)[:60]
    if _grouping(record) == (1, 0.0):
        return "paper"  # recorded before recipes were: the per-row stage of the paper
    return "a grouped variant (no recipe recorded)"


def history_style(manifest: dict, projector_stage: str | None = None) -> str:
    """How the folder's prompts show the history (config.HISTORY_STYLES): what its stage-1 LoRA was
    trained on ("marked" for records from before the style was recorded). A projector stage
    (``projector_stage``, its manifest key) trained on another style than the LoRA is refused: the
    two were trained to read different prompts."""
    stages = manifest.get("stages") or {}
    style = _style(stages.get("lora"))
    record = stages.get(projector_stage) if projector_stage else None
    if record and _style(record) != style:
        raise CheckpointError(f"the {projector_stage} stage was trained on prompts with the {_style(record)} history "
                              f"and the LoRA on the {style} history: retrain one of them (train --history-style)")
    return style


def _style(record: dict | None) -> str:
    style = str((record or {}).get("history_style", "marked"))
    if style not in HISTORY_STYLES:
        raise CheckpointError(f"manifest: history style {_short(style)} is not one of {', '.join(HISTORY_STYLES)}")
    return style


def _grouping(record: dict) -> tuple[int, float]:
    """(group size, pairwise weight) of a stage record; (1, 0.0), per row, where absent or unreadable."""
    try:
        return int(record.get("group_size", 1) or 1), float(record.get("pairwise_weight", 0.0) or 0.0)
    except (TypeError, ValueError):
        return 1, 0.0


def projector_training(record: dict | None) -> str:
    """How a projector stage record says the projector was trained, in words for the app:
    "one user at a time (groups of 8 sharing one history, BCE + a pairwise term), the recipe
    grouped-stage2" or "row by row with BCE, the paper's recipe"; '' without a record."""
    if not record:
        return ""
    recipe = projector_recipe(record)
    named = "the paper's recipe" if recipe == "paper" else f"the recipe {recipe}"
    size, pairwise = _grouping(record)
    if size > 1:
        how = f"one user at a time (groups of up to {size} rows sharing one history, BCE" + \
              (" + a pairwise term)" if pairwise else ")")
    else:
        how = "row by row with BCE"
    return f"{how}, {named}"


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
    metadata = {"cf_dim": str(projector.cf_dim), "hidden_size": str(projector.hidden_size), "cf_kind": cf_kind,
                "separate_users": str(projector.separate_users).lower()}
    if projector.foldin_l2 is not None:
        metadata["foldin_l2"] = str(projector.foldin_l2)
    if projector.token_norm is not None:
        metadata["token_norm"] = str(projector.token_norm)
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
    try:  # absent: the paper's unscaled tokens (every file from before the option)
        token_norm = float(meta["token_norm"]) if "token_norm" in meta else None
        if token_norm is not None and not 0 < token_norm < float("inf"):
            raise ValueError(token_norm)
    except ValueError:
        raise CheckpointError(f"{path}: the recorded token norm {_short(meta['token_norm'])} is not a positive "
                              "number; retrain the projector (train --stage projector)") from None
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None
    # Users mapped by their own MLP (``Projector.separate_users``): its weights say so; a file from
    # before the option has none.
    separate = any(name.startswith("user_net.") for name in weights)
    projector = Projector(cf_dim, hidden_size, foldin_l2=foldin_l2, separate_users=separate, token_norm=token_norm)
    # Before load_state_dict: it would silently cast integer tensors into the float parameters.
    check_float_tensors(path, weights, "projector weights")
    try:
        projector.load_state_dict(weights)
    except RuntimeError as err:
        # the first lines of torch's message name the tensors and both shapes
        detail = "; ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())
        raise CheckpointError(f"{path}: projector weights do not fit ({detail[:300]})") from None
    projector.eval()
    return projector


def check_float_tensors(path: str | Path, tensors: dict, what: str) -> None:
    """Every tensor floating point and finite: integer weights are no trained layer, and NaN
    weights would make every CoLLM score NaN, silently."""
    not_float = [f"{name} ({str(t.dtype).removeprefix('torch.')})" for name, t in tensors.items()
                 if not t.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{path}: {what} must be floating point, found dtype {', '.join(not_float[:3])}")
    bad = [name for name, tensor in tensors.items() if not tensor.isfinite().all()]
    if bad:
        raise CheckpointError(f"{path}: {what} contain NaN or infinite values ({', '.join(bad[:3])})")


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
    if cf is not None:
        check_cf_record(manifest, cf, cf_name)


def check_cf_record(manifest: dict, cf: CFModel, cf_name: str) -> None:
    """A CF file fits the manifest's record of it (vector dim, user and item counts)."""
    cf_info = manifest.get("cf", {}).get(cf_name)
    if not cf_info:
        return
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
    for lora_dir in lora_dirs(checkpoint_dir):
        check_lora(lora_dir)


def lora_dirs(checkpoint_dir: Path) -> list[Path]:
    """The folder's LoRA adapters: stage 1's (``lora/``) and stage 2's own copies (``lora_<cf>/``)."""
    names = ["lora"] + [spec.lora_dir for _, spec in _cf_files(checkpoint_dir)]
    return [checkpoint_dir / name for name in names if (checkpoint_dir / name / "adapter_model.safetensors").exists()]


def available_backends(checkpoint_dir: str | Path = CHECKPOINT_DIR) -> list[str]:
    """CF backends with both a CF file and a projector in ``checkpoint_dir`` (from file names only)."""
    checkpoint_dir = Path(checkpoint_dir)
    names = sorted(spec.name for _, spec in _cf_files(checkpoint_dir))
    return [name for name in names if (checkpoint_dir / backend(name).projector_file).exists()]


def _cf_files(checkpoint_dir: Path) -> list[tuple[Path, Backend]]:
    """Every CF file in ``checkpoint_dir`` (in file-name order) and the backend it belongs to."""
    found = [(path, Backend.from_cf_file(path)) for path in sorted(checkpoint_dir.glob(CF_FILE_GLOB))]
    return [(path, spec) for path, spec in found if spec is not None]


def check_backends(checkpoint_dir: str | Path, manifest: dict, hidden_size: int | None = None) -> None:
    """Every CF backend in the folder read in full and checked, not only the configured one: the
    CF file loads (kind, shapes, finite vectors) and fits the manifest's record of it, and its
    projector fits the CF model and the LLM (tensor shapes, floating-point dtype, finite values).
    The files are small (about 1 MB each), so the app runs this before its page is built: a
    folder with one bad backend offers none. ``hidden_size`` is the running LLM's; without it,
    the manifest's record of it (which ``check_manifest`` compares with the LLM once loaded),
    else each projector's own record (shapes only; the LLM is compared once it is loaded)."""
    checkpoint_dir = Path(checkpoint_dir)
    if hidden_size is None:
        hidden_size = manifest.get("llm", {}).get("hidden_size")
    for cf_path, spec in _cf_files(checkpoint_dir):
        cf = load_cf(cf_path)
        check_cf_record(manifest, cf, spec.name)
        projector_path = checkpoint_dir / spec.projector_file
        if projector_path.exists():
            load_projector(projector_path, hidden_size or _recorded_hidden_size(projector_path), cf.dim)


def _recorded_hidden_size(projector_path: Path) -> int:
    try:
        return int(check_safetensors(projector_path).get("hidden_size", -1))
    except ValueError:
        return -1  # load_projector names the unusable record


def local_llm_folder(llm_name: str | None) -> Path | None:
    """The running LLM's folder when its files are on disk already: a local folder, or the
    embedded LLM once converted (its integrity is hashed by the loader, not here). None for a
    Hugging Face id or before the first conversion: then only the loaded LLM is checked."""
    name = resolve_llm_name(llm_name)
    if name.startswith("embedded:"):
        folder = converted_llm_dir()
        return folder if (folder / "COMPLETE").is_file() else None
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None


def llm_weight_shapes(folder: Path) -> dict[str, list[int]]:
    """Shape of every weight of the LLM in ``folder``, from its safetensors headers (no weight is
    read); {} where they cannot be read (the loader then says why)."""
    shapes: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = list(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError):
            return {}
    return shapes


LORA_PREFIX = "base_model.model."  # PEFT's name for the wrapped model in a saved adapter


def check_lora_fits(lora_dir: str | Path, llm_shapes: dict[str, list[int]]) -> None:
    """The adapter's tensors fit the LLM they will be added to, before PEFT reads them: float
    and finite, and for each adapted layer of weight (out, in) in the LLM, lora_A is (rank, in)
    and lora_B (out, rank). Layers the LLM's files do not name are left to PEFT (other naming)."""
    path = Path(lora_dir) / "adapter_model.safetensors"
    tensors = load_file(str(path))
    check_float_tensors(path, tensors, "LoRA weights")
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        layer = llm_shapes.get(module.removeprefix(LORA_PREFIX) + ".weight")
        if layer is None or len(layer) != 2:
            continue
        b = tensors.get(module + ".lora_B.weight")
        out_dim, in_dim = layer
        if not (a.ndim == 2 and a.shape[1] == in_dim and b is not None and list(b.shape) == [out_dim, a.shape[0]]):
            found = f"lora_A {list(a.shape)}, lora_B {None if b is None else list(b.shape)}"
            raise CheckpointError(f"{lora_dir}: the LoRA adapter does not fit this LLM ({_short(module, 80)}: "
                                  f"{found}; the LLM's layer is {layer})")


def check_llm_files(manifest: dict, llm_name: str | None, checkpoint_dir: str | Path) -> None:
    """What the running LLM's files on disk say, before it is loaded: the manifest's depth is
    the LLM's (config.json), and the LoRA adapter fits the shapes of its weights. Nothing is
    checked when the files are not on disk (a Hub id, the embedded LLM before its first
    conversion): the loaded LLM is checked instead. (The hidden size is compared once loaded:
    the embedding width, which config.json does not always name.)"""
    folder = local_llm_folder(llm_name)
    if folder is None:
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return  # not a model folder the loader can read: it says so itself
    layers = config.get("num_hidden_layers") if isinstance(config, dict) else None
    want = manifest.get("llm", {})
    if isinstance(layers, int) and want.get("layers") not in (None, layers):
        raise CheckpointError(f"checkpoints were trained for an LLM with {want['layers']} layers "
                              f"({want.get('name')}), but the running LLM {resolve_llm_name(llm_name)} has {layers}")
    adapters = lora_dirs(Path(checkpoint_dir))
    shapes = llm_weight_shapes(folder) if adapters else {}
    for lora_dir in adapters if shapes else []:
        check_lora_fits(lora_dir, shapes)


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
