"""Per-stage latency, memory and FLOPs of the engine, and how far each stage is from the compute floor.

    python -m benchmarks.bench_pipeline --weights dummy --device cuda
    python -m benchmarks.bench_pipeline --weights tiny --device cpu -n 2 \\
        --config baseline:dtype=float32,steps=4 --config fast:dtype=float32,steps=2
    python -m benchmarks.bench_pipeline --weights tiny --device cpu --config triposr --baseline triposr

Every configuration runs in this one process, after the device's matmul peak and copy
bandwidth were measured, so speedups over the baseline and fractions of the floor are
ratios of numbers taken side by side. See docs/benchmarks.md for how to read the output.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks import common, device_peak
from benchmarks.configs import DEFAULT_CONFIGS, PRESETS, BenchConfig, parse_config
from benchmarks.probes import StageProbe, StageSample, probe_stages
from benchmarks.tables import pipeline_markdown
from lift3d.settings import EngineSettings, Settings, load_settings
from pipeline.engine import Engine, pipeline_stages
from pipeline.options import JobOptions, default_pipeline
from pipeline.stage import Stage

log = logging.getLogger("lift3d.bench")

StageFactory = Callable[[EngineSettings], list[Stage]]


def profile_stages(settings: EngineSettings) -> list[Stage]:
    """The stages of the profile's default pipeline (``profile=fast`` in a configuration benchmarks TripoSR)."""
    return pipeline_stages(settings)[default_pipeline(settings)]


@dataclass
class JobSample:
    image: str
    repeat: int
    total_s: float
    timings: dict[str, float]
    stages: dict[str, StageSample]
    # The reconstruct stage's own sub-step seconds (encode, transformer, grid query, ...) and its model.
    reconstruct_substeps: dict[str, float] = field(default_factory=dict)
    reconstruct_model: str | None = None


@dataclass
class PipelineRun:
    """What ``run_pipeline_benchmark`` needs besides the configurations."""

    settings: Settings
    images: list[Path]
    warmup_jobs: int = 1
    repeats: int = 1
    count_flops: bool = True
    matmul_size: int | None = None
    copy_megabytes: int | None = None
    stage_factory: StageFactory = profile_stages
    # Seconds after which no further configuration starts (the first always runs); None: no limit.
    time_budget_s: float | None = None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _stage_report(
    latencies: list[float], flops: int | None, peak: float | None, samples: list[StageSample]
) -> dict[str, Any]:
    latency = common.summarize(latencies)
    # Zero counted FLOPs means no torch matmul/conv/attention ran (e.g. onnxruntime, numpy):
    # there is no compute floor to compare with, rather than a floor of zero.
    floor_s = _ratio(flops, peak) if flops else None
    gpu_peaks = [s.peak_gpu_bytes for s in samples if s.peak_gpu_bytes is not None]
    return {
        "latency_s": latency,
        "flops": flops,
        "floor_s": floor_s,
        "floor_fraction": _ratio(floor_s, latency["median"]),
        "peak_gpu_bytes": max(gpu_peaks) if gpu_peaks else None,
        "peak_rss_bytes": max((s.peak_rss_bytes for s in samples), default=None),
    }


def summarize_config(
    stage_names: list[str],
    jobs: list[JobSample],
    counted: dict[str, StageSample] | None,
    peak_flops: float | None,
) -> dict[str, Any]:
    """Per-stage and whole-job statistics of one configuration (speedups are added later)."""
    stages: dict[str, Any] = {}
    for name in stage_names:
        flops = counted[name].flops if counted and name in counted else None
        stages[name] = _stage_report(
            [job.timings[name] for job in jobs], flops, peak_flops, [job.stages[name] for job in jobs]
        )
        stages[name]["flops_by_op"] = counted[name].flops_by_op if counted and name in counted else None
    total_flops = sum(counted[name].flops or 0 for name in stage_names if name in counted) if counted else None
    everything = [sample for job in jobs for sample in job.stages.values()]
    total = _stage_report([job.total_s for job in jobs], total_flops, peak_flops, everything)
    median = total["latency_s"]["median"]
    substep_names = list(dict.fromkeys(name for job in jobs for name in job.reconstruct_substeps))
    return {
        "stages": stages,
        "total": total,
        "reconstruct_model": next((job.reconstruct_model for job in jobs if job.reconstruct_model), None),
        "reconstruct_substeps": {
            name: common.summarize([job.reconstruct_substeps[name] for job in jobs if name in job.reconstruct_substeps])
            for name in substep_names
        },
        "throughput_jobs_per_min": 60.0 / median if median else None,
        "samples": [
            {"image": job.image, "repeat": job.repeat, "total_s": job.total_s, "timings_s": job.timings}
            for job in jobs
        ],
    }


