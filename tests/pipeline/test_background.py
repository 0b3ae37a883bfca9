"""Background removal with the real u2netp model on real photos, plus the framing rules."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.zero123plus.preprocess import composite_on_background
from server.problems import http_status
from PIL import Image

from lift3d.settings import EngineSettings
from lift3d import errors
from pipeline.background import (
    FOREGROUND_ALPHA,
    BackgroundStage,
    BorderColourSegmenter,
    foreground_bbox,
    frame_foreground,
)
from pipeline.decode import decode_image
from pipeline.events import CancelToken, ProgressBus
from pipeline.options import JobOptions, resolve_options
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from tests.support.paths import shared_path

RATIO = 0.85
SIZE = 320
PHOTOS = ["animal-1.jpg", "bird.jpg", "car-1.jpg", "chair_wood.jpg", "fruit.jpg", "plants-1.jpg", "teapot.png"]


def runtime_for(weights_dir: Path, weights: str = "locked") -> Runtime:
    return Runtime.from_settings(EngineSettings(device="cpu", weights=weights, weights_dir=str(weights_dir)))


def run_stage(stage: BackgroundStage, runtime: Runtime, image: Image.Image, **options) -> JobState:
    job = JobState(options=resolve_options(JobOptions(seed=0, **options), runtime.settings), image=image)
    stage.run(job, StageContext(runtime, stage.name, ProgressBus(), CancelToken(), 0.0, 1.0))
    return job


def foreground_ratio(cutout: Image.Image) -> float:
    """The measure: larger side of the alpha >= 128 bounding box / output side."""
    left, top, right, bottom = foreground_bbox(cutout.getchannel("A"))
    return max(right - left, bottom - top) / cutout.width


def load_photo(name: str) -> Image.Image:
    from lift3d.settings import DecodeSettings

    return decode_image(shared_path("images", name).read_bytes(), DecodeSettings())


class ExplodingSegmenter:
    name = "must-not-run"

    def mask(self, image: Image.Image) -> Image.Image:
        raise AssertionError("the segmenter ran although the mode says it must not")


@pytest.fixture(scope="module")
def u2netp_stage(u2netp_weights_dir: Path) -> tuple[BackgroundStage, Runtime]:
    runtime = runtime_for(u2netp_weights_dir)
    stage = BackgroundStage()
    stage.load(runtime)
    return stage, runtime


# ---------------------------------------------------------------- real model, real photos


@pytest.mark.shared
@pytest.mark.parametrize("name", PHOTOS)
def test_u2netp_cutout_is_centred_at_the_foreground_ratio(u2netp_stage, name):
    stage, runtime = u2netp_stage
    job = run_stage(stage, runtime, load_photo(name), remove_background="on")
    cutout = job.cutout
    assert job.metadata["background"]["mask"] == "u2netp"
    assert cutout.mode == "RGBA" and cutout.size == (SIZE, SIZE)

    alpha = np.asarray(cutout.getchannel("A"))
    assert (alpha >= FOREGROUND_ALPHA).mean() > 0.05, "the mask is (nearly) empty"
    assert (alpha == 0).mean() > 0.05, "nothing was removed"

    assert abs(foreground_ratio(cutout) - RATIO) <= 0.02 * RATIO
    left, top, right, bottom = foreground_bbox(cutout.getchannel("A"))
    assert abs((left + right) / 2 - SIZE / 2) <= 2 and abs((top + bottom) / 2 - SIZE / 2) <= 2

    # What the multiview model sees: composited on its white background, removed pixels are white.
    condition = composite_on_background(cutout, (255, 255, 255))
    assert condition.mode == "RGB" and condition.size == (SIZE, SIZE)
    assert np.asarray(condition)[alpha == 0].min() == 255


@pytest.mark.shared
def test_auto_keeps_a_real_alpha_channel_untouched(u2netp_weights_dir):
    chair = load_photo("chair.png")
    assert chair.mode == "RGBA"
    runtime = runtime_for(u2netp_weights_dir)
    job = run_stage(BackgroundStage(segmenter=ExplodingSegmenter()), runtime, chair, remove_background="auto")
    assert job.metadata["background"]["mask"] == "input-alpha"
    # Exactly the input's own RGBA, only reframed: no model touched the alpha.
    expected = frame_foreground(chair, RATIO, SIZE)
    assert np.array_equal(np.asarray(job.cutout), np.asarray(expected))
    assert abs(foreground_ratio(job.cutout) - RATIO) <= 0.02 * RATIO


@pytest.mark.shared
def test_on_segments_even_over_real_alpha(u2netp_stage):
    stage, runtime = u2netp_stage
    chair = load_photo("chair.png")
    job = run_stage(stage, runtime, chair, remove_background="on")
    assert job.metadata["background"]["mask"] == "u2netp"
    assert not np.array_equal(np.asarray(job.cutout), np.asarray(frame_foreground(chair, RATIO, SIZE)))


# ---------------------------------------------------------------- modes and framing (synthetic)


def off_centre_object(width: int = 300, height: int = 200) -> Image.Image:
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((30, 140, 60, 255), (20, 30, 80, 150))  # 60 wide, 120 tall, far from the centre
    return image


def test_framing_recentres_and_scales_the_bounding_box():
    cutout = frame_foreground(off_centre_object(), RATIO, SIZE)
    left, top, right, bottom = foreground_bbox(cutout.getchannel("A"))
    assert abs((bottom - top) / SIZE - RATIO) <= 0.01
    assert abs((right - left) / (bottom - top) - 0.5) <= 0.02  # aspect kept
    assert abs((left + right) / 2 - SIZE / 2) <= 1 and abs((top + bottom) / 2 - SIZE / 2) <= 1


def test_off_uses_the_whole_image_on_white(tmp_path):
    image = Image.new("RGB", (200, 100), (10, 20, 200))
    runtime = runtime_for(tmp_path, weights="tiny")
    job = run_stage(BackgroundStage(segmenter=ExplodingSegmenter()), runtime, image, remove_background="off")
    assert job.cutout.size == (SIZE, SIZE)
    condition = np.asarray(composite_on_background(job.cutout, (255, 255, 255)))
    assert tuple(condition[SIZE // 2, 5]) == (10, 20, 200)  # full width kept: no crop, no recentre
    assert condition[5, SIZE // 2].min() == 255  # padding above is white
    assert job.metadata["background"]["mask"] == "none"


def test_preview_only_when_asked(tmp_path):
    runtime = runtime_for(tmp_path, weights="tiny")
    stage = BackgroundStage(segmenter=BorderColourSegmenter())
    image = Image.new("RGB", (120, 120), (255, 255, 255))
    image.paste((200, 30, 30), (30, 40, 90, 100))
    assert run_stage(stage, runtime, image, remove_background="on").previews == {}
    job = run_stage(stage, runtime, image, remove_background="on", return_views=True)
    preview = Image.open(io.BytesIO(job.previews["cutout"]))
    assert preview.format == "PNG" and preview.mode == "RGBA" and preview.size == (SIZE, SIZE)
    assert np.array_equal(np.asarray(preview), np.asarray(job.cutout))


def test_an_empty_mask_is_a_typed_error(tmp_path):
    runtime = runtime_for(tmp_path, weights="tiny")
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    with pytest.raises(errors.NoForeground) as raised:
        run_stage(BackgroundStage(segmenter=BorderColourSegmenter()), runtime, blank, remove_background="on")
    assert http_status(raised.value) == 422


def test_tiny_mode_without_the_file_uses_the_labelled_heuristic(tmp_path):
    stage = BackgroundStage()
    stage.load(runtime_for(tmp_path, weights="tiny"))
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    image.paste((0, 0, 0), (10, 10, 40, 70))
    job = run_stage(stage, runtime_for(tmp_path, weights="tiny"), image, remove_background="on")
    assert job.metadata["background"]["mask"] == "border-colour-heuristic"


# ---------------------------------------------------------------- the model file


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt by rembg to fetch a model fails the test."""
    import pooch

    def refuse(*args, **kwargs):
        raise AssertionError(f"rembg tried to download: {args}")

    monkeypatch.setattr(pooch, "retrieve", refuse)


