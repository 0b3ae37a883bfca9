"""bench_lanes at toy sizes: serial and overlapped side by side, the fields the results file
promises, and overlap winning when the stand-in device time exceeds the CPU time."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench_lanes
from pipeline.engine import warmup_image_png


def test_bench_lanes_smoke_overlaps_and_writes_its_results(tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for index in range(2):
        (photos / f"disc-{index}.png").write_bytes(warmup_image_png(256 + 64 * index))
    payload = bench_lanes.main(
        [
            "--jobs", "3", "--faces", "6000", "--target-faces", "1000", "--texture-size", "512",
            "--device-steps", "4", "--device-factor", "1.5", "--images", str(photos),
            "--weights-dir", str(tmp_path / "no-weights"),  # the border-colour segmenter: fast
            "--write", "--smoke", "--out", str(out),
        ]
    )
    serial, overlapped = payload["serial"], payload["overlapped"]
    assert serial["failed"] == {} and overlapped["failed"] == {}
    assert payload["device_seconds"] >= max(payload["cpu_seconds_by_job"])
    # Serially the device waits for every job's CPU work; overlapped it does not.
    assert overlapped["jobs_per_min"] > serial["jobs_per_min"]
    assert overlapped["device_busy_fraction"] > serial["device_busy_fraction"]
    assert 0 < serial["device_busy_fraction"] <= 1.0 + 1e-6 and 0 < overlapped["device_busy_fraction"] <= 1.0 + 1e-6
    # The serial busy fraction follows from the measured parts: device / (device + host) per job.
    host, device = serial["host_s_per_job"]["median"], payload["device_seconds"]
    assert abs(serial["device_busy_fraction"] - device / (device + host)) < 0.15
    files = sorted(path.name for path in out.iterdir())
    assert len(files) == 2 and all(name.startswith("smoke-lanes-standin-cpu-") for name in files)
    written = json.loads((out / files[0]).read_text())
    assert written["environment"]["git"]["commit"] and written["environment"]["command"]
    assert {"date_utc", "device"} <= set(written["environment"])
    assert "| overlapped |" in (out / files[1]).read_text()
