"""Throughput and latency of the HTTP server under 1, 2, 4 and 8 concurrent clients.

    python -m benchmarks.bench_http --weights dummy --device cuda --window 120
    python -m benchmarks.bench_http --url http://127.0.0.1:8000 --api-key KEY   # a running server

Each level runs closed-loop clients for a fixed window: every client submits a photo,
follows the job's SSE stream to its end, downloads the GLB, and submits again. When the
window closes, no new jobs start and the jobs in flight finish. A 429 is counted, then
the client waits the server's Retry-After and tries again. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx

from benchmarks import common
from benchmarks.http_server import ServerOptions, ServerProcess
from benchmarks.samplers import GpuSampler, ProcessSampler
from benchmarks.tables import http_markdown

log = logging.getLogger("lift3d.bench")

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
DEFAULT_LEVELS = (1, 2, 4, 8)
DEFAULT_QUEUE_SIZE = 8  # the server's own default (server.queue_size)


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes
    content_type: str


@dataclass
class Outcome:
    """One accepted job as the client saw it, plus the server's record of it."""

    status: str
    latency_s: float
    submit_s: float
    download_s: float | None
    queue_wait_s: float | None
    service_s: float | None
    timings: dict[str, float]
    error_code: str | None
    finished_at: float


@dataclass
class LevelTally:
    attempts: int = 0
    rejected_429: int = 0
    http_status: collections.Counter[int] = field(default_factory=collections.Counter)
    transport_errors: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


def _timestamp(value: Any) -> float | None:
    """Job-record times are ISO 8601 (``...Z``) or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _span(record: dict[str, Any], start: str, end: str) -> float | None:
    first, last = _timestamp(record.get(start)), _timestamp(record.get(end))
    return None if first is None or last is None else last - first


def _retry_after(response: httpx.Response, default: float = 1.0) -> float:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default  # an HTTP-date: rare here; wait the default


async def _follow(client: httpx.AsyncClient, links: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """The job's final record: from the SSE ``end`` event, or by polling if the stream ends early."""
    event, data = "", []
    try:
        async with client.stream("GET", links["events"], timeout=httpx.Timeout(30.0, read=timeout_s)) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "":
                    if data:
                        payload = json.loads("\n".join(data))
                        if event == "end":
                            return payload
                    event, data = "", []
    except httpx.TransportError:
        pass
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        record = (await client.get(links["self"])).json()
        if record.get("status") in TERMINAL:
            return record
        await asyncio.sleep(0.1)
    raise TimeoutError("the job did not finish in time")


