"""Benchmark the finishing stage on CPU: a 300k-face marching-cubes mesh to 50k faces, 1024² texture.

Prints seconds per sub-step (clean, decimate, unwrap, bake, export) and writes
``benchmarks/results/finish.md``. The colour field is analytic, so ``bake`` measures
the rasteriser, the padding and the field query's plumbing, not a network's MLP.

    python benchmarks/bench_finish.py [--repeats 3] [--faces 300000] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mcubes
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_model, load_average  # noqa: E402
from pipeline.finish import SUB_STEPS, FinishOptions, finish_mesh  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "finish.md"


def blob_field(resolution: int) -> np.ndarray:
    """A lumpy sphere: smooth but not trivially simple, like a reconstructed object."""
    axis = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(x * x + y * y + z * z)
    return 0.62 - radius + 0.07 * np.sin(7 * x) * np.sin(5 * y) * np.cos(6 * z)


def marching_cubes_mesh(target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick the grid resolution whose marching-cubes surface has about ``target_faces`` faces."""
    resolution = int(round(290 * (target_faces / 300_000) ** 0.5))
    vertices, faces = mcubes.marching_cubes(blob_field(resolution), 0.0)
    vertices = vertices / (resolution - 1) * 2.0 - 1.0
    return vertices.astype(np.float32), faces.astype(np.int64)


def colour_field(points: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + 0.45 * np.sin(np.stack([3 * points[:, 0], 4 * points[:, 1], 5 * points[:, 2]], 1)), 0, 1).astype(np.float32)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=300_000, help="faces of the input mesh (approximate)")
    parser.add_argument("--target-faces", type=int, default=50_000)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--charts", choices=["box", "xatlas"], default="box")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.relative_to(REPO)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vertices, faces = marching_cubes_mesh(args.faces)
    options = FinishOptions(target_faces=args.target_faces, texture_size=args.texture_size, charts=args.charts)
    print(f"input: {len(vertices)} vertices, {len(faces)} faces; load average before: {load_average()}")
    finish_mesh(vertices, faces, colour_field, options)  # warm caches and lazy imports
    runs, cpu_runs = [], []
    for repeat in range(args.repeats):
        cpu: dict[str, float] = {}
        mark = [time.process_time()]

        def on_step(step: int, total: int, name: str) -> None:
            now = time.process_time()
            cpu[name], mark[0] = now - mark[0], now

        started, cpu_started = time.perf_counter(), time.process_time()
        result = finish_mesh(vertices, faces, colour_field, options, on_step=on_step)
        runs.append({**result.timings, "total": time.perf_counter() - started})
        cpu_runs.append({**cpu, "total": time.process_time() - cpu_started})
        print(f"run {repeat + 1} wall: " + ", ".join(f"{k} {v:.3f}s" for k, v in runs[-1].items()))
        print(f"run {repeat + 1} cpu:  " + ", ".join(f"{k} {v:.3f}s" for k, v in cpu_runs[-1].items()))
    columns = [*SUB_STEPS, "total"]
    median = {name: statistics.median(run[name] for run in runs) for name in columns}
    best = {name: min(run[name] for run in runs) for name in columns}
    cpu_median = {name: statistics.median(run[name] for run in cpu_runs) for name in columns}
    print("median wall: " + ", ".join(f"{k} {v:.3f}s" for k, v in median.items()))
    print("median cpu:  " + ", ".join(f"{k} {v:.3f}s" for k, v in cpu_median.items()))
    print(f"output: {result.qa['faces']} faces, {result.qa['uv_charts']} charts, {result.qa['bytes']} bytes")
    if args.write:
        write_results(args, vertices, faces, runs, median, best, cpu_median, result.qa)


def write_results(args, vertices, faces, runs, median, best, cpu_median, qa) -> None:  # noqa: ANN001
    """Write (or replace) this configuration's section of the results file, keeping the others."""
    command = "python benchmarks/bench_finish.py " + " ".join(sys.argv[1:])
    columns = [*SUB_STEPS, "total"]
    title = f"## torch threads {args.threads}, charts {args.charts}"
    section = [
        title,
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- commit: {git_commit()}",
        f"- machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores visible",
        f"- load average after the runs: {load_average()} (the machine is shared with other engineers' jobs; "
        "timings are noisy and pessimistic)",
        f"- command: `{command}`",
        f"- input: marching-cubes lumpy sphere, {len(vertices)} vertices, {len(faces)} faces",
        f"- output: {qa['faces']} faces, {qa['vertices']} vertices, {qa['uv_charts']} UV charts ({qa['uv_chart_method']}), "
        f"{args.texture_size}² texture, {qa['bytes']} bytes",
        "",
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for index, run in enumerate(runs, 1):
        section.append(f"| {index} | " + " | ".join(f"{run[name]:.3f}" for name in columns) + " |")
    section.append("| median | " + " | ".join(f"{median[name]:.3f}" for name in columns) + " |")
    section.append("| best | " + " | ".join(f"{best[name]:.3f}" for name in columns) + " |")
    section.append("| median CPU time | " + " | ".join(f"{cpu_median[name]:.3f}" for name in columns) + " |")
    header = [
        "# Finishing benchmark (CPU)",
        "",
        "Seconds per sub-step (wall clock) for one finishing job. \"median CPU time\" is this",
        "process's CPU seconds over all its threads, which the other jobs on the shared machine",
        "inflate far less than wall time; on an idle machine with one torch thread, wall time is",
        "close to it. The colour field is analytic, so `bake` excludes a network's colour MLP.",
        "",
    ]
    sections: dict[str, list[str]] = {}
    if RESULTS.exists():
        current: list[str] | None = None
        for line in RESULTS.read_text().splitlines():
            if line.startswith("## "):
                current = sections.setdefault(line, [])
            if current is not None:
                current.append(line)
    sections[title] = section + [""]
    # Every section ends in exactly one blank line, wherever the sort puts it (the file's
    # last section was read back without one).
    body = [line for key in sorted(sections) for line in [*"\n".join(sections[key]).rstrip().splitlines(), ""]]
    RESULTS.write_text("\n".join(header + body).rstrip() + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
