"""Privacy canary: an upload over 1 MiB carrying a unique marker never reaches disk or logs.

The marker rides in the pixels (a row of raw pixel bytes), in the EXIF and PNG
text metadata, and in the multipart filename. The upload goes through success,
a bad option, an in-job failure, a cancel and two deadline paths. Then:

* every file the process opened for writing during the run (seen through a
  Python audit hook, so even a temp file deleted again is caught) lies in the
  data directory, which holds only the job database and encrypted results;
* no file in the temp dir or the data dir contains any marker;
* no captured log line does, nor a client address or the API key;
* every job's in-memory upload has been dropped.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient
from PIL import Image, PngImagePlugin

from lift3d.errors import InputError
from server.app import create_app
from tests.support.servers import BoxFinishStage, TimedStage, fake_engine, make_settings, wait_until

KEY = {"Authorization": "Bearer test-key-1"}
TERMINAL = {"succeeded", "failed", "cancelled"}
FAIL_SEED = 13

_recording: list[str] | None = None
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if _recording is None or event != "open":
        return
    path, mode, flags = (list(args) + [None, None, None])[:3]
    writes = False
    if isinstance(mode, str):
        writes = any(ch in mode for ch in "wax+")
    if isinstance(flags, int):
        writes = writes or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writes and isinstance(path, (str, bytes, os.PathLike)) and not _opened_by_pytest_capture():
        _recording.append(os.fsdecode(path))


def _opened_by_pytest_capture() -> bool:
    """pytest's own fd capture (capfd) opens anonymous temp files; those are the test's, not the server's."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("_pytest", "capture.py")):
            return True
        frame = frame.f_back
    return False


class FailOnSeed:
    """A model stage that fails with a typed input error for one seed (an in-job failure path)."""

    name = "reconstruct"
    progress_weight = 0.05

    def load(self, runtime) -> None:  # noqa: ANN001
        pass

    def run(self, job, ctx) -> None:  # noqa: ANN001
        if job.options.seed == FAIL_SEED:
            raise InputError("the model could not make sense of this image", code="model_input_rejected")


def canary_upload(marker: str) -> tuple[bytes, list[bytes]]:
    """A >1 MiB PNG with the marker in pixels, EXIF and a text chunk; and the byte needles to search for."""
    rng = np.random.default_rng(uuid.UUID(marker[-32:]).int % 2**32)
    pixels = rng.integers(0, 256, size=(720, 720, 3), dtype=np.uint8)
    row = np.frombuffer((marker.encode() * 200)[: 720 * 3], dtype=np.uint8).reshape(720, 3)
    pixels[360] = row
    exif = Image.Exif()
    exif[0x010E] = marker  # ImageDescription
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", marker)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif, pnginfo=text, compress_level=1)
    data = buffer.getvalue()
    assert len(data) > 1024 * 1024
    middle = len(data) // 2
    needles = [
        marker.encode(),
        row.tobytes()[:96],  # the raw pixel row, as any decoded dump would hold it
        data[middle : middle + 64],
        data[len(data) // 4 : len(data) // 4 + 64],
        data[-4096:-4032],
    ]
    return data, needles


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            hits.extend(f"{path}: needle {i}" for i, needle in enumerate(needles) if needle in content)
    return hits


@pytest.fixture()
def recorded_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    global _recording, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # process-wide and permanent; it only records while _recording is set
        _hook_installed = True
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    _recording = []
    try:
        yield temp, _recording
    finally:
        _recording = None


def test_upload_marker_never_reaches_disk_or_logs(
    tmp_path: Path, recorded_writes, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    temp_dir, writes = recorded_writes
    marker = f"CANARY{uuid.uuid4().hex}"
    data, needles = canary_upload(marker)
    capfd.readouterr()  # what building the canary printed is the test's, not the server's
    caplog.set_level(logging.DEBUG)
    filename = f"{marker}.png"
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, server__job_deadline_seconds=2.5, server__queue_size=4)
    gate = threading.Event()
    gate.set()
    engine = fake_engine(settings, TimedStage(0.01, gate=gate), FailOnSeed(), BoxFinishStage())
    app = create_app(settings, engine)
    manager = app.state.services.manager
    live_jobs = []

    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 30)

        def submit(**fields: str):  # noqa: ANN202
            response = client.post(
                "/v1/jobs", files={"image": (filename, data, "image/png")}, data=fields, headers=KEY
            )
            if response.status_code == 202:
                live = manager.live(response.json()["id"])
                if live is not None:
                    live_jobs.append(live)
            return response

        def final(job_id: str) -> dict:
            return wait_until(
                lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=KEY).json())["status"] in TERMINAL and j, 30
            )

        # success (with views.png, the one intermediate that may be kept, encrypted)
        ok = submit(steps="2", return_views="true")
        assert ok.status_code == 202, ok.text
        assert final(ok.json()["id"])["status"] == "succeeded"
        assert client.get(f"/v1/jobs/{ok.json()['id']}/model.glb", headers=KEY).status_code == 200

        # failure at submit: a bad option
        bad = submit(steps="9999")
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_steps")

        # failure inside the job
        failed = submit(steps="2", seed=str(FAIL_SEED))
        assert final(failed.json()["id"])["error"]["code"] == "model_input_rejected"

        # cancel while running
        gate.clear()
        cancelled = submit(steps="5")
        cancelled_id = cancelled.json()["id"]
        wait_until(lambda: client.get(f"/v1/jobs/{cancelled_id}", headers=KEY).json()["status"] == "running")
        assert client.delete(f"/v1/jobs/{cancelled_id}", headers=KEY).status_code == 204

        # deadline: one job runs past it, one waits in the queue past it
        running_late = submit(steps="5")
        queued_late = submit(steps="5")
        for response in (running_late, queued_late):
            job = final(response.json()["id"])
            assert (job["status"], job["error"]["code"]) == ("failed", "deadline_exceeded")
        gate.set()

        assert len(live_jobs) == 5
        wait_until(lambda: all(job.image is None for job in live_jobs))
        assert all(manager.live(job.id) is None for job in live_jobs)

    # Everything written went to the data dir: the job database and encrypted results only.
    data_root = str(data_dir.resolve())
    assert writes, "the audit hook saw no writes at all; it is not working"
    for path in writes:
        resolved = str(Path(path).resolve())
        assert resolved.startswith(data_root), f"wrote outside the data dir: {path}"
        name = Path(resolved).name
        assert name.endswith((".enc", ".partial", ".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal", ".key", "api_key", "lift3d.lock")), path
    assert list(temp_dir.iterdir()) == []
    assert files_containing(temp_dir, needles) == []
    assert files_containing(data_dir, needles) == []

    out, err = capfd.readouterr()
    logs = "\n".join(record.getMessage() for record in caplog.records) + out + err
    assert "job " in logs  # the logs did see the jobs (ids, sizes, timings)
    for text in (marker, filename, "testclient", "test-key-1"):
        assert text not in logs, text