def add_speedups(configs: list[dict[str, Any]], baseline_name: str) -> None:
    """speedup = baseline median / this median, per stage and for the whole job (same run)."""
    baseline = next((c for c in configs if c["config"]["name"] == baseline_name and "error" not in c), None)
    for entry in configs:
        if "error" in entry:
            continue
        for name, stage in [*entry["stages"].items(), ("total", entry["total"])]:
            reference = None
            if baseline is not None:
                reference = baseline["total"] if name == "total" else baseline["stages"].get(name)
            stage["speedup_vs_baseline"] = _ratio(
                reference["latency_s"]["median"] if reference else None, stage["latency_s"]["median"]
            )


class _EngineCache:
    """Keeps one engine loaded; configurations that differ only in per-job options share it."""

    def __init__(self, run: PipelineRun) -> None:
        self.run = run
        self.key: dict[str, Any] | None = None
        self.engine: Engine | None = None
        self.probe = StageProbe()
        self.load_s = 0.0
        self.warmup_s = 0.0

    def get(self, config: BenchConfig) -> tuple[Engine, bool]:
        overrides = config.engine_overrides()
        if self.engine is not None and overrides == self.key:
            return self.engine, True
        self.release()
        settings = self.run.settings.with_overrides(overrides).engine
        engine = Engine(settings, stages=probe_stages(self.run.stage_factory(settings), self.probe))
        started = time.perf_counter()
        engine.load()
        self.load_s = time.perf_counter() - started
        started = time.perf_counter()
        self.probe.start_job(count_flops=False)
        engine.warmup()
        self.warmup_s = time.perf_counter() - started
        self.engine, self.key = engine, overrides
        return engine, False

    def release(self) -> None:
        self.engine, self.key = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_config(cache: _EngineCache, config: BenchConfig, run: PipelineRun, peaks: dict[str, Any]) -> dict[str, Any]:
    engine, reused = cache.get(config)
    probe = cache.probe
    photos = [(path.name, path.read_bytes()) for path in run.images]

    def job(image: bytes, seed: int, *, count_flops: bool) -> tuple[float, dict[str, float], dict[str, Any]]:
        probe.start_job(count_flops=count_flops)
        started = time.perf_counter()
        result = engine.run(image, JobOptions(seed=seed, steps=config.steps))
        engine.runtime.synchronize()
        return time.perf_counter() - started, result.timings, result.metadata.get("reconstruct", {})

    for _ in range(run.warmup_jobs):
        job(photos[0][1], 0, count_flops=False)
    counted = None
    if run.count_flops:
        # A separate, untimed job: the counter intercepts every op and would distort the clock.
        job(photos[0][1], 0, count_flops=True)
        counted = dict(probe.samples)
    jobs: list[JobSample] = []
    for repeat in range(run.repeats):
        for index, (name, data) in enumerate(photos):
            total_s, timings, reconstruct = job(data, index, count_flops=False)
            jobs.append(JobSample(name, repeat, total_s, timings, dict(probe.samples),
                                  dict(reconstruct.get("timings", {})), reconstruct.get("model")))
            log.info("%s %s #%d: %.3fs", config.name, name, repeat, total_s)
    dtype_name = str(engine.runtime.dtype).removeprefix("torch.")
    peak = peaks["matmul"].get(dtype_name, {}).get("flops_per_second")
    return {
        "config": config.to_json(),
        "runtime": {"device": str(engine.runtime.device), "dtype": dtype_name},
        "engine_reused": reused,
        "load_s": cache.load_s,
        "load_s_by_stage": dict(getattr(engine, "load_seconds", {})),
        "warmup_s": cache.warmup_s,
        "peak_flops_per_second": peak,
        "pipeline": default_pipeline(engine.settings),
        **summarize_config(engine.stage_names, jobs, counted, peak),
    }


