"""Encrypted result files: AES-256-GCM at rest, key rotation, atomic writes, sweeps."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import pytest

from server.problems import http_status

import server.results as results_module
from lift3d.settings import StorageSettings
from server.results import (
    GENERATED_KEY_FILENAME,
    MAGIC,
    EncryptedFileStore,
    EncryptionKeyError,
    KeyRing,
    ResultDecryptionError,
    ResultNotFound,
    decrypt,
    generate_key_text,
)

GLB = b"glTF" + (2).to_bytes(4, "little") + os.urandom(2000)


def settings_for(tmp_path: Path, *keys: str) -> StorageSettings:
    return StorageSettings(data_dir=str(tmp_path), encryption_keys=tuple(keys))


@pytest.fixture()
def key() -> str:
    return generate_key_text()


def test_round_trip_and_no_plaintext_on_disk(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    assert store.put("job1", "model.glb", GLB) == len(GLB)
    assert store.get("job1", "model.glb") == GLB
    raw = store.path_for("job1", "model.glb").read_bytes()
    assert raw.startswith(MAGIC) and b"glTF" not in raw
    assert GLB[100:164] not in raw
    assert store.path_for("job1", "model.glb").stat().st_mode & 0o777 == 0o600


def test_each_write_uses_a_fresh_nonce(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    store.put("job1", "model.glb", GLB)
    first = store.path_for("job1", "model.glb").read_bytes()
    store.put("job1", "model.glb", GLB)
    second = store.path_for("job1", "model.glb").read_bytes()
    assert first != second and len(first) == len(second)


def test_wrong_key_fails_loudly(tmp_path: Path, key: str) -> None:
    EncryptedFileStore.from_settings(settings_for(tmp_path, key)).put("job1", "model.glb", GLB)
    other = EncryptedFileStore.from_settings(settings_for(tmp_path, generate_key_text()))
    with pytest.raises(ResultDecryptionError) as info:
        other.get("job1", "model.glb")
    assert info.value.code == "result_undecryptable" and http_status(info.value) == 500


def test_same_key_id_but_tampered_bytes_fail(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    store.put("job1", "model.glb", GLB)
    path = store.path_for("job1", "model.glb")
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ResultDecryptionError, match="authentication"):
        store.get("job1", "model.glb")


def test_result_bound_to_its_job_and_name(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    store.put("job1", "model.glb", GLB)
    blob = store.path_for("job1", "model.glb").read_bytes()
    ring = KeyRing.from_settings(settings_for(tmp_path, key))
    assert decrypt(ring, "job1", "model.glb", blob) == GLB
    with pytest.raises(ResultDecryptionError):
        decrypt(ring, "job2", "model.glb", blob)
    with pytest.raises(ResultDecryptionError):
        decrypt(ring, "job1", "views.png", blob)


def test_key_rotation_old_results_stay_readable(tmp_path: Path) -> None:
    old, new = generate_key_text(), generate_key_text()
    EncryptedFileStore.from_settings(settings_for(tmp_path, old)).put("job1", "model.glb", GLB)
    rotated = EncryptedFileStore.from_settings(settings_for(tmp_path, new, old))
    assert rotated.get("job1", "model.glb") == GLB
    rotated.put("job2", "model.glb", GLB)
    # New writes use the first key: readable without the old one.
    assert EncryptedFileStore.from_settings(settings_for(tmp_path, new)).get("job2", "model.glb") == GLB
    with pytest.raises(ResultDecryptionError, match="not configured"):
        EncryptedFileStore.from_settings(settings_for(tmp_path, old)).get("job2", "model.glb")


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_invalid_configured_key_is_a_startup_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(EncryptionKeyError):
        KeyRing.from_settings(settings_for(tmp_path, bad))


def test_generated_key_is_private_persistent_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "_warned_generated_key", False)
    settings = settings_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lift3d.results"):
        first = EncryptedFileStore.from_settings(settings)
        first.put("job1", "model.glb", GLB)
        second = EncryptedFileStore.from_settings(settings)
    key_file = tmp_path / GENERATED_KEY_FILENAME
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32
    assert second.get("job1", "model.glb") == GLB
    warnings = [r for r in caplog.records if "no encryption key configured" in r.getMessage()]
    assert len(warnings) == 1
    assert key_file.read_text().strip() not in caplog.text


def test_key_generation_leftovers_are_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / f".{GENERATED_KEY_FILENAME}.dead{results_module.TEMP_SUFFIX}"
    stale.write_text("half")
    EncryptedFileStore.from_settings(settings_for(tmp_path))
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [GENERATED_KEY_FILENAME, "results"]


def test_generated_key_still_decrypts_after_a_key_is_configured(tmp_path: Path) -> None:
    EncryptedFileStore.from_settings(settings_for(tmp_path)).put("job1", "model.glb", GLB)
    configured = EncryptedFileStore.from_settings(settings_for(tmp_path, generate_key_text()))
    assert configured.get("job1", "model.glb") == GLB


def test_missing_and_hostile_names_are_not_found(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    with pytest.raises(ResultNotFound):
        store.get("job1", "model.glb")
    for job_id, name in [("../etc", "model.glb"), ("job1", "../../passwd"), ("a/b", "model.glb"), ("", "x.glb")]:
        with pytest.raises(ResultNotFound):
            store.get(job_id, name)


def test_delete_removes_every_artifact(tmp_path: Path, key: str) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))
    store.put("job1", "model.glb", GLB)
    store.put("job1", "views.png", b"\x89PNG....")
    store.put("job2", "model.glb", GLB)
    assert store.delete("job1") == 2
    assert not (store.root / "job1").exists()
    assert store.delete("job1") == 0
    assert list(store.job_ids()) == ["job2"]


def test_interrupted_write_leaves_no_result_and_is_swept(tmp_path: Path, key: str, monkeypatch) -> None:
    store = EncryptedFileStore.from_settings(settings_for(tmp_path, key))

    def crash(src, dst):  # the process dies between writing the temp file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(results_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.put("job1", "model.glb", GLB)
    monkeypatch.undo()
    with pytest.raises(ResultNotFound):
        store.get("job1", "model.glb")
    # What a SIGKILL mid-write would leave behind: a temp file, stray files, an empty folder.
    (store.root / "job1" / ".model.glb.enc.1234.partial").write_bytes(b"half")
    (store.root / "job3").mkdir()
    (store.root / "stray.tmp").write_bytes(b"x")
    store.put("job2", "model.glb", GLB)
    assert store.sweep_partial() == 2
    assert sorted(p.name for p in store.root.iterdir()) == ["job2"]
    assert store.get("job2", "model.glb") == GLB
