"""The benchmark harness: exact bookkeeping on fake stages, then both benchmarks end to end on CPU.

The smoke runs use the real tiny engine and the real ``lift3d serve`` at toy sizes and
write to a temporary folder; their numbers are not results, their fields are checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import bench_http, bench_pipeline, common
from benchmarks.configs import PRESETS, parse_config
from benchmarks.tables import fmt, http_markdown, pipeline_markdown
from lift3d.settings import load_settings
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState

STAGES = ["decode", "background", "multiview", "reconstruct", "finish"]
MATMUL = (16, 32, 24)  # m, k, n of the fake multiview's per-step matmul
ATTENTION = (1, 2, 8, 4)  # batch, heads, tokens, head dim of its attention
TOKENS = (8, 16, 12)  # learnt tokens [8, 16] through a Linear(16, 12), once per job


def _expected_flops(steps: int) -> int:
    m, k, n = MATMUL
    b, h, s, d = ATTENTION
    per_step = 2 * m * k * n + 4 * b * h * s * s * d  # QK^T and AV are each 2*b*h*s*s*d
    return steps * per_step + 2 * TOKENS[0] * TOKENS[1] * TOKENS[2]


class FakeDecode:
    name = "decode"
    progress_weight = 1.0

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        job.image = len(job.input_bytes or b"")


class FakeMultiview:
    """One matmul and one attention per diffusion step: FLOPs known exactly.

    Also a parameter fed to a module under inference_mode, as the LRM does with its
    triplane tokens: torch's own FLOP counter breaks on that, ours must not.
    """

    name = "multiview"
    progress_weight = 5.0

    def load(self, runtime: Runtime) -> None:
        self.weight = torch.randn(MATMUL[1], MATMUL[2])
        self.tokens = torch.nn.Parameter(torch.randn(TOKENS[0], TOKENS[1]))
        self.project = torch.nn.Linear(TOKENS[1], TOKENS[2])

    @torch.inference_mode()
    def run(self, job: JobState, ctx: StageContext) -> None:
        self.project(self.tokens)
        x = torch.randn(MATMUL[0], MATMUL[1])
        q = torch.randn(*ATTENTION)
        for step in range(job.options.steps):
            x[:, : MATMUL[2]] = (x @ self.weight)[:, : MATMUL[2]].tanh()
            q = F.scaled_dot_product_attention(q, q, q)
            ctx.report(step + 1, job.options.steps)
        job.views = x


class FakeFinish:
    name = "finish"
    progress_weight = 1.0

    def load(self, runtime: Runtime) -> None:
        pass

    def run(self, job: JobState, ctx: StageContext) -> None:
        job.glb = b"glTF"


def _fake_stages(settings: Any) -> list[Any]:
    return [FakeDecode(), FakeMultiview(), FakeFinish()]


def test_summarize_percentiles() -> None:
    stats = common.summarize(range(1, 11))
    assert stats["n"] == 10 and stats["median"] == 5.5
    assert stats["p90"] == pytest.approx(np.percentile(np.arange(1, 11), 90))
    assert common.summarize([])["median"] is None


def test_recorded_command_hides_keys_and_machine_paths() -> None:
    argv = ["-m", "benchmarks.bench_http", "--api-key", "k-123", "--server-env", "LIFT3D_WEBHOOK_SECRET=s-456",
            "--server-env", "LIFT3D_STEPS=28", "--images", str(common.REPO / "photos")]
    command = common.capture_environment(argv, "cpu")["command"]
    assert "k-123" not in command and "s-456" not in command and str(common.REPO) not in command
    assert "LIFT3D_STEPS=28" in command and "./photos" in command


def test_config_specs() -> None:
    assert parse_config("baseline", 75) == PRESETS["baseline"]
    assert (PRESETS["baseline"].dtype, PRESETS["baseline"].steps) == ("float16", 75)
    changed = parse_config("baseline:steps=2,dtype=float32", 75).to_json()
    assert changed["steps"] == 2 and changed["dtype"] == "float32"
    assert changed["changes_from_preset"] == {"steps": 2, "dtype": "float32"}
    assert "changed" in changed["description"]
    custom = parse_config("grid:reconstruct.grid_resolution=64", 28)
    assert custom.steps == 28 and custom.engine_overrides()["engine.reconstruct.grid_resolution"] == 64
    for bad in ("baseline:steps", ":steps=2", "x:dtype=int8"):
        with pytest.raises(ValueError):
            parse_config(bad, 75)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The harness on fake stages with known work: baseline, half the steps, and a broken configuration."""
    photo = tmp_path_factory.mktemp("photos")
    (photo / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    settings = load_settings({}, engine__weights="tiny", engine__device="cpu")
    run = bench_pipeline.PipelineRun(
        settings=settings, images=common.list_images(photo, 2), repeats=2,
        stage_factory=_fake_stages, matmul_size=128, copy_megabytes=4,
    )
    configs = [
        parse_config("baseline:dtype=float32,steps=6", 75),
        parse_config("fast:dtype=float32,steps=3", 75),
        parse_config("broken:no_such_setting=1", 75),
    ]
    return bench_pipeline.run_pipeline_benchmark(configs, "baseline", run, argv=["test"], smoke=True)


def test_harness_bookkeeping_is_exact(fake_run: dict[str, Any]) -> None:
    """FLOPs, floors, fractions and speedups follow from the measured numbers, on stages with known work."""
    document = fake_run
    json.dumps(document, allow_nan=False)

    peak = document["device_peaks"]["matmul"]["float32"]["flops_per_second"]
    baseline, fast, broken = document["configs"]
    # A failing configuration (here a typo; on a GPU, an OOM) is recorded and the rest still run.
    assert "no_such_setting" in broken["error"] and "stages" not in broken
    assert fast["engine_reused"] is True  # same settings, only the steps differ: loaded once
    for entry, steps in ((baseline, 6), (fast, 3)):
        multiview = entry["stages"]["multiview"]
        assert multiview["flops"] == _expected_flops(steps)
        assert multiview["latency_s"]["n"] == 4
        assert multiview["floor_s"] == pytest.approx(multiview["flops"] / peak)
        assert multiview["floor_fraction"] == pytest.approx(multiview["floor_s"] / multiview["latency_s"]["median"])
        assert entry["stages"]["decode"]["flops"] == 0 and entry["stages"]["decode"]["floor_s"] is None
        assert entry["total"]["flops"] == multiview["flops"]
        assert [s["image"] for s in entry["samples"]] == ["a.png", "a.png"] * 2
    for name in ("decode", "multiview", "finish"):
        assert baseline["stages"][name]["speedup_vs_baseline"] == 1.0
        assert fast["stages"][name]["speedup_vs_baseline"] == pytest.approx(
            baseline["stages"][name]["latency_s"]["median"] / fast["stages"][name]["latency_s"]["median"]
        )
    markdown = pipeline_markdown(document)
    assert "| fast | multiview |" in markdown and "Smoke run" in markdown and "failed: KeyError" in markdown


def test_time_budget_records_the_configurations_it_leaves_out(tmp_path: Path) -> None:
    """A spent budget: the first configuration still runs, the rest are recorded as not run, not failed."""
    photo = tmp_path / "a.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    run = bench_pipeline.PipelineRun(
        settings=load_settings({}, engine__weights="tiny", engine__device="cpu"), images=[photo],
        stage_factory=_fake_stages, matmul_size=64, copy_megabytes=1, count_flops=False, time_budget_s=0.0,
    )
    configs = [parse_config("baseline:dtype=float32,steps=2", 75), parse_config("later:dtype=float32,steps=1", 75)]
    document = bench_pipeline.run_pipeline_benchmark(configs, "baseline", run, argv=["test"], smoke=True)
    first, later = document["configs"]
    assert "stages" in first and first["total"]["speedup_vs_baseline"] == 1.0
    assert later["skipped"] is True and "time budget of 0 s" in later["error"] and "stages" not in later
    assert document["time_budget_s"] == 0.0
    assert "| later | float32 | 1 | not run: the time budget" in pipeline_markdown(document)