class LoadGenerator:
    def __init__(
        self, client: httpx.AsyncClient, photos: list[Photo], form: dict[str, str], *, job_timeout_s: float, delete: bool
    ) -> None:
        self.client = client
        self.photos = photos
        self.form = form
        self.job_timeout_s = job_timeout_s
        self.delete = delete

    async def one_job(self, photo: Photo, tally: LevelTally, stop_at: float | None) -> Outcome | None:
        """Submit until accepted (or the window closes), follow to the end, download the GLB."""
        while True:
            tally.attempts += 1
            started = time.perf_counter()
            try:
                response = await self.client.post(
                    "/v1/jobs", files={"image": (photo.name, photo.data, photo.content_type)}, data=self.form
                )
            except httpx.TransportError:
                tally.transport_errors += 1
                return None
            tally.http_status[response.status_code] += 1
            if response.status_code == 429:
                tally.rejected_429 += 1
                wait = _retry_after(response)
                if stop_at is not None:
                    wait = min(wait, stop_at - time.perf_counter())
                    if wait <= 0:
                        return None
                await asyncio.sleep(wait)
                continue
            if response.status_code != 202:
                log.warning("submit answered %d: %s", response.status_code, response.text[:200])
                return None
            break
        submit_s = time.perf_counter() - started
        accepted = response.json()
        try:
            record = await _follow(self.client, accepted["links"], self.job_timeout_s)
            download_s = None
            if record["status"] == "succeeded":
                download_started = time.perf_counter()
                glb = await self.client.get(accepted["links"]["model"])
                glb.raise_for_status()
                download_s = time.perf_counter() - download_started
        except (httpx.HTTPError, TimeoutError, ValueError, KeyError) as error:
            # A job the client lost track of is a failure of this level, not of the benchmark.
            log.warning("job %s: %s: %s", accepted.get("id"), type(error).__name__, error)
            record, download_s = {"status": "client_error", "error": {"code": type(error).__name__}}, None
        finished = time.perf_counter()
        if self.delete:
            with contextlib.suppress(httpx.HTTPError):  # clean-up only; the job expires anyway
                await self.client.delete(accepted["links"]["self"])
        return Outcome(
            status=record["status"],
            latency_s=finished - started,
            submit_s=submit_s,
            download_s=download_s,
            queue_wait_s=_span(record, "created_at", "started_at"),
            service_s=_span(record, "started_at", "finished_at"),
            timings=dict(record.get("timings") or {}),
            error_code=(record.get("error") or {}).get("code"),
            finished_at=finished,
        )

    async def level(self, concurrency: int, window_s: float) -> tuple[LevelTally, float]:
        """``concurrency`` closed-loop clients for ``window_s``; returns the tally and the elapsed time."""
        tally = LevelTally()
        started = time.perf_counter()
        stop_at = started + window_s

        async def client_loop(index: int) -> None:
            turn = index
            while time.perf_counter() < stop_at:
                outcome = await self.one_job(self.photos[turn % len(self.photos)], tally, stop_at)
                turn += concurrency
                if outcome is not None:
                    tally.outcomes.append(outcome)
                elif time.perf_counter() < stop_at:
                    await asyncio.sleep(0.5)  # refused or unreachable: don't hammer the server

        await asyncio.gather(*(client_loop(i) for i in range(concurrency)))
        # Up to the last completion: the drained jobs are counted, so their time is too.
        last = max((o.finished_at for o in tally.outcomes), default=time.perf_counter())
        return tally, last - started


# The device lane's stages (pipeline/lanes.py); background joins them only when it runs on CUDA.
DEVICE_STAGES = ("multiview", "reconstruct")


def device_busy_fraction(outcomes: Sequence[Outcome], elapsed_s: float) -> float | None:
    """The server's device-lane stage seconds over the level's time: how busy the device lane kept
    the GPU, from the job records alone (no NVML needed; CPU launch overheads count as busy)."""
    if elapsed_s <= 0:
        return None
    return sum(o.timings.get(name, 0.0) for o in outcomes for name in DEVICE_STAGES) / elapsed_s


def level_report(concurrency: int, window_s: float, tally: LevelTally, elapsed_s: float) -> dict[str, Any]:
    succeeded = [o for o in tally.outcomes if o.status == "succeeded"]
    failed = [o for o in tally.outcomes if o.status != "succeeded"]
    stages = sorted({name for o in succeeded for name in o.timings})
    server_errors = sum(count for status, count in tally.http_status.items() if status >= 500)
    other_rejections = sum(
        count for status, count in tally.http_status.items() if status not in (202, 429) and status < 500
    )
    return {
        "concurrency": concurrency,
        "window_s": window_s,
        "elapsed_s": elapsed_s,
        "attempts": tally.attempts,
        "accepted": tally.http_status.get(202, 0),
        "rejected_429": tally.rejected_429,
        "rate_429": tally.rejected_429 / tally.attempts if tally.attempts else None,
        "http_status_counts": {str(k): v for k, v in sorted(tally.http_status.items())},
        "succeeded": len(succeeded),
        "failed": len(failed),
        "failure_codes": dict(collections.Counter(o.error_code or o.status for o in failed)),
        "errors": server_errors + other_rejections + tally.transport_errors,
        "server_errors_5xx": server_errors,
        "transport_errors": tally.transport_errors,
        # Accepted jobs the client lost track of (stream broke, GLB download failed, timed out).
        "client_errors": sum(1 for o in failed if o.status == "client_error"),
        "throughput_jobs_per_min": 60.0 * len(succeeded) / elapsed_s if elapsed_s > 0 else None,
        "device_busy_fraction": device_busy_fraction(succeeded, elapsed_s),
        "latency_s": common.summarize(o.latency_s for o in succeeded),
        "submit_s": common.summarize(o.submit_s for o in succeeded),
        "download_s": common.summarize(o.download_s for o in succeeded if o.download_s is not None),
        "queue_wait_s": common.summarize(o.queue_wait_s for o in succeeded if o.queue_wait_s is not None),
        "service_s": common.summarize(o.service_s for o in succeeded if o.service_s is not None),
        "server_stage_s": {
            name: common.summarize(o.timings[name] for o in succeeded if name in o.timings) for name in stages
        },
    }


