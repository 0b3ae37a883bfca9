"""The upload's bytes and pixels do not outlive the job in the server's memory (issue 13, class 4).

A subprocess server (fake model stages, the real decode) gets images that each carry
two unique markers: bytes after the PNG's IEND chunk (the decoder ignores them, so
they exist only in copies of the upload) and a row of random pixels (which exist
only in decoded bitmaps, as RGB or as Pillow's 4-byte RGBX/RGBA). After every job
has ended, on each path (success, deadline, cancel, refusal after the body, 429
before it), ``/proc/<pid>/mem`` is scanned for them. docs/security.md records the
counts before and after the buffers were overwritten.
"""

from __future__ import annotations

import io
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.memory_scan import can_read_memory, count_markers
from tests.support.servers import free_port, small_png, fake_server_env, start_fake_server, stop_server, wait_for_http, wait_until

KEY = "memory-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
ENDED = {"succeeded", "failed", "cancelled", "expired"}


class MarkedImage:
    """A PNG with a trailing-bytes marker and a random-pixel marker."""

    def __init__(self, size: int = 128) -> None:
        rng = np.random.default_rng(uuid.uuid4().int % 2**32)
        pixels = np.full((size, size, 3), 250, dtype=np.uint8)
        pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (200, 80, 40)
        self.row = rng.integers(0, 256, size=(24, 3), dtype=np.uint8)
        pixels[size // 2, 10 : 10 + len(self.row)] = self.row
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        self.trailer = f"lift3d-upload-marker-{uuid.uuid4().hex}".encode()
        self.data = buffer.getvalue() + self.trailer

    @property
    def pixel_needles(self) -> list[bytes]:
        packed = self.row.tobytes()
        padded = [np.concatenate([self.row, np.full((len(self.row), 1), pad, np.uint8)], axis=1).tobytes() for pad in (0, 255)]
        return [packed, *padded]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str]]:
    tmp = tmp_path_factory.mktemp("memory")
    port = free_port()
    env = fake_server_env(
        KEY,
        tmp / "data",
        port,
        {
            "LIFT3D_QUEUE_SIZE": "1",
            "LIFT3D_JOB_DEADLINE_SECONDS": "4",
            "LIFT3D_SHUTDOWN_GRACE_SECONDS": "1",
        },
    )
    process = start_fake_server(tmp / "server.log", env, "--seconds-per-step", "0.05")
    try:
        wait_for_http(f"http://127.0.0.1:{port}", "/readyz", timeout=90, process=process)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def _status(client: httpx.Client, job_id: str) -> str:
    response = client.get(f"/v1/jobs/{job_id}")
    return "cancelled" if response.status_code == 404 else response.json()["status"]


def run_every_path(client: httpx.Client) -> dict[str, MarkedImage]:
    images = {name: MarkedImage() for name in ("success", "deadline", "cancel", "refused_after_body", "queue_full_429")}
    done = client.post("/v1/jobs?steps=1", content=images["success"].data)
    assert done.status_code == 202, done.text
    wait_until(lambda: _status(client, done.json()["id"]) == "succeeded", 30)

    late = client.post("/v1/jobs?steps=200", content=images["deadline"].data).json()["id"]
    wait_until(lambda: _status(client, late) == "failed", 30)

    cancelled = client.post("/v1/jobs?steps=200", content=images["cancel"].data).json()["id"]
    wait_until(lambda: _status(client, cancelled) == "running", 30)
    assert client.delete(f"/v1/jobs/{cancelled}").status_code == 204

    refused = client.post("/v1/jobs?steps=99999", content=images["refused_after_body"].data)
    assert refused.status_code == 422

    running = client.post("/v1/jobs?steps=200", content=small_png()).json()["id"]
    wait_until(lambda: _status(client, running) == "running", 30)
    queued = client.post("/v1/jobs?steps=200", content=small_png()).json()["id"]
    full = client.post("/v1/jobs?steps=1", content=images["queue_full_429"].data)
    assert full.status_code == 429
    for job_id in (running, queued):
        client.delete(f"/v1/jobs/{job_id}")
    wait_until(lambda: all(_status(client, j) in ENDED for j in (running, queued)), 30)
    return images


def test_no_copy_of_the_upload_or_its_pixels_outlives_the_job(server: tuple[subprocess.Popen, str]) -> None:
    process, base_url = server
    if not can_read_memory(process.pid):
        pytest.skip("this user cannot read the server's /proc/<pid>/mem (PR_SET_DUMPABLE 0 leaves that to root)")
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=30) as client:
        images = run_every_path(client)
    time.sleep(1.0)
    trailers = count_markers(process.pid, [image.trailer for image in images.values()])
    pixels = count_markers(process.pid, [needle for image in images.values() for needle in image.pixel_needles])
    report = {
        name: {
            "upload": trailers[image.trailer],
            "pixels": sum(pixels[needle] for needle in image.pixel_needles),
        }
        for name, image in images.items()
    }
    print(f"\nmarker copies after the jobs ended: {report}")
    for name, counts in report.items():
        # Decoded bitmaps are all ours: none may survive (before the fix: 4 after a cancel).
        assert counts["pixels"] == 0, (name, report)
        # The upload's own buffer is zeroed; what is left are the HTTP stack's immutable chunk
        # copies (asyncio reads, h11's buffer, uvicorn's body chunks), freed but not zeroed.
        assert counts["upload"] <= HTTP_STACK_COPIES, (name, report)


def test_the_server_can_never_write_a_core_file(server: tuple[subprocess.Popen, str]) -> None:
    process, _ = server
    limits = Path(f"/proc/{process.pid}/limits").read_text()
    core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
    assert core.split()[4:6] == ["0", "0"], core  # soft and hard RLIMIT_CORE (PR_SET_DUMPABLE: tests/lift3d)


# Copies of one small upload the HTTP stack may leave in freed memory (measured 0-5; docs/security.md).
HTTP_STACK_COPIES = 6
