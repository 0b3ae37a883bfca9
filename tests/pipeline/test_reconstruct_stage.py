"""Reconstruct stage: six views in, a coloured mesh in the world frame out (tiny network and an analytic stand-in)."""

from __future__ import annotations

import json
import platform
import time
from typing import Callable

import numpy as np
import pytest
import torch
import trimesh

from lift3d.settings import load_settings
from lift3d.errors import EmptyReconstruction, JobCancelled, Lift3dError
from pipeline.events import CancelToken, ProgressBus, ProgressEvent
from pipeline.options import JobOptions, resolve_options
from pipeline.reconstruct import SUBSTEPS, ReconstructStage
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.support.paths import REPO



class AnalyticSphereField:
    """Test stand-in for the triplane field: density 40 (r - |p - c|) + 10, colour (p + 1) / 2."""

    def __init__(self, centre: tuple[float, float, float], radius: float, offset: float = 10.0) -> None:
        self.centre = torch.tensor(centre)
        self.radius = radius
        self.offset = offset
        self.slabs = 0

    def density_at(self, points: torch.Tensor) -> torch.Tensor:
        return 40.0 * (self.radius - (points - self.centre).norm(dim=-1)) + self.offset

    def density_grid(self, planes, resolution: int, *, chunk: int, between_chunks: Callable[[], None] | None = None):
        axis = torch.linspace(-1.0, 1.0, resolution)
        slabs = []
        for x in axis.split(max(1, chunk // resolution**2)):
            points = torch.stack(torch.meshgrid(x, axis, axis, indexing="ij"), dim=-1)
            slabs.append(self.density_at(points))
            self.slabs += 1
            if between_chunks is not None:
                between_chunks()
        return torch.cat(slabs).unsqueeze(0)

    def rgb(self, planes, points: torch.Tensor, *, chunk: int) -> torch.Tensor:
        return ((points + 1) / 2).clamp(0, 1)


class AnalyticSphereModel:
    """Test stand-in for the network: ignores the views, exposes an analytic field. Never a shipped mode."""

    def __init__(self, **field) -> None:
        self.synthesizer = AnalyticSphereField(**field)
        self.seen_images: torch.Tensor | None = None
        self.seen_cameras: torch.Tensor | None = None

    def encode(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        self.seen_images, self.seen_cameras = images, cameras
        return torch.zeros(images.shape[1], 1, 4)

    def planes_from_tokens(self, tokens: torch.Tensor, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 3, 1, 2, 2)


@pytest.fixture
def analytic_sphere_model() -> AnalyticSphereModel:
    return AnalyticSphereModel(centre=(0.2, -0.1, 0.05), radius=0.5)


def test_analytic_stand_in_is_the_sphere_it_claims() -> None:
    model = AnalyticSphereModel(centre=(0.2, -0.1, 0.05), radius=0.5)
    field = model.synthesizer
    assert float(field.density_at(torch.tensor([[0.7, -0.1, 0.05]]))) == pytest.approx(10.0)
    assert float(field.density_at(field.centre[None])) == pytest.approx(30.0)
    grid = field.density_grid(None, 9, chunk=81 * 3)[0]
    assert grid.shape == (9, 9, 9) and field.slabs == 3
    assert float(grid[4, 4, 4]) == pytest.approx(float(field.density_at(torch.zeros(1, 3))))


def synthetic_views() -> torch.Tensor:
    """Six 320-px views of a coloured disc on white (values k/255 like decoded images)."""
    yy, xx = torch.meshgrid(torch.arange(320.0), torch.arange(320.0), indexing="ij")
    disc = ((xx - 160) ** 2 + (yy - 170) ** 2 < 100**2).float()
    colour = torch.tensor([200, 80, 40]).view(3, 1, 1) / 255
    view = disc * colour + (1 - disc)
    return torch.stack([torch.roll(view, shifts=8 * i, dims=-1) for i in range(6)]).clamp(0, 1)


def run_stage(
    stage: ReconstructStage, *, weights: str, views: torch.Tensor | None = None, cancel: CancelToken | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None, **overrides,
) -> tuple[JobState, list[ProgressEvent]]:
    overrides.setdefault("engine__reconstruct__model", "instant-nerf-large")  # this file covers the NeRF path
    settings = load_settings({}, engine__weights=weights, engine__device="cpu", **overrides)
    runtime = Runtime.from_settings(settings.engine)
    stage.load(runtime)
    job = JobState(options=resolve_options(JobOptions(seed=1), settings.engine))
    job.views = synthetic_views() if views is None else views
    events: list[ProgressEvent] = []
    bus = ProgressBus()
    bus.subscribe(events.append)
    if on_event is not None:
        bus.subscribe(on_event)
    ctx = StageContext(runtime, "reconstruct", bus, cancel or CancelToken(), 0.0, 1.0)
    stage.run(job, ctx)
    return job, events


def test_tiny_mode_end_to_end_gives_a_coloured_closed_mesh() -> None:
    torch.set_num_threads(2)
    stage = ReconstructStage()
    started = time.perf_counter()
    job, events = run_stage(stage, weights="tiny")
    elapsed = time.perf_counter() - started
    mesh = job.mesh
    assert mesh is not None and len(mesh.faces) > 0
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int64
    assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices)
    assert np.abs(mesh.vertices).max() <= 1.0
    assert mesh.vertex_colors.shape == mesh.vertices.shape and mesh.vertex_colors.dtype == np.float32
    assert 0.0 <= mesh.vertex_colors.min() and mesh.vertex_colors.max() <= 1.0
    assert trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).is_watertight
    np.testing.assert_allclose(mesh.color_query(mesh.vertices[:500]), mesh.vertex_colors[:500], atol=1e-5)
    record = job.metadata["reconstruct"]
    assert record["weights_mode"] == "tiny" and job.qa["reconstruct"]["weights_mode"] == "tiny"
    assert record["iso_rule"].startswith("quantile 0.7") and mesh.iso_rule == record["iso_rule"]
    assert record["grid_resolution"] == 32  # the documented tiny cap
    assert [e.message for e in events] == list(SUBSTEPS)
    assert set(record["timings"]) == set(SUBSTEPS)
    assert elapsed < 30  # ~1 s on 2 cores; generous for a shared machine


def test_world_frame_threshold_and_colours_on_an_analytic_sphere(analytic_sphere_model: AnalyticSphereModel) -> None:
    """Locked-mode rule (density threshold 10) on a known field: the sphere comes back where it is."""
    stage = ReconstructStage(analytic_sphere_model)
    job, _ = run_stage(stage, weights="locked", engine__reconstruct__grid_resolution=48)
    mesh = job.mesh
    assert mesh is not None and mesh.iso_level == 10.0 and mesh.iso_rule == "threshold 10"
    voxel = 2.0 / 47
    centre = np.array([0.2, -0.1, 0.05])
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert abs(radii.mean() - 0.5) < 0.5 * voxel
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre, atol=0.5 * voxel)
    np.testing.assert_allclose(mesh.vertex_colors, (mesh.vertices + 1) / 2, atol=1e-6)
    query = np.array([[0.0, 0.0, 0.0], [2.0, -3.0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(mesh.color_query(query), [[0.5, 0.5, 0.5], [1.0, 0.0, 0.75]], atol=1e-6)
    assert trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).is_watertight
    assert job.metadata["reconstruct"]["weights_mode"] == "locked"


def test_random_weights_iso_level_is_the_grid_quantile(analytic_sphere_model: AnalyticSphereModel) -> None:
    stage = ReconstructStage(analytic_sphere_model)
    job, _ = run_stage(
        stage, weights="dummy", engine__reconstruct__grid_resolution=48, engine__reconstruct__random_weights_iso_quantile=0.9
    )
    mesh = job.mesh
    assert mesh is not None and mesh.iso_rule.startswith("quantile 0.9")
    # 10 % of the grid points lie above the level. Each of the 48^3 points stands for one cell of
    # side 2/47, so the enclosed volume is 10 % of (48 * 2/47)^3, a sphere around the field's centre.
    enclosed = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).volume
    assert enclosed == pytest.approx(0.1 * (48 * 2 / 47) ** 3, rel=0.02)
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), [0.2, -0.1, 0.05], atol=2 / 47)