def test_cuda_driver_version_forms() -> None:
    assert common.cuda_version_text(13000) == "13.0" and common.cuda_version_text(12040) == "12.4"
    banner = "| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: 13.0     |"
    assert common.cuda_version_from_smi(banner) == "13.0"
    assert common.cuda_version_from_smi("no banner") is None


def test_git_state_falls_back_to_the_kit_stamp_where_the_tree_has_no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_git", lambda *args: None)
    monkeypatch.setenv("LIFT3D_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("LIFT3D_GIT_DIRTY", "1")
    state = common.git_state()
    assert state["commit"] == "a" * 40 and state["dirty"] is True and "stamp" in state["from"]
    monkeypatch.delenv("LIFT3D_GIT_COMMIT")
    assert common.git_state() == {"commit": None, "branch": None, "dirty": None}


def test_without_flop_counting_there_is_no_floor() -> None:
    from benchmarks.probes import StageSample

    jobs = [
        bench_pipeline.JobSample("a.png", 0, 2.0, {"multiview": 1.5}, {"multiview": StageSample(None, 10)}),
        bench_pipeline.JobSample("b.png", 0, 4.0, {"multiview": 3.5}, {"multiview": StageSample(None, 30)}),
    ]
    summary = bench_pipeline.summarize_config(["multiview"], jobs, None, 1e12)
    stage = summary["stages"]["multiview"]
    assert stage["flops"] is None and stage["floor_s"] is None and stage["floor_fraction"] is None
    assert stage["latency_s"]["median"] == 2.5 and stage["peak_rss_bytes"] == 30
    assert summary["total"]["latency_s"]["median"] == 3.0 and summary["throughput_jobs_per_min"] == 20.0


def test_readme_block_comes_only_from_committed_results(fake_run: dict[str, Any], tmp_path: Path) -> None:
    from benchmarks import render_readme_table as readme

    document = json.loads(json.dumps(fake_run))
    path = tmp_path / "pipeline-tiny-cpu-test.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="smoke"):
        readme.render_block([path])
    document["smoke"] = False
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not committed"):
        readme.render_block([path])
    block = readme.render_block([path], allow_uncommitted=True)
    median = document["configs"][0]["total"]["latency_s"]["median"]
    assert "pipeline-tiny-cpu-test.json" in block and fmt(median) in block
    text = readme.replace_block(f"intro\n{readme.START}\nold numbers\n{readme.END}\noutro\n", block)
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("outro\n")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """../shared/images where present; else a synthetic object photo, so a fresh clone runs the smoke too."""
    shared = common.default_images_dir()
    if shared.is_dir() and any(p.suffix.lower() in common.IMAGE_SUFFIXES for p in shared.iterdir()):
        return shared
    from pipeline.engine import warmup_image_png

    folder = tmp_path_factory.mktemp("synthetic-photos")
    (folder / "synthetic.png").write_bytes(warmup_image_png(384))
    return folder


def test_http_client_bookkeeping_against_a_scripted_server() -> None:
    """429 then 202, SSE to the end event, GLB, DELETE: counts and record spans come out exact."""
    import asyncio

    import httpx

    record = {
        "id": "j1", "status": "succeeded", "created_at": "2026-01-01T00:00:00Z",
        "started_at": "2026-01-01T00:00:02.5Z", "finished_at": "2026-01-01T00:00:06Z",
        "timings": {"multiview": 3.0}, "links": {},
    }
    links = {"self": "/v1/jobs/j1", "events": "/v1/jobs/j1/events", "model": "/v1/jobs/j1/model.glb"}
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            assert b'name="steps"' in request.content and b"image/png" in request.content
            if calls.count("POST /v1/jobs") == 1:
                return httpx.Response(429, headers={"Retry-After": "0"})
            return httpx.Response(202, json={"id": "j1", "status": "queued", "queue_position": 0, "links": links})
        if request.url.path.endswith("/events"):
            body = (
                ": keep-alive\n\nevent: status\ndata: {\"status\": \"running\"}\n\n"
                f"event: end\ndata: {json.dumps(record)}\n\n"
            )
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        if request.url.path.endswith("model.glb"):
            return httpx.Response(200, content=b"glTF")
        return httpx.Response(204)

    async def scenario() -> tuple[Any, Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://bench") as client:
            photo = bench_http.Photo("p.png", b"\x89PNG\r\n\x1a\n", "image/png")
            generator = bench_http.LoadGenerator(client, [photo], {"steps": "2"}, job_timeout_s=5, delete=True)
            tally = bench_http.LevelTally()
            return await generator.one_job(photo, tally, None), tally

    outcome, tally = asyncio.run(scenario())
    assert calls[-1] == "DELETE /v1/jobs/j1" and "GET /v1/jobs/j1/model.glb" in calls
    assert (tally.attempts, tally.rejected_429, dict(tally.http_status)) == (2, 1, {429: 1, 202: 1})
    assert outcome.status == "succeeded" and outcome.timings == {"multiview": 3.0}
    assert outcome.queue_wait_s == pytest.approx(2.5) and outcome.service_s == pytest.approx(3.5)
    tally.outcomes.append(outcome)
    report = bench_http.level_report(1, 10.0, tally, 30.0)
    assert report["rate_429"] == 0.5 and report["throughput_jobs_per_min"] == 2.0
    assert report["device_busy_fraction"] == pytest.approx(3.0 / 30.0)  # multiview seconds / the level's time
    assert report["queue_wait_s"]["median"] == pytest.approx(2.5) and report["failed"] == 0


def test_gpu_sampler_reads_nvml_within_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVML path, on a machine without a GPU: a stand-in module with the same calls."""
    import sys
    import time
    import types

    from benchmarks.samplers import GpuSampler

    readings = iter([40.0, 60.0, 80.0])
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda index: f"gpu{index}",
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=next(readings)),
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=2**30),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    sampler = GpuSampler(index=0)
    assert sampler.available
    sampler.reset(until=time.perf_counter() + 60)
    for _ in range(3):
        sampler.sample()
    sampler.until = time.perf_counter() - 1  # the window closed: the drain is not sampled
    sampler.sample()
    report = sampler.report()
    assert report["samples"] == 3 and report["mean_percent"] == 60.0 and report["max_percent"] == 80.0
    assert report["peak_memory_used_bytes"] == 2**30
    sampler.close()
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: the report says why
    assert GpuSampler().report() == {"available": False, "reason": "nvidia-ml-py is not installed"}


def _only_json(folder: Path, prefix: str) -> dict[str, Any]:
    files = sorted(folder.glob(f"{prefix}*.json"))
    assert len(files) == 1, files
    assert files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text())


def _check_environment(document: dict[str, Any]) -> None:
    env = document["environment"]
    assert env["date_utc"].endswith("+00:00")
    assert env["command"].startswith("python -m benchmarks.")
    assert env["device"]["type"] == "cpu" and env["device"]["name"]
    assert "driver" in env["device"]
    assert env["versions"]["torch"] and env["versions"]["diffusers"]
    assert len(env["git"]["commit"] or "") == 40
    assert document["smoke"] is True and document["schema_version"] == common.SCHEMA_VERSION


@pytest.mark.timeout(300)
def test_bench_pipeline_smoke_tiny_engine(tmp_path: Path, u2netp_weights_dir: Path, photo_folder: Path) -> None:
    # One configuration, one photo, the smallest texture: the engine's warm-up, the FLOP-counting
    # job and one timed job. Several configurations and speedups are covered by the fake-stage test.
    torch.set_num_threads(2)
    small = "dtype=float32,steps=1,finish.texture_size=512,finish.target_faces=5000"
    code = bench_pipeline.main([
        "--images", str(photo_folder), "-n", "1", "--weights", "tiny", "--device", "cpu",
        "--weights-dir", str(u2netp_weights_dir), "--warmup", "0", "--config", f"baseline:{small}",
        "--matmul-size", "256", "--copy-mb", "16", "--out", str(tmp_path), "--smoke",
    ])
    assert code == 0
    document = _only_json(tmp_path, "smoke-pipeline-tiny-cpu-")
    _check_environment(document)
    assert document["weights"] == "tiny" and document["baseline"] == "baseline"
    assert document["device_peaks"]["matmul"]["float32"]["flops_per_second"] > 0
    assert document["device_peaks"]["copy"]["bytes_per_second"] > 0
    (entry,) = document["configs"]
    assert "error" not in entry, entry.get("traceback")
    assert entry["config"]["changes_from_preset"]["steps"] == 1 and entry["runtime"]["dtype"] == "float32"
    assert list(entry["stages"]) == STAGES
    for name, stage in entry["stages"].items():
        latency = stage["latency_s"]
        assert latency["n"] == 1 and 0 < latency["median"] <= latency["p90"], name
        assert stage["peak_rss_bytes"] > 0 and stage["peak_gpu_bytes"] is None
        assert stage["speedup_vs_baseline"] == 1.0
    for name in ("multiview", "reconstruct"):  # torch stages: counted, with a floor
        stage = entry["stages"][name]
        assert stage["flops"] > 0 and stage["floor_fraction"] > 0
        assert stage["floor_s"] == pytest.approx(stage["flops"] / entry["peak_flops_per_second"])
    # Attention on a CPU is counted too (torch has no formula for its fused CPU kernel).
    assert entry["stages"]["multiview"]["flops_by_op"]["aten._scaled_dot_product_flash_attention_for_cpu"] > 0
    assert entry["stages"]["background"]["flops"] == 0  # onnxruntime: invisible to torch, no floor
    assert entry["stages"]["background"]["floor_s"] is None
    assert entry["total"]["flops"] == sum(s["flops"] for s in entry["stages"].values())
    assert entry["throughput_jobs_per_min"] > 0 and set(entry["load_s_by_stage"]) == set(STAGES)


@pytest.mark.timeout(300)
def test_bench_pipeline_smoke_fast_pipeline(tmp_path: Path, u2netp_weights_dir: Path, photo_folder: Path) -> None:
    # The triposr preset runs the fast pipeline: TripoSR's sub-steps are recorded per job.
    torch.set_num_threads(2)
    code = bench_pipeline.main([
        "--images", str(photo_folder), "-n", "1", "--weights", "tiny", "--device", "cpu",
        "--weights-dir", str(u2netp_weights_dir), "--warmup", "0", "--no-flops", "--baseline", "triposr",
        "--config", "triposr:finish.texture_size=512,finish.target_faces=5000",
        "--matmul-size", "256", "--copy-mb", "16", "--out", str(tmp_path), "--smoke",
    ])
    assert code == 0
    document = _only_json(tmp_path, "smoke-pipeline-tiny-cpu-")
    (entry,) = document["configs"]
    assert "error" not in entry, entry.get("traceback")
    assert entry["pipeline"] == "fast" and entry["config"]["settings"]["profile"] == "fast"
    assert list(entry["stages"]) == ["decode", "background", "reconstruct", "finish"]
    substeps = entry["reconstruct_substeps"]
    assert entry["reconstruct_model"] == "triposr-tiny"
    assert list(substeps) == ["image tokens", "triplanes", "grid query", "marching cubes", "colour query"]
    assert all(s["n"] == 1 and s["median"] >= 0 for s in substeps.values())
    assert "| triposr | triposr-tiny | triplanes |" in next(tmp_path.glob("*.md")).read_text()


@pytest.mark.timeout(300)
def test_bench_http_smoke_real_server(tmp_path: Path, u2netp_weights_dir: Path, photo_folder: Path) -> None:
    # Queue size 1 and three clients: one job runs, one waits, the third must see a 429. Serial
    # engine, so that holds exactly (the lanes would hold up to four jobs beside the queue;
    # tests/server/test_worker_lanes.py covers them through HTTP).
    code = bench_http.main([
        "--images", str(photo_folder), "-n", "2", "--weights", "tiny", "--device", "cpu",
        "--weights-dir", str(u2netp_weights_dir), "--queue-size", "1", "--levels", "1,3", "--window", "1",
        "--server-env", "LIFT3D_OVERLAP=false",
        "--steps", "1", "--option", "texture_size=512", "--option", "target_faces=5000", "--warmup", "0",
        "--out", str(tmp_path), "--smoke",
    ])
    assert code == 0
    document = _only_json(tmp_path, "smoke-http-tiny-cpu-")
    _check_environment(document)
    server = document["server"]
    assert server["started_by_bench"] and server["exit_code"] == 0 and server["queue_size"] == 1
    assert server["weights"] == "tiny" and server["startup_s"] > 0
    single, crowded = document["levels"]
    assert (single["concurrency"], crowded["concurrency"]) == (1, 3)
    assert document["job_options"] == {"seed": 0, "steps": 1, "texture_size": "512", "target_faces": "5000"}
    for level in (single, crowded):
        assert level["succeeded"] >= 1 and level["failed"] == 0 and level["server_errors_5xx"] == 0
        assert level["client_errors"] == 0 and level["transport_errors"] == 0
        assert level["throughput_jobs_per_min"] > 0 and 0 < level["device_busy_fraction"] <= 1.0
        assert 0 < level["latency_s"]["median"] <= level["latency_s"]["p95"]
        assert level["queue_wait_s"]["n"] == level["service_s"]["n"] == level["succeeded"]
        assert level["service_s"]["median"] > 0 and level["queue_wait_s"]["min"] >= 0
        assert sorted(level["server_stage_s"]) == sorted(STAGES)  # the job records' per-stage timings
        gpu = level["gpu_utilization"]
        assert gpu["samples"] > 0 if gpu["available"] else gpu["reason"]  # NVML, or why not
        assert level["server_process"]["peak_rss_bytes"] > 0
    assert single["rate_429"] == 0.0
    assert crowded["rejected_429"] > 0 and crowded["rate_429"] == crowded["rejected_429"] / crowded["attempts"]
    assert crowded["queue_wait_s"]["max"] > 0  # the second job waited behind the first
    assert "| 3 |" in http_markdown(document)
