"""A lost or replaced encryption key refuses the start, naming the key ids, instead of minting a new key."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from lift3d.errors import EncryptionKeyMissing
from lift3d.settings import StorageSettings
from server.results import GENERATED_KEY_FILENAME, generate_key_text, key_id
from server.storage import NewJob, Storage
from tests.support.servers import REPO, free_port, fake_server_env

GLB = b"glTF" + bytes(60)


def settings(data_dir: Path, *keys: str) -> StorageSettings:
    return StorageSettings(data_dir=str(data_dir), encryption_keys=tuple(keys))


def kid(key_text: str) -> str:
    return key_id(base64.b64decode(key_text)).hex()


def stored_job(data_dir: Path, *keys: str, retention: int = 3600) -> str:
    """One succeeded job with a stored model, written under ``keys`` (generated when none)."""
    storage = Storage(settings(data_dir, *keys))
    try:
        record, _ = storage.new_job(NewJob(options={}, request_hash="h", weights_mode="tiny", retention_seconds=retention))
        storage.start_job(record.id)
        assert storage.publish(record.id, {"model.glb": GLB}) is not None
        return record.id
    finally:
        storage.close()


def test_results_under_a_key_no_longer_configured_refuse_the_storage(tmp_path: Path) -> None:
    old, new = generate_key_text(), generate_key_text()
    stored_job(tmp_path, old)
    with pytest.raises(EncryptionKeyMissing) as refused:
        Storage(settings(tmp_path, new))
    assert refused.value.key_ids == [kid(old)] and kid(old) in refused.value.message
    Storage(settings(tmp_path, new, old)).close()  # rotation as documented still starts


def test_a_deleted_generated_key_is_not_silently_replaced(tmp_path: Path) -> None:
    stored_job(tmp_path)
    key_file = tmp_path / GENERATED_KEY_FILENAME
    lost = kid(key_file.read_text())
    key_file.unlink()
    with pytest.raises(EncryptionKeyMissing, match=lost):
        Storage(settings(tmp_path))
    assert not key_file.exists(), "a new key was generated over results it cannot open"


def test_expired_results_do_not_block_the_start(tmp_path: Path) -> None:
    stored_job(tmp_path, generate_key_text(), retention=1)
    storage = Storage(settings(tmp_path, generate_key_text()), clock=lambda: 4_000_000_000.0)
    storage.close()


def test_serve_exits_2_with_one_line_naming_the_key_ids(tmp_path: Path) -> None:
    old = generate_key_text()
    data_dir = tmp_path / "data"
    stored_job(data_dir, old)
    environment = fake_server_env("k", data_dir, free_port(), {"LIFT3D_ENCRYPTION_KEYS": generate_key_text()})
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.servers"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("lift3d:")]
    assert len(lines) == 1 and kid(old) in lines[0] and "LIFT3D_ENCRYPTION_KEYS" in lines[0]
    assert "Traceback" not in done.stderr