def test_four_view_setting_feeds_views_0_2_4_5(analytic_sphere_model: AnalyticSphereModel) -> None:
    views = torch.rand(6, 3, 32, 32)
    run_stage(ReconstructStage(analytic_sphere_model), weights="locked", views=views,
              engine__reconstruct__views=4, engine__reconstruct__grid_resolution=16)
    seen = analytic_sphere_model.seen_images
    assert seen is not None and seen.shape == (1, 4, 3, 32, 32)
    torch.testing.assert_close(seen[0], views[[0, 2, 4, 5]])
    assert analytic_sphere_model.seen_cameras.shape == (1, 4, 16)


def test_cancellation_stops_between_sub_steps(analytic_sphere_model: AnalyticSphereModel) -> None:
    cancel = CancelToken()

    def cancel_after_encode(event: ProgressEvent) -> None:
        if event.message == "encode":
            cancel.cancel("client cancelled")

    with pytest.raises(JobCancelled):
        run_stage(ReconstructStage(analytic_sphere_model), weights="locked", cancel=cancel, on_event=cancel_after_encode,
                  engine__reconstruct__grid_resolution=16)
    assert analytic_sphere_model.synthesizer.slabs == 0  # the grid query never started


def test_no_surface_at_the_threshold_is_a_typed_error() -> None:
    empty = AnalyticSphereModel(centre=(0.0, 0.0, 0.0), radius=0.5, offset=-100.0)
    with pytest.raises(EmptyReconstruction):
        run_stage(ReconstructStage(empty), weights="locked", engine__reconstruct__grid_resolution=16)


