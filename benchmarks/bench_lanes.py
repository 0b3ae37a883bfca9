"""Benchmark the two lanes on a CPU: serial vs overlapped jobs, side by side in one run.

The real CPU stages (decode, background removal, finishing a 300k-face mesh to 50k
faces with a 1024² texture) run around a stand-in for the device stages: a sleep of
``--device-seconds`` per job in ``--device-steps`` steps (each step takes the GIL to
"launch", then waits without it, as a CUDA synchronise does), which hands the finishing
stage a marching-cubes mesh and an analytic colour field.

The stand-in's device time is known exactly (the sum of its sleeps), so the device-busy
fraction is that time over the wall time the device lane was needed; any gap (the
device waiting for a prepared job, or for the GIL between two steps) lowers it.

    python -m benchmarks.bench_lanes [--jobs 6] [--device-seconds auto] [--write]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_finish import colour_field, marching_cubes_mesh  # noqa: E402
from benchmarks.common import (  # noqa: E402
    capture_environment,
    default_images_dir,
    list_images,
    load_average,
    results_stem,
    utc_now,
    write_results,
)
from lift3d.settings import EngineSettings  # noqa: E402
from pipeline.background import BackgroundStage, BorderColourSegmenter  # noqa: E402
from pipeline.decode import DecodeStage  # noqa: E402
from pipeline.engine import Engine, warmup_image_png  # noqa: E402
from pipeline.events import CancelToken  # noqa: E402
from pipeline.finish import FinishStage  # noqa: E402
from pipeline.lanes import DEVICE, HOST, LaneJob, Lanes  # noqa: E402
from pipeline.options import JobOptions  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.stage import StageContext  # noqa: E402
from pipeline.state import JobState, ReconstructedMesh  # noqa: E402

TEST_WEIGHTS = REPO / ".cache" / "test" / "weights"


class StandInDeviceStage:
    """The device stages' stand-in: ``seconds`` of GIL-free waiting in ``steps`` steps, then a mesh."""

    name: ClassVar[str] = "device"
    progress_weight: ClassVar[float] = 1.0
    lane: ClassVar[str] = DEVICE
    reads: ClassVar[frozenset[str]] = frozenset({"cutout"})
    writes: ClassVar[frozenset[str]] = frozenset({"views", "mesh", "metadata"})

    def __init__(self, seconds: float, steps: int, mesh: tuple[np.ndarray, np.ndarray]) -> None:
        self.seconds = seconds
        self.steps = max(1, steps)
        self.vertices, self.faces = mesh

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        for step in range(self.steps):
            time.sleep(self.seconds / self.steps)  # the GIL is released while the "GPU" works
            ctx.report(step + 1, self.steps, "stand-in step")
        job.views = job.cutout
        job.mesh = ReconstructedMesh(self.vertices, self.faces, np.zeros_like(self.vertices), colour_field)
        job.metadata["device"] = {"stand_in_seconds": self.seconds, "steps": self.steps}


def build_engine(device_seconds: float, steps: int, mesh: tuple[np.ndarray, np.ndarray], weights_dir: Path | None) -> tuple[Engine, str]:
    settings = EngineSettings(device="cpu", weights="tiny", weights_dir=str(weights_dir or "/nonexistent"))
    background = BackgroundStage(None if weights_dir else BorderColourSegmenter())
    engine = Engine(settings, [DecodeStage(), background, StandInDeviceStage(device_seconds, steps, mesh), FinishStage()])
    engine.load()
    segmenter = getattr(background, "_segmenter", None)
    return engine, getattr(segmenter, "name", "unknown")


