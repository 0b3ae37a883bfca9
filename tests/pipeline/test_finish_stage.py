"""FinishStage wiring: options and settings in, GLB and QA out, progress, cancellation, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lift3d.settings import EngineSettings, FinishSettings
from lift3d.errors import JobCancelled
from pipeline.events import CancelToken, ProgressBus, ProgressEvent
from pipeline.finish import SUB_STEPS, FinishStage
from pipeline.options import JobOptions, resolve_options
from pipeline.runtime import Runtime
from pipeline.stage import Stage, StageContext
from pipeline.state import JobState, ReconstructedMesh
from tests.support.finish_analytic import gradient_colours, read_glb, sphere
from tests.support.gltf_validator import assert_valid_glb

QA_KEYS = {"vertices", "faces", "components_kept", "components_removed", "watertight", "manifold", "bounding_box", "texture_size", "bytes"}


def make_job(settings: EngineSettings, **options: object) -> JobState:
    vertices, faces = sphere(resolution=48)
    job = JobState(options=resolve_options(JobOptions(seed=7, **options), settings))
    job.mesh = ReconstructedMesh(
        vertices=vertices, faces=faces, vertex_colors=gradient_colours(vertices), color_query=gradient_colours
    )
    job.metadata.update(
        seed=7,
        weights_mode="tiny",
        multiview={"model": "zero123plus-v1.2", "revision": "abc123"},
        reconstruct={"model": "instant-nerf-large", "weights_mode": "tiny", "faces": len(faces)},
    )
    job.qa["reconstruct"] = {"faces": len(faces)}
    return job


def run_stage(settings: EngineSettings, job: JobState, cancel: CancelToken | None = None) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []
    runtime = Runtime.from_settings(settings)
    stage = FinishStage()
    assert isinstance(stage, Stage) and stage.name == "finish"
    stage.load(runtime)
    ctx = StageContext(runtime, stage.name, ProgressBus([events.append]), cancel or CancelToken(), 0.9, 0.1)
    stage.run(job, ctx)
    return events


def test_stage_sets_glb_and_qa_and_reports_each_sub_step() -> None:
    settings = EngineSettings(device="cpu", weights="tiny", finish=FinishSettings(scale=1.5))
    job = make_job(settings, target_faces=3000, texture_size=512)
    events = run_stage(settings, job)

    assert [event.message for event in events] == list(SUB_STEPS)
    assert [event.step for event in events] == [1, 2, 3, 4, 5]
    assert events[-1].fraction == pytest.approx(1.0)
    assert QA_KEYS <= set(job.qa)
    assert job.qa["reconstruct"] == {"faces": len(job.mesh.faces)}  # earlier stages' QA is kept
    assert job.qa["bytes"] == len(job.glb) and job.qa["texture_size"] == 512
    assert abs(job.qa["faces"] - 3000) <= 60
    extent = np.subtract(job.qa["bounding_box"]["max"], job.qa["bounding_box"]["min"])
    assert extent.max() == pytest.approx(1.5, abs=1e-5)

    assert_valid_glb(job.glb)
    asset = read_glb(job.glb).gltf.asset
    assert asset.generator.startswith("lift3d ")
    assert asset.extras["seed"] == 7 and asset.extras["weights_mode"] == "tiny"
    assert asset.extras["models"]["multiview"] == {"model": "zero123plus-v1.2", "revision": "abc123"}
    assert asset.extras["models"]["reconstruct"]["model"] == "instant-nerf-large"


def test_stage_honours_vertex_texture_option() -> None:
    settings = EngineSettings(device="cpu", weights="tiny")
    job = make_job(settings, target_faces=0, texture="vertex")
    run_stage(settings, job)
    contents = read_glb(job.glb)
    assert contents.colors is not None and contents.texture is None
    assert job.qa["texture_size"] is None and job.qa["faces"] == len(contents.indices)
    assert_valid_glb(job.glb)


def test_stage_stops_between_sub_steps_when_cancelled() -> None:
    settings = EngineSettings(device="cpu", weights="tiny")
    job = make_job(settings, target_faces=3000, texture="vertex")
    cancel = CancelToken()
    seen: list[str] = []

    def cancel_after_decimate(event: ProgressEvent) -> None:
        seen.append(event.message)
        if event.message == "decimate":
            cancel.cancel("client went away")

    runtime = Runtime.from_settings(settings)
    stage = FinishStage()
    stage.load(runtime)
    ctx = StageContext(runtime, "finish", ProgressBus([cancel_after_decimate]), cancel, 0.0, 1.0)
    with pytest.raises(JobCancelled):
        stage.run(job, ctx)
    assert seen == ["clean", "decimate"] and job.glb is None


def test_finishes_what_the_tiny_reconstruction_produces() -> None:
    """The real hand-over: ReconstructStage (tiny seeded weights, CPU) -> FinishStage -> a valid GLB."""
    from pipeline.reconstruct import ReconstructStage

    settings = EngineSettings(device="cpu", weights="tiny")
    runtime = Runtime.from_settings(settings)
    job = JobState(options=resolve_options(JobOptions(seed=3, texture_size=512), settings))
    generator = torch.Generator().manual_seed(3)
    job.views = torch.rand(6, 3, 320, 320, generator=generator)
    job.metadata.update(seed=3, weights_mode="tiny")
    reconstruct = ReconstructStage()
    reconstruct.load(runtime)
    reconstruct.run(job, StageContext(runtime, "reconstruct", ProgressBus(), CancelToken(), 0.0, 0.9))
    assert job.mesh is not None

    run_stage(settings, job)
    report = assert_valid_glb(job.glb)
    assert report["info"]["totalTriangleCount"] == job.qa["faces"] > 0
    assert job.qa["bounding_box"]["min"][1] == pytest.approx(0.0, abs=1e-6)
    assert read_glb(job.glb).gltf.asset.extras["models"]["reconstruct"]["weights_mode"] == "tiny"
