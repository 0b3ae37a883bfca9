"""Stored results (model.glb, views.png), encrypted at rest.

Callers use the small :class:`ResultStore` protocol; ``LIFT3D_RESULTS`` picks the
implementation (``server/results_s3.py`` for S3-compatible buckets). The default keeps one folder per job
in the data directory; every file is AES-256-GCM encrypted with a random nonce,
bound to its job id and artifact name, so a file copied to another job's folder
(or renamed) fails to decrypt instead of being served.

File layout (all integers big-endian)::

    magic "L3DR" | version 1 (1 byte) | key id (8 bytes) | nonce (12 bytes) | ciphertext + GCM tag

The header is part of the associated data, so it cannot be altered either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Collection, Iterator, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lift3d.settings import StorageSettings
from lift3d.errors import EncryptionKeyError, EncryptionKeyMissing, ResultDecryptionError, ResultNotFound, StorageUnavailable

log = logging.getLogger("lift3d.results")

MAGIC = b"L3DR"
FORMAT_VERSION = 1
KEY_ID_BYTES = 8
NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + 1 + KEY_ID_BYTES + NONCE_BYTES
KEY_BYTES = 32

RESULTS_DIRNAME = "results"
GENERATED_KEY_FILENAME = "encryption.key"
ENCRYPTED_SUFFIX = ".enc"
TEMP_SUFFIX = ".partial"

# Job ids and artifact names become path components: keep them boring.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ARTIFACT = re.compile(r"^[a-z0-9][a-z0-9_-]*\.[a-z0-9]{1,8}$")


class ResultStore(Protocol):
    """Where results live. Names are artifact names such as ``model.glb``."""

    def put(self, job_id: str, name: str, data: bytes) -> int:
        """Store atomically (readers see the old state or the whole new file); returns bytes stored."""
        ...

    def get(self, job_id: str, name: str) -> bytes:
        """The plaintext bytes; ResultNotFound or ResultDecryptionError otherwise."""
        ...

    def delete(self, job_id: str) -> int:
        """Erase every artifact of a job; returns how many were removed (0 is fine)."""
        ...

    def job_ids(self) -> Iterator[str]:
        """Every job that has anything stored (for the orphan sweep)."""
        ...

    def sweep_partial(self) -> int:
        """Remove leftovers of interrupted writes; returns how many were removed."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable when the store cannot take writes now (for /readyz)."""
        ...

    def download_url(self, job_id: str, name: str) -> str | None:
        """A short-lived URL that serves the artifact without this server, or None (download through us)."""
        ...