class Recorder:
    """Start and end of every part of every job, and when each job ended."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, str, float, float]] = []
        self.ended: dict[int, float] = {}
        self.errors: dict[int, str] = {}
        self._lock = threading.Lock()

    def part(self, index: int, lane: str, body):  # noqa: ANN001, ANN201
        def timed() -> None:
            started = time.perf_counter()
            try:
                body()
            finally:
                with self._lock:
                    self.parts.append((index, lane, started, time.perf_counter()))

        return timed


def run_jobs(engine: Engine, photos: list[bytes], options: JobOptions, *, overlap: bool) -> tuple[Recorder, float, float]:
    """All photos through the lanes as the server's worker drives them; (recorder, first take, last end)."""
    cond = threading.Condition()
    queue = collections.deque(enumerate(photos))
    recorder = Recorder()
    first_take: list[float] = []

    def take():  # noqa: ANN202
        if not queue:
            return None
        first_take[:] = first_take or [time.perf_counter()]
        return queue.popleft()

    def build(item) -> LaneJob:  # noqa: ANN001
        index, photo = item
        run = engine.begin(photo, options, cancel=CancelToken())

        def done(error: BaseException | None) -> None:
            try:
                if error is None:
                    run.result()
                else:
                    recorder.errors[index] = f"{type(error).__name__}: {error}"
            finally:
                run.close()
                with cond:
                    recorder.ended[index] = time.perf_counter()
                    cond.notify_all()

        parts = [(lane, recorder.part(index, lane, body)) for lane, body in run.lane_parts()]
        return LaneJob(parts, done, name=str(index))

    lanes = Lanes(cond, take, build, lambda: len(recorder.ended) == len(photos), overlap=overlap)
    lanes.run()
    return recorder, first_take[0], max(recorder.ended.values())


