"""Benchmark ``engine.cpu_threads``: the host lane's CPU work at 1, 2, … threads, on an idle and a busy machine.

Each configuration runs in a fresh interpreter with ``LIFT3D_CPU_THREADS`` set, so the
OpenMP/BLAS environment is in place before torch and numpy load, as the CLI does. A job
is the real CPU stages (decode, background removal, finishing 300k -> 50k faces with a
1024² texture) around an instant stand-in device stage (benchmarks/bench_lanes.py).
"Busy" adds one process spinning on the CPU for the whole measurement: the HTTP edge,
another lane or a neighbour on a shared machine.

    python -m benchmarks.bench_threads [--threads 1,2] [--jobs 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import capture_environment, load_average, results_stem, utc_now, write_results  # noqa: E402
from lift3d.process import THREAD_ENV_VARS  # noqa: E402


def child(jobs: int, faces: int) -> None:
    """In the fresh interpreter: per-job host seconds, printed as JSON on the last line."""
    import torch

    from benchmarks import bench_lanes
    from benchmarks.bench_finish import marching_cubes_mesh
    from benchmarks.common import default_images_dir, list_images
    from lift3d.process import apply_cpu_threads, resolve_cpu_threads
    from lift3d.settings import load_settings
    from pipeline.lanes import HOST
    from pipeline.options import JobOptions

    threads = resolve_cpu_threads(load_settings().engine.cpu_threads)
    apply_cpu_threads(threads)
    weights = bench_lanes.TEST_WEIGHTS if (bench_lanes.TEST_WEIGHTS / "rembg" / "u2netp.onnx").is_file() else None
    engine, segmenter = bench_lanes.build_engine(0.0, 1, marching_cubes_mesh(faces), weights)
    photos = [path.read_bytes() for path in list_images(default_images_dir(), jobs)]
    options = JobOptions(seed=0, remove_background="on")
    bench_lanes.run_jobs(engine, photos[:1], options, overlap=False)  # warm-up
    recorder, _, _ = bench_lanes.run_jobs(engine, photos, options, overlap=False)
    seconds = []
    for index in sorted(recorder.ended):
        seconds.append(sum(p[3] - p[2] for p in recorder.parts if p[0] == index and p[1] == HOST))
    print(json.dumps({"threads": threads, "torch_threads": torch.get_num_threads(), "segmenter": segmenter, "seconds": seconds}))


def spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def measure(threads: int, busy: bool, jobs: int, faces: int) -> dict[str, Any]:
    burner = None
    if busy:
        burner = multiprocessing.get_context("spawn").Process(target=spin, args=(time.monotonic() + 600,), daemon=True)
        burner.start()
    try:
        # As the CLI does: the OpenMP/BLAS variables are in place before the child imports torch.
        env = {**os.environ, "LIFT3D_CPU_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        env.update({name: str(threads) for name in THREAD_ENV_VARS})
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_threads", "--child", "--jobs", str(jobs), "--faces", str(faces)],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
        )
        wall = time.perf_counter() - started
    finally:
        if burner is not None:
            burner.terminate()
            burner.join()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "busy": busy, "median_s": statistics.median(result["seconds"]), "process_wall_s": wall}


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# CPU threads benchmark (host-lane work per job)",
        "",
        f"- date: {env['date_utc']}",
        f"- commit: {env['git']['commit']} (branch {env['git']['branch']}, dirty: {env['git']['dirty']})",
        f"- device: {env['device']['name']} ({env['device']['cpu_count']} cores)",
        f"- command: `{env['command']}`",
        f"- load average before / after: {payload['load_average_before']} / {payload['load_average_after']} "
        "(a shared machine: \"idle\" means no burner of ours, not an idle machine)",
        f"- a job: decode, background ({payload['rows'][0]['segmenter']}), finish ({payload['faces']} faces -> 50000, 1024² texture); "
        f"{payload['jobs']} jobs after one warm-up, median",
        "",
        "| threads | machine | median s per job | jobs (s) |",
        "|---|---|---|---|",
    ]
    for row in payload["rows"]:
        machine = "busy (one spinning process)" if row["busy"] else "idle"
        lines.append(f"| {row['threads']} | {machine} | {row['median_s']:.3f} | {', '.join(f'{s:.2f}' for s in row['seconds'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--faces", type=int, default=300_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        child(args.jobs, args.faces)
        return
    before = load_average()
    rows = []
    for busy in (False, True):
        for threads in [int(t) for t in args.threads.split(",")]:
            rows.append(measure(threads, busy, args.jobs, args.faces))
            print(rows[-1], flush=True)
    payload = {
        "kind": "threads",
        "environment": capture_environment(sys.argv, "cpu"),
        "load_average_before": before,
        "load_average_after": load_average(),
        "jobs": args.jobs,
        "faces": args.faces,
        "rows": rows,
    }
    text = markdown(payload)
    print(text)
    if args.write:
        stem = results_stem("threads", "standin", "cpu", smoke=False, when=utc_now())
        for path in write_results(payload, text, REPO / "benchmarks" / "results", stem):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
