"""Markdown renderings of results documents (the files under benchmarks/results/, and the README table).

Every number printed here is read from a results document; nothing is typed in by hand.
"""

from __future__ import annotations

from typing import Any

MIB = 2**20
GIB = 2**30


def fmt(value: float | int | None, scale: float = 1.0) -> str:
    """A compact number: thousands separators when large, three significant digits when small."""
    if value is None:
        return "–"
    scaled = value / scale
    if abs(scaled) >= 100:
        return f"{scaled:,.0f}"
    if abs(scaled) >= 10:
        return f"{scaled:.1f}"
    return f"{scaled:.3g}"


def pct(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.1f} %"


def times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def environment_lines(document: dict[str, Any]) -> list[str]:
    env = document["environment"]
    device = env["device"]
    versions = env["versions"]
    git = env["git"]
    commit = (git.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    if device["type"] == "cuda":
        driver = device.get("driver") or "unknown"
        if device.get("cuda_driver"):
            driver += f" (supports CUDA {device['cuda_driver']})"
        where = f"{device['name']}, driver {driver}, CUDA runtime {device.get('cuda_runtime')}"
    else:
        where = f"CPU {device['name']}, {device.get('torch_threads')} torch threads"
    lines = [
        f"- **Device:** {where}",
        f"- **Software:** torch {versions.get('torch')}, diffusers {versions.get('diffusers')}, "
        f"transformers {versions.get('transformers')}, Python {env['python']}",
        f"- **Commit:** `{commit}`, **date (UTC):** {env['date_utc']}",
        f"- **Command:** `{env['command']}`",
    ]
    if document.get("smoke"):
        lines.append("- **Smoke run:** a harness check at toy sizes, not a benchmark result.")
    return lines


def peak_line(document: dict[str, Any]) -> str:
    peaks = document["device_peaks"]
    matmul = ", ".join(
        f"{dtype} {fmt(entry['flops_per_second'], 1e12)} TFLOP/s" for dtype, entry in peaks["matmul"].items()
    )
    line = f"- **Measured in this run:** matmul {matmul}; device copy {fmt(peaks['copy']['bytes_per_second'], 1e9)} GB/s"
    if peaks.get("host_to_device"):
        line += f"; host→device {fmt(peaks['host_to_device']['bytes_per_second'], 1e9)} GB/s"
    return line


def whole_job_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for entry in document["configs"]:
        config = entry["config"]
        is_baseline = config["name"] == document["baseline"]
        name = config["name"] + (" (baseline)" if is_baseline and config["name"] != "baseline" else "")
        if "error" in entry:
            outcome = entry["error"] if entry.get("skipped") else f"failed: {entry['error']}"
            rows.append([name, config["dtype"], str(config["steps"]), outcome] + ["–"] * 7)
            continue
        total = entry["total"]
        rows.append([
            name,
            entry["runtime"]["dtype"],
            str(config["steps"]),
            fmt(total["latency_s"]["median"]),
            fmt(total["latency_s"]["p90"]),
            fmt(entry["throughput_jobs_per_min"]),
            times(total.get("speedup_vs_baseline")),
            fmt(total["flops"], 1e12),
            fmt(total["floor_s"]),
            pct(total["floor_fraction"]),
            fmt(total["peak_gpu_bytes"], GIB),
        ])
    header = ["configuration", "dtype", "steps", "median s", "p90 s", "jobs/min", "speedup",
              "TFLOP", "floor s", "floor / measured", "peak GPU GiB"]
    return _table(header, rows)


def stage_table(document: dict[str, Any], only: set[str] | None = None) -> list[str]:
    rows = []
    for entry in document["configs"]:
        if "error" in entry or (only is not None and entry["config"]["name"] not in only):
            continue
        for stage, report in entry["stages"].items():
            rows.append([
                entry["config"]["name"],
                stage,
                fmt(report["latency_s"]["median"], 1e-3),
                fmt(report["latency_s"]["p90"], 1e-3),
                times(report.get("speedup_vs_baseline")),
                fmt(report["flops"], 1e9),
                fmt(report["floor_s"], 1e-3),
                pct(report["floor_fraction"]),
                fmt(report["peak_gpu_bytes"], MIB),
                fmt(report["peak_rss_bytes"], MIB),
            ])
    header = ["configuration", "stage", "median ms", "p90 ms", "speedup", "GFLOP", "floor ms",
              "floor / measured", "peak GPU MiB", "peak RSS MiB"]
    return _table(header, rows)


def substep_table(document: dict[str, Any]) -> list[str]:
    """The reconstruct stage's sub-steps per configuration (NeRF: marching cubes; mesh: FlexiCubes extraction)."""
    rows = []
    for entry in document["configs"]:
        if "error" in entry:
            continue
        for substep, latency in entry.get("reconstruct_substeps", {}).items():
            rows.append([
                entry["config"]["name"],
                str(entry.get("reconstruct_model") or "–"),
                substep,
                fmt(latency["median"], 1e-3),
                fmt(latency["p90"], 1e-3),
            ])
    return _table(["configuration", "reconstruct model", "sub-step", "median ms", "p90 ms"], rows) if rows else []


def pipeline_markdown(document: dict[str, Any]) -> str:
    images = document["images"]
    lines = [
        f"# Pipeline benchmark: {document['weights']} weights on {document['environment']['device']['name']}",
        "",
        *environment_lines(document),
        peak_line(document),
        f"- **Photos:** {len(images['files'])} from `{images['folder']}`; per configuration "
        f"{document['warmup_jobs']} warm-up job(s), {'one FLOP-counting job, ' if document['flops_counted'] else ''}"
        f"{document['repeats']} timed pass(es)",
        "",
        "## Whole job",
        "",
        *whole_job_table(document),
        "",
        "## Per stage",
        "",
        *stage_table(document),
        "",
        *(["## Reconstruct sub-steps", "", *substeps, ""] if (substeps := substep_table(document)) else []),
        "Speedup = the baseline's median / this median. Floor = counted FLOPs / the matmul peak "
        "measured above for the configuration's dtype; floor / measured = how close the stage runs "
        "to that floor (100 % = at the floor). A dash means not applicable: no torch FLOPs "
        "(onnxruntime, numpy) or no GPU.",
    ]
    return "\n".join(lines)


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"`{key}={value}`" for key, value in options.items()) or "the server's defaults"