def load_photos(folder: Path, count: int) -> list[Photo]:
    photos = []
    for path in common.list_images(folder, count):
        data = path.read_bytes()
        photos.append(Photo(path.name, data, common.sniff_content_type(data)))
    return photos


@dataclass
class HttpRun:
    photos: list[Photo]
    levels: Sequence[int] = DEFAULT_LEVELS
    window_s: float = 60.0
    warmup_jobs: int = 1
    job_options: dict[str, Any] = field(default_factory=dict)
    job_timeout_s: float = 900.0
    delete_jobs: bool = True
    gpu_index: int = 0


async def _measure(url: str, api_key: str, run: HttpRun, server_pid: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {api_key}"}
    form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in run.job_options.items()}
    limits = httpx.Limits(max_connections=4 * max(run.levels) + 8)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120.0, limits=limits) as client:
        info_response = await client.get("/v1/info")
        info_response.raise_for_status()
        info = info_response.json()
        generator = LoadGenerator(client, run.photos, form, job_timeout_s=run.job_timeout_s, delete=run.delete_jobs)
        for index in range(run.warmup_jobs):
            await generator.one_job(run.photos[index % len(run.photos)], LevelTally(), None)
        gpu = GpuSampler(run.gpu_index)
        levels = []
        try:
            for concurrency in run.levels:
                gpu.reset(until=time.perf_counter() + run.window_s)
                process = ProcessSampler(server_pid)
                log.info("concurrency %d for %.0f s", concurrency, run.window_s)
                with gpu, process:
                    tally, elapsed = await generator.level(concurrency, run.window_s)
                report = level_report(concurrency, run.window_s, tally, elapsed)
                report["gpu_utilization"] = gpu.report()
                report["server_process"] = process.report()
                levels.append(report)
        finally:
            gpu.close()
    return info, levels