def summarise(recorder: Recorder, start: float, end: float, jobs: int, device_seconds: float) -> dict[str, Any]:
    device = sorted((p for p in recorder.parts if p[1] == DEVICE), key=lambda p: p[2])
    host_by_job: dict[int, float] = collections.defaultdict(float)
    for index, lane, began, finished in recorder.parts:
        if lane == HOST:
            host_by_job[index] += finished - began
    device_time = jobs * device_seconds  # exact: the stand-in's sleeps
    steady_span = device[-1][3] - device[0][2]
    # Jobs per minute from the interval between device starts: D + C serially, max(D, C) overlapped,
    # free of the first job's fill and the last one's drain.
    interval = (device[-1][2] - device[0][2]) / (len(device) - 1) if len(device) > 1 else end - start
    return {
        "jobs": jobs,
        "failed": dict(recorder.errors),
        "wall_s": end - start,
        "host_s_per_job": {"median": statistics.median(host_by_job.values()), "max": max(host_by_job.values())},
        "device_part_s_per_job": {"median": statistics.median(p[3] - p[2] for p in device)},
        "device_busy_fraction": device_time / steady_span,
        "device_busy_fraction_overall": device_time / (end - start),
        "jobs_per_min": 60.0 / interval,
        "jobs_per_min_overall": 60.0 * jobs / (end - start),
    }


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Lanes benchmark (CPU, stand-in device stage)",
        "",
        f"- date: {env['date_utc']}",
        f"- commit: {env['git']['commit']} (branch {env['git']['branch']}, dirty: {env['git']['dirty']})",
        f"- device: {env['device']['name']} ({env['device']['cpu_count']} cores), torch threads {env['device']['torch_threads']}",
        f"- command: `{env['command']}`",
        f"- load average before / after: {payload['load_average_before']} / {payload['load_average_after']} "
        "(a shared machine: other work inflates the CPU stages)",
        f"- jobs per mode: {payload['jobs']}; photos: {', '.join(payload['photos'])}; segmenter: {payload['segmenter']}",
        f"- real CPU stages: decode, background, finish ({payload['mesh_faces']} faces -> {payload['options']['target_faces']}, "
        f"{payload['options']['texture_size']}² texture)",
        f"- stand-in device stage: {payload['device_seconds']:.3f} s per job in {payload['device_steps']} steps "
        f"({payload['device_seconds_rule']})",
        f"- CPU time per job (host parts, measured serially with no device time, mean): {payload['cpu_seconds_per_job']:.3f} s; "
        f"expected jobs/min = 60 / max(device, CPU) = {payload['expected_jobs_per_min']:.1f}",
        "",
        "| mode | wall s | host s/job (median) | device part s/job (median) | device busy | busy, incl. fill and drain | jobs/min | vs expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("serial", "overlapped"):
        row = payload[mode]
        lines.append(
            f"| {mode} | {row['wall_s']:.2f} | {row['host_s_per_job']['median']:.3f} | {row['device_part_s_per_job']['median']:.3f} "
            f"| {row['device_busy_fraction']:.1%} | {row['device_busy_fraction_overall']:.1%} | {row['jobs_per_min']:.1f} "
            f"| {row['jobs_per_min'] / payload['expected_jobs_per_min']:.1%} |"
        )
    lines += [
        "",
        f"Overlapped / serial jobs per minute: {payload['speedup']:.2f}x.",
        "",
        "\"device busy\" is the stand-in's device time over the span from the first device part's start to the",
        "last one's end (the queue is full then); \"incl. fill and drain\" divides by the whole run instead.",
        "\"jobs/min\" is 60 / the mean interval between two jobs' device starts. See docs/benchmarks.md.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per mode")
    parser.add_argument("--device-seconds", default="auto", help="stand-in device time per job, or auto (--device-factor x CPU time)")
    parser.add_argument("--device-factor", type=float, default=1.25)
    parser.add_argument("--device-steps", type=int, default=28, help="stand-in steps (denoising steps)")
    parser.add_argument("--faces", type=int, default=300_000)
    parser.add_argument("--target-faces", type=int, default=50_000)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default ../shared/images)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="a weights dir with rembg/u2netp.onnx (default: the test cache's, else the heuristic)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/lanes-…{json,md}")
    parser.add_argument("--smoke", action="store_true", help="name results smoke-… (git ignores them)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    load_before = load_average()
    weights_dir = args.weights_dir
    if weights_dir is None and (TEST_WEIGHTS / "rembg" / "u2netp.onnx").is_file():
        weights_dir = TEST_WEIGHTS
    folder = args.images or default_images_dir()
    if folder.is_dir():
        paths = list_images(folder, args.jobs)
        photos, names = [p.read_bytes() for p in paths], [p.name for p in paths]
    else:
        photos, names = [warmup_image_png(512)] * args.jobs, ["synthetic disc"] * args.jobs
    mesh = marching_cubes_mesh(args.faces)
    options = JobOptions(seed=0, target_faces=args.target_faces, texture_size=args.texture_size, remove_background="on")

    # CPU time per job: the host parts of every photo, run serially with no device time, after a
    # warm-up job (the segmenter's first run allocates). The same engine runs both modes after.
    engine, segmenter = build_engine(0.0, args.device_steps, mesh, weights_dir)
    stand_in = next(stage for stage in engine.stages if isinstance(stage, StandInDeviceStage))
    run_jobs(engine, photos[:1], options, overlap=False)
    probed, _, _ = run_jobs(engine, photos, options, overlap=False)
    host_seconds = [sum(p[3] - p[2] for p in probed.parts if p[0] == index and p[1] == HOST) for index in probed.ended]
    cpu_seconds = statistics.mean(host_seconds)
    if args.device_seconds == "auto":
        # The slowest photo's CPU time, with a margin: the device time is then >= the CPU time of every job.
        device_seconds, rule = args.device_factor * max(host_seconds), f"{args.device_factor:g} x the slowest job's measured CPU time"
    else:
        device_seconds, rule = float(args.device_seconds), "given"
    stand_in.seconds = device_seconds

    results = {}
    for mode, overlap in (("serial", False), ("overlapped", True)):
        recorder, start, end = run_jobs(engine, photos, options, overlap=overlap)
        results[mode] = summarise(recorder, start, end, len(photos), device_seconds)
        print(mode, {k: v for k, v in results[mode].items() if k != "failed"}, flush=True)
    expected = 60.0 / max(device_seconds, cpu_seconds)
    payload = {
        "kind": "lanes",
        "environment": capture_environment(sys.argv if argv is None else ["-m", "benchmarks.bench_lanes", *argv], "cpu"),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "jobs": len(photos),
        "photos": sorted(set(names)),
        "segmenter": segmenter,
        "mesh_faces": int(len(mesh[1])),
        "options": {"target_faces": args.target_faces, "texture_size": args.texture_size},
        "device_seconds": device_seconds,
        "device_seconds_rule": rule,
        "device_steps": args.device_steps,
        "cpu_seconds_per_job": cpu_seconds,
        "cpu_seconds_by_job": host_seconds,
        "expected_jobs_per_min": expected,
        "serial": results["serial"],
        "overlapped": results["overlapped"],
        "speedup": results["overlapped"]["jobs_per_min"] / results["serial"]["jobs_per_min"],
    }
    text = markdown(payload)
    print(text)
    if args.write:
        stem = results_stem("lanes", "standin", "cpu", smoke=args.smoke, when=utc_now())
        for path in write_results(payload, text, args.out, stem):
            print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