def key_id(key: bytes) -> bytes:
    """A short public fingerprint of a key (a one-way hash: it reveals nothing of the key)."""
    return hashlib.sha256(b"lift3d-result-key-id\0" + key).digest()[:KEY_ID_BYTES]


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EncryptionKeyError("an encryption key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise EncryptionKeyError(f"an encryption key must be {KEY_BYTES} bytes (AES-256), got {len(key)}")
    return key


def generate_key_text() -> str:
    """A new key in the form settings expect (``LIFT3D_ENCRYPTION_KEYS``)."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


class KeyRing:
    """The first key encrypts; every key decrypts, found by the key id in the file header."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise EncryptionKeyError("at least one encryption key is needed")
        self.primary = keys[0]
        self._by_id: dict[bytes, bytes] = {}
        for key in keys:
            self._by_id.setdefault(key_id(key), key)

    def for_id(self, kid: bytes) -> bytes | None:
        return self._by_id.get(kid)

    @classmethod
    def from_settings(cls, settings: StorageSettings, live_jobs: Collection[str] | None = None) -> "KeyRing":
        """Configured keys, else the generated key file in the data dir (created on first use).

        A generated key file also stays a decryption key after keys are configured,
        so results written before the operator set a key remain readable until they expire.
        With ``live_jobs`` given (the server's start), raises EncryptionKeyMissing before
        any key is generated when results of those jobs name a key id none of these keys has.
        """
        if live_jobs is not None:
            check_keys_open(settings.data_path / RESULTS_DIRNAME, live_jobs, cls.existing_keys(settings))
        return cls.without_check(settings)

    @classmethod
    def without_check(cls, settings: StorageSettings) -> "KeyRing":
        """The ring of :meth:`from_settings`, for a caller that checked the stored key ids itself."""
        keys = cls.existing_keys(settings)
        if settings.encryption_keys:
            return cls(keys)
        return cls([_load_or_generate_key(settings.data_path / GENERATED_KEY_FILENAME)])

    @staticmethod
    def existing_keys(settings: StorageSettings) -> list[bytes]:
        """The configured keys, then the data dir's generated key where one exists (never creates it)."""
        generated = settings.data_path / GENERATED_KEY_FILENAME
        keys = [decode_key(text) for text in settings.encryption_keys]
        return keys + ([decode_key(generated.read_text())] if generated.exists() else [])


def check_keys_open(root: Path, live_jobs: Collection[str], keys: list[bytes]) -> None:
    """EncryptionKeyMissing, naming the key ids, when a live job's stored result needs a key we lack."""
    refuse_missing_keys(stored_key_ids(root, live_jobs), keys)


def header_key_id(header: bytes) -> bytes | None:
    """The key id in an encrypted result's header, None when ``header`` is not one."""
    if len(header) == HEADER_BYTES and header.startswith(MAGIC):
        return header[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_ID_BYTES]
    return None


def refuse_missing_keys(found: set[bytes], keys: list[bytes]) -> None:
    """EncryptionKeyMissing naming the key ids in ``found`` that none of ``keys`` has."""
    missing = sorted(found - {key_id(k) for k in keys})
    if missing:
        ids = ", ".join(kid.hex() for kid in missing)
        raise EncryptionKeyMissing(
            f"stored results were encrypted with key id(s) {ids}, which no configured key opens: "
            "add the key(s) to LIFT3D_ENCRYPTION_KEYS (or erase the data directory's results)",
            key_ids=[kid.hex() for kid in missing],
        )


def stored_key_ids(root: Path, live_jobs: Collection[str] | None = None) -> set[bytes]:
    """The key ids in the headers of stored results (of ``live_jobs`` only, when given)."""
    found: set[bytes] = set()
    if not root.is_dir():
        return found
    for folder in root.iterdir():
        if not folder.is_dir() or not _JOB_ID.match(folder.name) or (live_jobs is not None and folder.name not in live_jobs):
            continue
        for path in folder.glob(f"*{ENCRYPTED_SUFFIX}"):
            if path.name.startswith("."):
                continue  # a partial write, swept at start-up
            with path.open("rb") as handle:
                kid = header_key_id(handle.read(HEADER_BYTES))
            if kid is not None:
                found.add(kid)
    return found


_warned_generated_key = False


def _load_or_generate_key(path: Path) -> bytes:
    global _warned_generated_key
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_new_key(path)
    key = decode_key(path.read_text())
    if not _warned_generated_key:
        _warned_generated_key = True
        log.warning(
            "no encryption key configured (LIFT3D_ENCRYPTION_KEYS): results are encrypted with a key "
            "generated in the data directory (%s), which protects nothing if the disk is copied whole; "
            "configure a key from a secret store",
            GENERATED_KEY_FILENAME,
        )
    return key


def _write_new_key(path: Path) -> None:
    """Write a new key file whole or not at all; a concurrent writer's key wins if it came first."""
    for stale in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)  # left by a crash during an earlier generation
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key_text() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces an existing file, unlike rename(): the first key stays.
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def associated_data(job_id: str, name: str) -> bytes:
    return f"lift3d/{job_id}/{name}".encode()


def encrypt(ring: KeyRing, job_id: str, name: str, plaintext: bytes) -> bytes:
    header = MAGIC + bytes([FORMAT_VERSION]) + key_id(ring.primary) + secrets.token_bytes(NONCE_BYTES)
    nonce = header[-NONCE_BYTES:]
    sealed = AESGCM(ring.primary).encrypt(nonce, plaintext, header + associated_data(job_id, name))
    return header + sealed