def _resolved_dtype(config: BenchConfig, device: torch.device) -> str:
    if config.dtype != "auto":
        return config.dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def run_pipeline_benchmark(
    configs: Sequence[BenchConfig], baseline: str, run: PipelineRun, *, argv: Sequence[str], smoke: bool
) -> dict[str, Any]:
    """Measure the device, then every configuration in order; returns the results document."""
    if baseline not in {c.name for c in configs}:
        raise ValueError(f"the baseline {baseline!r} is not among the configurations")
    from pipeline.runtime import Runtime

    started = time.perf_counter()
    device = Runtime.from_settings(run.settings.engine).device
    dtypes = {"float32", *(_resolved_dtype(c, device) for c in configs)}
    peaks = device_peak.measure_device(
        device, sorted(dtypes), matmul_size=run.matmul_size, copy_megabytes=run.copy_megabytes
    )
    cache = _EngineCache(run)
    results: list[dict[str, Any]] = []
    for index, config in enumerate(configs):
        elapsed = time.perf_counter() - started
        if index and run.time_budget_s is not None and elapsed >= run.time_budget_s:
            # Recorded, not dropped: a reader sees which configurations a short slot left out.
            log.warning("configuration %s not run: %.0f s of the %.0f s budget spent", config.name, elapsed, run.time_budget_s)
            results.append({"config": config.to_json(), "skipped": True,
                            "error": f"not run: the time budget of {run.time_budget_s:g} s was spent"})
            continue
        log.info("configuration %s: %s", config.name, config.description)
        try:
            results.append(_run_config(cache, config, run, peaks))
        except Exception as error:  # noqa: BLE001 - one failing configuration (e.g. OOM) must not hide the rest
            log.error("configuration %s failed: %s", config.name, error)
            results.append({"config": config.to_json(), "error": f"{type(error).__name__}: {error}",
                            "traceback": common.redact(traceback.format_exc(limit=8))})
            cache.release()
    cache.release()
    add_speedups(results, baseline)
    return {
        "kind": "pipeline",
        "schema_version": common.SCHEMA_VERSION,
        "smoke": smoke,
        "environment": common.capture_environment(argv, str(device)),
        "weights": run.settings.engine.weights,
        "device": str(device),
        "device_peaks": peaks,
        "images": {
            "folder": common.redact(str(run.images[0].parent)) if run.images else None,
            "files": [path.name for path in run.images],
        },
        "warmup_jobs": run.warmup_jobs,
        "repeats": run.repeats,
        "flops_counted": run.count_flops,
        "baseline": baseline,
        "time_budget_s": run.time_budget_s,
        "configs": results,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.default_images_dir(), help="folder of photos (default ../shared/images)")
    parser.add_argument("-n", "--num-images", type=int, default=8, help="photos per configuration (cycled)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the photos")
    parser.add_argument("--warmup", type=int, default=1, help="untimed jobs per configuration after the engine's own warm-up")
    parser.add_argument("--weights", choices=["dummy", "tiny", "locked"], default="dummy")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--weights-dir", help="weights folder (env LIFT3D_WEIGHTS_DIR)")
    parser.add_argument(
        "--config", action="append", dest="configs", metavar="NAME[:key=value,...]",
        help=f"a configuration, repeatable; presets: {', '.join(PRESETS)} (default: {' '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument("--baseline", default="baseline", help="configuration every other one is compared with")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting job")
    parser.add_argument("--matmul-size", type=int, help="side of the square matmul timed for the peak (8192 GPU, 1024 CPU)")
    parser.add_argument("--copy-mb", type=int, help="buffer for the copy-bandwidth test (1024 GPU, 128 CPU)")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results folder (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="mark the run as a smoke test (file name starts with smoke-, git-ignored)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--time-budget", type=float, metavar="SECONDS",
        help="start no further configuration after this many seconds (the first always runs); "
        "the ones left out are recorded as not run",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(engine__weights=args.weights, engine__device=args.device, engine__weights_dir=args.weights_dir)
    specs = args.configs or list(DEFAULT_CONFIGS)
    try:
        configs = [parse_config(spec, settings.engine.multiview.steps) for spec in specs]
    except ValueError as error:
        raise SystemExit(str(error)) from error
    run = PipelineRun(
        settings=settings,
        images=common.list_images(args.images, args.num_images),
        warmup_jobs=args.warmup,
        repeats=args.repeats,
        count_flops=not args.no_flops,
        matmul_size=args.matmul_size,
        copy_megabytes=args.copy_mb,
        time_budget_s=args.time_budget,
    )
    document = run_pipeline_benchmark(
        configs, args.baseline, run, argv=["-m", "benchmarks.bench_pipeline", *argv], smoke=args.smoke
    )
    stem = common.results_stem(
        "pipeline", args.weights, common.device_slug(document["environment"]["device"]),
        smoke=args.smoke, when=common.utc_now(),
    )
    markdown = pipeline_markdown(document)
    json_path, md_path = common.write_results(document, markdown, args.out, stem)
    print(markdown)
    print()
    print(common.redact(str(json_path)))
    print(common.redact(str(md_path)))
    failed = [c["config"]["name"] for c in document["configs"] if "error" in c and not c.get("skipped")]
    if failed:
        print(f"failed configurations: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
