"""The multiview stage in the engine's terms: outputs, progress, cancellation, seeds, weight modes."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from lift3d.settings import EngineSettings, MultiviewSettings
from lift3d.weights.catalog import INSTANTMESH_UNET as INSTANTMESH_UNET_FILE, ZERO123PLUS_DIR as ZERO123PLUS_FOLDER
from lift3d.errors import JobCancelled, WeightsMissing
from pipeline.events import CancelToken, ProgressBus, ProgressEvent
from pipeline.multiview import MultiviewStage
from pipeline.options import JobOptions, resolve_options
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def runtime_for(mode: str = "tiny", weights_dir: str = "unused", variant: str = "instantmesh") -> Runtime:
    settings = EngineSettings(
        device="cpu", weights=mode, weights_dir=weights_dir, multiview=MultiviewSettings(variant=variant)
    )
    return Runtime.from_settings(settings)


@pytest.fixture(scope="module")
def tiny_stage() -> MultiviewStage:
    stage = MultiviewStage()
    stage.load(runtime_for("tiny"))
    return stage


def cutout(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = np.zeros((320, 320, 4), dtype=np.uint8)
    array[..., :3] = rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)
    array[60:260, 80:240, 3] = 255
    return Image.fromarray(array, "RGBA")


def make_job(seed: int, steps: int = STEPS, return_views: bool = False) -> JobState:
    options = resolve_options(JobOptions(seed=seed, steps=steps, return_views=return_views), EngineSettings())
    image = cutout()
    return JobState(options=options, cutout=image)


def context(events: list[ProgressEvent], cancel: CancelToken | None = None) -> StageContext:
    bus = ProgressBus()
    bus.subscribe(events.append)
    return StageContext(runtime_for("tiny"), "multiview", bus, cancel or CancelToken(), 0.2, 0.5)


def test_stage_outputs_follow_the_contract(tiny_stage):
    events: list[ProgressEvent] = []
    job = make_job(seed=11, return_views=True)
    tiny_stage.run(job, context(events))
    assert job.views.shape == (6, 3, 320, 320) and job.views.dtype == torch.float32
    assert job.views.device.type == "cpu"
    assert 0.0 <= float(job.views.min()) and float(job.views.max()) <= 1.0
    assert job.views_grid.size == (640, 960) and job.views_grid.mode == "RGB"
    assert Image.open(io.BytesIO(job.previews["views"])).size == (640, 960)
    meta = job.metadata["multiview"]
    assert meta["seed"] == 11 and meta["steps"] == STEPS and meta["weights_mode"] == "tiny"
    assert "random weights" in meta["model"]

    # one event per denoising step, monotone fractions inside the stage's span
    assert [event.step for event in events] == list(range(1, STEPS + 1))
    assert all(event.total == STEPS and event.stage == "multiview" for event in events)
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and len(set(fractions)) == STEPS
    assert fractions[-1] == pytest.approx(0.7)


def test_seed_is_honoured(tiny_stage):
    runs = {}
    for name, seed in (("a", 5), ("a_again", 5), ("b", 6)):
        job = make_job(seed=seed, steps=2)
        tiny_stage.run(job, context([]))
        runs[name] = job.views
    assert torch.equal(runs["a"], runs["a_again"])
    assert (runs["a"] - runs["b"]).abs().max() > 1e-3


def test_previews_only_when_asked(tiny_stage):
    job = make_job(seed=1, steps=1)
    tiny_stage.run(job, context([]))
    assert "views" not in job.previews


def test_cancellation_stops_within_one_step(tiny_stage):
    events: list[ProgressEvent] = []
    cancel = CancelToken()

    def cancel_after_second_step(event: ProgressEvent) -> None:
        if event.step == 2:
            cancel.cancel("client went away")

    bus = ProgressBus([events.append, cancel_after_second_step])
    ctx = StageContext(runtime_for("tiny"), "multiview", bus, cancel, 0.0, 1.0)
    job = make_job(seed=3, steps=10)
    torch.set_num_threads(2)  # the tiny model runs single-threaded and must restore this, even when cancelled
    try:
        with pytest.raises(JobCancelled):
            tiny_stage.run(job, ctx)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert [event.step for event in events] == [1, 2]
    assert job.views is None


def test_cancellation_from_another_thread_before_the_run(tiny_stage):
    cancel = CancelToken()
    worker = threading.Thread(target=cancel.cancel)
    worker.start()
    worker.join()
    events: list[ProgressEvent] = []
    with pytest.raises(JobCancelled):
        tiny_stage.run(make_job(seed=3), context(events, cancel))
    assert events == []


def test_locked_mode_without_weights_names_the_pull_command(tmp_path):
    with pytest.raises(WeightsMissing, match="weights pull"):
        MultiviewStage().load(runtime_for("locked", weights_dir=str(tmp_path)))


def test_locked_mode_loads_the_weights_dir_layout(tmp_path, tiny_stage):
    """A tiny model saved in the real folder layout plus an InstantMesh UNet file: locked mode loads both."""
    from safetensors.torch import save_file

    from models.zero123plus.components import TINY_CONFIG_DIR

    components = tiny_stage.model.pipeline.components
    folder = tmp_path / ZERO123PLUS_FOLDER
    for name, model in components.models().items():
        model.save_pretrained(folder / name)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    components.feature_extractor_clip.save_pretrained(folder / "feature_extractor_clip")
    components.feature_extractor_vae.save_pretrained(folder / "feature_extractor_vae")
    for extra in ("model_index.json", "scheduler/scheduler_config.json"):
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_text((TINY_CONFIG_DIR / extra).read_text())

    official = MultiviewStage()
    official.load(runtime_for("locked", weights_dir=str(tmp_path), variant="official"))
    assert official.model.pipeline.background_rgb == (127, 127, 127)
    assert (official.model.width, official.model.height) == (640, 960)

    with pytest.raises(WeightsMissing):  # the instantmesh variant needs its UNet file too
        MultiviewStage().load(runtime_for("locked", weights_dir=str(tmp_path)))
    white_unet = {key: value + 0.5 for key, value in components.unet.state_dict().items()}
    (tmp_path / INSTANTMESH_UNET_FILE).parent.mkdir(parents=True)
    save_file(white_unet, tmp_path / INSTANTMESH_UNET_FILE)
    stage = MultiviewStage()
    stage.load(runtime_for("locked", weights_dir=str(tmp_path)))
    assert stage.model.pipeline.background_rgb == (255, 255, 255)
    assert torch.equal(stage.model.pipeline.components.unet.conv_in.bias, white_unet["conv_in.bias"])
    job = make_job(seed=2, steps=1)
    stage.run(job, StageContext(runtime_for("locked"), "multiview", ProgressBus(), CancelToken(), 0.0, 1.0))
    assert job.views.shape == (6, 3, 320, 320)
    assert "unet" in job.metadata["multiview"] and "revisions" in job.metadata["multiview"]


def test_views_come_in_the_order_the_reconstruction_cameras_expect():
    """The grid's row-major views are the poses the reconstruct stage's cameras are built for."""
    from models.instantmesh.cameras import view_poses
    from models.zero123plus.views import VIEW_POSES

    cameras = view_poses(6)
    assert [pose.azimuth for pose in VIEW_POSES] == [round(c["azimuth_deg"]) for c in cameras] == [30, 90, 150, 210, 270, 330]
    assert [pose.elevation for pose in VIEW_POSES] == [round(c["elevation_deg"]) for c in cameras] == [20, -10, 20, -10, 20, -10]