def test_views_of_the_wrong_shape_are_refused(analytic_sphere_model: AnalyticSphereModel) -> None:
    with pytest.raises(Lift3dError, match=r"\[6, 3, H, W\]"):
        run_stage(ReconstructStage(analytic_sphere_model), weights="locked", views=torch.rand(5, 3, 32, 32))


@pytest.mark.gpu
@pytest.mark.parametrize("model_name", ["instant-nerf-large", "instant-nerf-base"])
def test_full_size_dummy_reconstruction_benchmark_on_gpu(model_name: str) -> None:
    """Full-size random weights at grid 256 on CUDA: per-sub-step time and peak memory to benchmarks/results/."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    settings = load_settings({}, engine__weights="dummy", engine__device="cuda", engine__reconstruct__model=model_name,
                             engine__reconstruct__grid_resolution=256)
    runtime = Runtime.from_settings(settings.engine)
    stage = ReconstructStage()
    stage.load(runtime)
    job = JobState(options=resolve_options(JobOptions(seed=1), settings.engine))
    ctx = StageContext(runtime, "reconstruct", ProgressBus(), CancelToken(), 0.0, 1.0)
    job.views = synthetic_views()
    stage.run(job, ctx)  # warm-up (kernels, allocator)
    torch.cuda.reset_peak_memory_stats()
    job.views = synthetic_views()
    started = time.perf_counter()
    stage.run(job, ctx)
    total = time.perf_counter() - started
    record = job.metadata["reconstruct"]
    assert record["marching_cubes"] == "torch" and record["grid_resolution"] == 256
    assert job.mesh is not None and len(job.mesh.faces) > 0
    result = {
        "benchmark": "reconstruct stage, full-size dummy weights (random: geometry is meaningless)",
        "model": model_name,
        "weights_mode": "dummy",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "grid_resolution": 256,
        "seconds": record["timings"],
        "total_seconds": round(total, 4),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "vertices": record["vertices"],
        "faces": record["faces"],
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name().replace(" ", "-").lower()
    (out / f"reconstruct-{model_name}-dummy-{gpu}.json").write_text(json.dumps(result, indent=2) + "\n")