def http_table(document: dict[str, Any]) -> list[str]:
    rows = []
    for level in document["levels"]:
        gpu = level["gpu_utilization"]
        rows.append([
            str(level["concurrency"]),
            str(level["succeeded"]),
            fmt(level["throughput_jobs_per_min"]),
            fmt(level["latency_s"]["median"]),
            fmt(level["latency_s"]["p95"]),
            fmt(level["queue_wait_s"]["median"]),
            fmt(level["service_s"]["median"]),
            pct(level["rate_429"]),
            str(level["failed"] + level["errors"]),
            fmt(gpu.get("mean_percent")) if gpu.get("available") else "–",
            pct(level.get("device_busy_fraction")),
        ])
    header = ["concurrency", "jobs done", "jobs/min", "p50 s", "p95 s", "queue wait p50 s",
              "service p50 s", "429 rate", "failed", "GPU util %", "device lane busy"]
    return _table(header, rows)


def http_markdown(document: dict[str, Any]) -> str:
    server = document["server"]
    lines = [
        f"# HTTP benchmark: {server['weights']} weights on {document['environment']['device']['name']}",
        "",
        *environment_lines(document),
        f"- **Server:** {server.get('device')} ({server.get('dtype')}), queue size {server.get('queue_size')}; "
        f"job options {_options(document['job_options'])}; {document['window_s']} s per level, then the jobs in flight finish",
        "",
        *http_table(document),
        "",
        "Latency is end to end as a client sees it: upload, queue, run, and the GLB downloaded. "
        "Queue wait and service come from the job records (started − created, finished − started). "
        "jobs/min = jobs done / (first submit to last completion). "
        "Device lane busy = the jobs' multiview + reconstruct seconds (their records) / that same time.",
    ]
    if not any(level["gpu_utilization"].get("available") for level in document["levels"]):
        reason = document["levels"][0]["gpu_utilization"].get("reason") if document["levels"] else None
        lines.append(f"GPU utilisation not sampled: {reason}.")
    return "\n".join(lines)