def decrypt(ring: KeyRing, job_id: str, name: str, blob: bytes) -> bytes:
    if len(blob) < HEADER_BYTES + 16 or not blob.startswith(MAGIC):
        raise ResultDecryptionError(f"stored {name} of job {job_id} is not an encrypted lift3d result")
    if blob[len(MAGIC)] != FORMAT_VERSION:
        raise ResultDecryptionError(f"stored {name} of job {job_id} has unknown format version {blob[len(MAGIC)]}")
    header = blob[:HEADER_BYTES]
    kid = header[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_ID_BYTES]
    key = ring.for_id(kid)
    if key is None:
        raise ResultDecryptionError(
            f"stored {name} of job {job_id} was encrypted with key id {kid.hex()}, which is not configured"
        )
    try:
        return AESGCM(key).decrypt(header[-NONCE_BYTES:], blob[HEADER_BYTES:], header + associated_data(job_id, name))
    except InvalidTag as exc:
        raise ResultDecryptionError(f"stored {name} of job {job_id} failed authentication (tampered or wrong key)") from exc


def check_names(job_id: str, name: str | None = None) -> None:
    if not _JOB_ID.match(job_id):
        raise ResultNotFound("no such result")
    if name is not None and not _ARTIFACT.match(name):
        raise ResultNotFound("no such result")


class EncryptedFileStore:
    """Results as encrypted files under ``<data dir>/results/<job id>/<name>.enc``."""

    def __init__(self, root: Path, ring: KeyRing) -> None:
        self.root = Path(root)
        self.ring = ring
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def from_settings(cls, settings: StorageSettings, live_jobs: Collection[str] | None = None) -> "EncryptedFileStore":
        return cls(settings.data_path / RESULTS_DIRNAME, KeyRing.from_settings(settings, live_jobs))

    def path_for(self, job_id: str, name: str) -> Path:
        check_names(job_id, name)
        return self.root / job_id / (name + ENCRYPTED_SUFFIX)

    def put(self, job_id: str, name: str, data: bytes) -> int:
        target = self.path_for(job_id, name)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        blob = encrypt(self.ring, job_id, name, data)
        # Temp file + rename in the same folder: a crash leaves either nothing or a
        # *.partial that the start-up sweep removes, never a truncated result.
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return len(data)

    def get(self, job_id: str, name: str) -> bytes:
        path = self.path_for(job_id, name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise ResultNotFound("no such result") from exc
        return decrypt(self.ring, job_id, name, blob)

    def delete(self, job_id: str) -> int:
        check_names(job_id)
        folder = self.root / job_id
        if not folder.is_dir():
            return 0
        removed = sum(1 for entry in folder.iterdir() if entry.name.endswith(ENCRYPTED_SUFFIX))
        shutil.rmtree(folder, ignore_errors=True)
        return removed

    def job_ids(self) -> Iterator[str]:
        for entry in self.root.iterdir():
            if entry.is_dir() and _JOB_ID.match(entry.name):
                yield entry.name

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable(f"the results folder {self.root} is gone")

    def download_url(self, job_id: str, name: str) -> str | None:
        return None  # the server streams local results itself

    def sweep_partial(self) -> int:
        """Remove temp files of interrupted writes, stray files and empty job folders."""
        removed = 0
        for entry in list(self.root.iterdir()):
            if not entry.is_dir() or not _JOB_ID.match(entry.name):
                _remove(entry)
                removed += 1
                continue
            for child in list(entry.iterdir()):
                if child.name.startswith(".") or not child.name.endswith(ENCRYPTED_SUFFIX) or not child.is_file():
                    _remove(child)
                    removed += 1
            if not any(entry.iterdir()):
                entry.rmdir()
        return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_result_store(settings: StorageSettings, live_jobs: Collection[str] | None = None) -> ResultStore:
    """The configured result store: encrypted files in the data dir, or an S3-compatible bucket.

    ``live_jobs``: the jobs whose results can still be served; only their key ids must
    be configured (the start-up sweep removes the others' files). Both stores check them
    at start, before a key is generated.
    """
    if settings.results.startswith("s3://"):
        from server.results_s3 import S3ResultStore

        return S3ResultStore.from_settings(settings, live_jobs)
    if settings.results not in ("", "local"):
        from lift3d.errors import ResultStoreConfigError

        raise ResultStoreConfigError(f"LIFT3D_RESULTS must be 'local' or 's3://bucket/prefix', got {settings.results!r}")
    return EncryptedFileStore.from_settings(settings, live_jobs)