def run_http_benchmark(
    run: HttpRun, *, server: ServerOptions | None, url: str | None, api_key: str | None, argv: Sequence[str], smoke: bool
) -> dict[str, Any]:
    """Start a server (or use ``url``), run every concurrency level, return the results document."""
    if server is not None:
        with ServerProcess(server) as process:
            assert process.process is not None
            info, levels = asyncio.run(_measure(process.url, process.api_key, run, process.process.pid))
        server_record: dict[str, Any] = {
            "started_by_bench": True,
            "startup_s": process.startup_s,
            "exit_code": process.exit_code,
            "requested_queue_size": server.queue_size,
            "env": {name: "***" if common.is_secret_name(name) else value for name, value in server.env.items()},
        }
    else:
        if not (url and api_key):
            raise ValueError("either start a server or give both url and api_key")
        info, levels = asyncio.run(_measure(url, api_key, run, None))
        server_record = {"started_by_bench": False, "url": url}
    server_record.update(
        version=info.get("version"),
        weights=info.get("weights_mode"),
        device=info.get("device"),
        dtype=info.get("dtype"),
        profile=info.get("profile"),
        queue_size=(info.get("limits") or {}).get("queue_size"),
    )
    environment = common.capture_environment(argv, str(info.get("device") or "cpu"))
    if url and httpx.URL(url).host not in {"127.0.0.1", "localhost", "::1"}:
        # The device fields describe this (client) machine; the server's own report is in "server".
        environment["device"]["note"] = "recorded on the client; the server may run elsewhere"
    return {
        "kind": "http",
        "schema_version": common.SCHEMA_VERSION,
        "smoke": smoke,
        "environment": environment,
        "server": server_record,
        "images": {"files": [photo.name for photo in run.photos]},
        "job_options": dict(run.job_options),
        "window_s": run.window_s,
        "warmup_jobs": run.warmup_jobs,
        "levels": levels,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=common.default_images_dir(), help="folder of photos (default ../shared/images)")
    parser.add_argument("-n", "--num-images", type=int, default=8, help="photos the clients cycle through")
    parser.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="concurrency levels, comma-separated")
    parser.add_argument("--window", type=float, default=60.0, help="seconds each level submits new jobs")
    parser.add_argument("--saturate", action="store_true", help="one level at queue size + 4 clients (replaces --levels)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed jobs before the first level")
    parser.add_argument("--steps", type=int, help="diffusion steps per job (default: the server's)")
    parser.add_argument("--seed", type=int, default=0, help="seed sent with every job")
    parser.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE",
        help="another job option sent with every job (e.g. texture_size=512), repeatable",
    )
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds one job may take")
    parser.add_argument("--keep-jobs", action="store_true", help="do not DELETE jobs after downloading their GLB")
    parser.add_argument("--gpu-index", type=int, default=0, help="NVML index of the server's GPU")
    started = parser.add_argument_group("server started by the benchmark (default)")
    started.add_argument("--weights", choices=["dummy", "tiny", "locked"], default="dummy")
    started.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    started.add_argument("--weights-dir", help="weights folder (env LIFT3D_WEIGHTS_DIR)")
    started.add_argument("--queue-size", type=int, help="LIFT3D_QUEUE_SIZE for the server")
    started.add_argument("--server-env", action="append", default=[], metavar="LIFT3D_X=VALUE", help="extra server setting, repeatable")
    started.add_argument("--startup-timeout", type=float, default=600.0)
    running = parser.add_argument_group("a server that is already running")
    running.add_argument("--url", help="base URL, e.g. http://127.0.0.1:8000")
    running.add_argument("--api-key", help="Bearer key (default: the first of LIFT3D_API_KEYS)")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results folder (default benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="mark the run as a smoke test (file name starts with smoke-, git-ignored)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the progress
    levels = [int(level) for level in args.levels.split(",") if level.strip()]
    if args.saturate:
        # Clients beyond the queue and the four jobs the lanes hold: the queue never empties.
        levels = [(args.queue_size or DEFAULT_QUEUE_SIZE) + 4]
    if not levels or min(levels) < 1:
        raise SystemExit("--levels needs positive integers, e.g. 1,2,4,8")
    options: dict[str, Any] = {"seed": args.seed}
    if args.steps is not None:
        options["steps"] = args.steps
    try:
        options.update(dict(item.split("=", 1) for item in args.option))
        extra_env = dict(item.split("=", 1) for item in args.server_env)
    except ValueError as error:
        raise SystemExit("--option and --server-env take NAME=VALUE") from error
    run = HttpRun(
        photos=load_photos(args.images, args.num_images),
        levels=levels,
        window_s=args.window,
        warmup_jobs=args.warmup,
        job_options=options,
        job_timeout_s=args.job_timeout,
        delete_jobs=not args.keep_jobs,
        gpu_index=args.gpu_index,
    )
    server = None
    api_key = args.api_key
    if args.url:
        api_key = api_key or next(iter(os.environ.get("LIFT3D_API_KEYS", "").split(",")), "").strip() or None
        if not api_key:
            raise SystemExit("--url needs --api-key (or LIFT3D_API_KEYS)")
    else:
        server = ServerOptions(
            weights=args.weights, device=args.device, weights_dir=args.weights_dir, queue_size=args.queue_size,
            env=extra_env, startup_timeout_s=args.startup_timeout,
        )
    document = run_http_benchmark(
        run, server=server, url=args.url, api_key=api_key, argv=["-m", "benchmarks.bench_http", *argv], smoke=args.smoke
    )
    weights = document["server"].get("weights") or args.weights
    stem = common.results_stem(
        "http", weights, common.device_slug(document["environment"]["device"]), smoke=args.smoke, when=common.utc_now()
    )
    markdown = http_markdown(document)
    json_path, md_path = common.write_results(document, markdown, args.out, stem)
    print(markdown)
    print()
    print(common.redact(str(json_path)))
    print(common.redact(str(md_path)))
    broken = sum(
        level["server_errors_5xx"] + level["transport_errors"] + level["client_errors"]
        for level in document["levels"]
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