def test_locked_mode_without_the_file_raises_weights_missing(tmp_path, no_downloads):
    stage = BackgroundStage()
    with pytest.raises(errors.WeightsMissing, match="lift3d weights pull"):
        stage.load(runtime_for(tmp_path, weights="locked"))
    assert not any(tmp_path.rglob("*.onnx"))


def test_a_corrupted_model_file_is_refused(tmp_path, u2netp_weights_dir, no_downloads):
    from models.background import load_session, model_file

    corrupt = model_file(tmp_path, "u2netp")
    corrupt.parent.mkdir(parents=True)
    shutil.copyfile(model_file(u2netp_weights_dir, "u2netp"), corrupt)
    with open(corrupt, "r+b") as handle:  # one flipped byte deep inside the weights
        handle.seek(2_000_000)
        byte = handle.read(1)
        handle.seek(2_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(errors.WeightsCorrupt, match="sha256"):
        load_session(tmp_path, "u2netp")


def test_the_session_reads_our_file_without_touching_the_environment(u2netp_weights_dir, no_downloads):
    from models.background import load_session

    before = {key: os.environ.get(key) for key in ("U2NET_HOME", "REMBG_HOME", "MODEL_CHECKSUM_DISABLED")}
    session = load_session(u2netp_weights_dir, "u2netp", prefer_cuda=False)
    assert session.inner_session.get_providers() == ["CPUExecutionProvider"]
    assert {key: os.environ.get(key) for key in before} == before


def test_the_model_file_is_checked_against_the_weights_lock_pin(tmp_path):
    from models.background import verify_model_file

    with pytest.raises(errors.WeightsMissing, match=r"lift3d weights pull --profile tiny"):
        verify_model_file(tmp_path, "u2netp")
    altered = tmp_path / "rembg" / "u2netp.onnx"
    altered.parent.mkdir()
    altered.write_bytes(b"not the pinned model")
    with pytest.raises(errors.WeightsCorrupt, match="expected 309c8469"):
        verify_model_file(tmp_path, "u2netp")
    (tmp_path / "rembg" / "isnet-general-use.onnx").write_bytes(b"x")
    with pytest.raises(errors.WeightsMissing, match="weights.lock"):
        verify_model_file(tmp_path, "isnet-general-use")



# ---------------------------------------------------------------- bounded canvases, reduced decodes


def decode_and_frame(data: bytes, runtime: Runtime, mode: str, segmenter=None) -> JobState:
    """The decode and background stages as the engine runs them (the heuristic segmenter by default)."""
    from pipeline.decode import DecodeStage

    job = JobState(options=resolve_options(JobOptions(seed=0, remove_background=mode), runtime.settings), input_bytes=data)
    for stage in (DecodeStage(), BackgroundStage(segmenter=segmenter or BorderColourSegmenter())):
        stage.load(runtime)
        stage.run(job, StageContext(runtime, stage.name, ProgressBus(), CancelToken(), 0.0, 1.0))
    return job


def condition(job: JobState) -> Image.Image:
    """What the multiview model sees: the cut-out on its white background."""
    return composite_on_background(job.cutout, (255, 255, 255))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / max((difference**2).mean(), 1e-12)))


def textured_photo(size: tuple[int, int], box: tuple[int, int, int, int], seed: int = 0) -> Image.Image:
    """Noisy light background with a textured dark object in ``box``: detail that a bad resample would lose."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.full((height, width, 3), 235, np.int16) + rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    left, top, right, bottom = box
    y, x = np.mgrid[top:bottom, left:right]
    stripes = (40 * np.sin(x / 3.0) * np.cos(y / 5.0)).astype(np.int16)[..., None]
    pixels[top:bottom, left:right] = np.array([60, 70, 140], np.int16) + stripes
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(1, 65_500), (65_500, 1), (3, 40_000)], ids=["1x65500", "65500x1", "3x40000"])
@pytest.mark.parametrize("mode", ["off", "on", "auto", "auto-alpha"])
def test_an_extreme_strip_never_builds_its_square(tmp_path, size, mode):
    # Past the decoder (which refuses these by aspect ratio), the stage itself stays bounded:
    # the square is never allocated, so this takes milliseconds and a few hundred kB.
    strip = Image.new("RGB", size, (250, 250, 250))
    long_side = max(size)
    strip.paste((20, 90, 160), (0, long_side // 3, size[0], 2 * long_side // 3) if size[1] > size[0] else (long_side // 3, 0, 2 * long_side // 3, size[1]))
    if mode == "auto-alpha":
        strip.putalpha(strip.convert("L").point(lambda v: 0 if v > 200 else 255))
    runtime = runtime_for(tmp_path, weights="tiny")
    job = run_stage(BackgroundStage(segmenter=BorderColourSegmenter()), runtime, strip, remove_background=mode.split("-")[0])
    assert job.cutout.size == (SIZE, SIZE)
    alpha = np.asarray(job.cutout.getchannel("A"))
    assert alpha.max() > 0, "the strip vanished from the cut-out"
    assert (alpha > 0).mean() < 0.5


def test_render_square_matches_an_explicit_padded_square():
    from pipeline.background import Square, render_square

    image = textured_photo((300, 200), (40, 30, 180, 170)).convert("RGBA")
    square = Square(-50.0, -100.0, 400.0)
    padded = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    padded.paste(image, (50, 100))
    expected = padded.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    rendered = render_square(image, square, SIZE)
    inside = np.asarray(expected)[85:235, 45:275]  # away from the image's edges, where padding blends in
    assert np.abs(np.asarray(rendered)[85:235, 45:275].astype(int) - inside).max() <= 2


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_an_object_filling_a_photo_at_the_pixel_cap_is_framed(tmp_path, mode):
    # The framing square (side = object / 0.85) holds more pixels than the cap: it used to
    # trip Pillow's process-wide bomb guard and fail with internal_error.
    from lift3d.settings import DecodeSettings

    settings = EngineSettings(device="cpu", weights="tiny", weights_dir=str(tmp_path), decode=DecodeSettings(max_pixels=1000 * 800))
    runtime = Runtime.from_settings(settings)
    photo = textured_photo((1000, 800), (10, 10, 990, 790))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    job = decode_and_frame(buffer.getvalue(), runtime, mode)
    assert condition(job).size == (SIZE, SIZE)
    if mode != "off":
        assert abs(foreground_ratio(job.cutout) - RATIO) <= 0.02 * RATIO


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_a_12_mp_phone_jpeg_filling_the_frame_is_framed_from_a_reduced_decode(tmp_path, mode):
    runtime = runtime_for(tmp_path, weights="tiny")
    data = jpeg_bytes(textured_photo((4032, 3024), (60, 40, 3970, 2980)))
    job = decode_and_frame(data, runtime, mode)
    assert job.metadata["decode"]["reduction"] == 4
    assert job.metadata["background"]["framing_reduction"] == 4  # the square had enough pixels already
    assert job.input_bytes is None
    assert condition(job).size == (SIZE, SIZE)


class SoftBoxSegmenter:
    """A mask that does not depend on the resolution it is asked at: a soft-edged box in relative coordinates.

    The real u2net masks share this property (320 x 320 across the whole image at any scale);
    with it, full and reduced decodes differ only by the pixels the decoder produced.
    """

    name = "soft-box"

    def __init__(self, box: tuple[int, int, int, int], full_size: tuple[int, int]) -> None:
        self.box = np.array(box, np.float64) / np.array(full_size * 2, np.float64)

    def mask(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        x = (np.arange(width) + 0.5) / width
        y = (np.arange(height) + 0.5) / height
        edge = 0.004  # a ramp 16 px wide at 4032 px, 4 px at the decode stage's 1/4 scale
        inside_x = np.clip(0.5 + np.minimum(x - self.box[0], self.box[2] - x) / edge, 0, 1)
        inside_y = np.clip(0.5 + np.minimum(y - self.box[1], self.box[3] - y) / edge, 0, 1)
        return Image.fromarray(np.rint(255 * np.outer(inside_y, inside_x)).astype(np.uint8))


def _full_decode_reference(data: bytes, runtime: Runtime, mode: str, segmenter=None) -> JobState:
    full = decode_image(data, runtime.settings.decode, min_side=0)
    return run_stage(BackgroundStage(segmenter=segmenter or BorderColourSegmenter()), runtime, full, remove_background=mode)


@pytest.mark.parametrize(
    ("box", "reduction"),
    [((1400, 1000, 2600, 2000), 2), ((1900, 1400, 2150, 1600), 1), ((300, 200, 3700, 2800), 4)],
    ids=["medium-object-redecoded-at-half", "small-object-redecoded-in-full", "large-object-kept-at-quarter"],
)
def test_a_reduced_decode_never_costs_the_condition_image_detail(tmp_path, box, reduction):
    runtime = runtime_for(tmp_path, weights="tiny")
    data = jpeg_bytes(textured_photo((4032, 3024), box))
    segmenter = SoftBoxSegmenter(box, (4032, 3024))
    job = decode_and_frame(data, runtime, "on", segmenter)
    assert job.metadata["decode"]["reduction"] == 4
    assert job.metadata["background"]["framing_reduction"] == reduction
    assert job.input_bytes is None
    reference = _full_decode_reference(data, runtime, "on", segmenter)
    # 2x oversampled DCT reduction: the condition image of a full decode (~52 dB here; at 1x, without
    # the finer decode, the medium object falls to 44 dB and the small one to 29 dB).
    assert psnr(condition(job), condition(reference)) > 48
    assert abs(foreground_ratio(job.cutout) - foreground_ratio(reference.cutout)) < 0.01


def test_off_mode_from_a_reduced_decode_matches_a_full_decode(tmp_path):
    runtime = runtime_for(tmp_path, weights="tiny")
    data = jpeg_bytes(textured_photo((4032, 3024), (300, 200, 3700, 2800)))
    job = decode_and_frame(data, runtime, "off")
    assert job.metadata["decode"]["reduction"] == 4
    assert psnr(condition(job), condition(_full_decode_reference(data, runtime, "off"))) > 48


def test_the_upload_is_dropped_by_the_background_stage_even_when_it_fails(tmp_path):
    from pipeline.decode import DecodeStage

    runtime = runtime_for(tmp_path, weights="tiny")
    data = jpeg_bytes(Image.new("RGB", (4032, 3024), (128, 128, 128)))  # no object: NoForeground
    job = JobState(options=resolve_options(JobOptions(seed=0, remove_background="on"), runtime.settings), input_bytes=data)
    decode = DecodeStage()
    decode.load(runtime)
    decode.run(job, StageContext(runtime, "decode", ProgressBus(), CancelToken(), 0.0, 1.0))
    assert job.input_bytes is data  # kept: a reduced JPEG may be re-decoded finer
    with pytest.raises(errors.NoForeground):
        BackgroundStage(segmenter=BorderColourSegmenter()).run(job, StageContext(runtime, "background", ProgressBus(), CancelToken(), 0.0, 1.0))
    assert job.input_bytes is None
