"""Peak memory of decode + background on hostile shapes and large photos, in a subprocess (VmHWM).

Every input that passes the pixel cap must keep every later canvas bounded: a
1 x 65,500 JPEG of a few hundred bytes once made ``pad_to_square`` build a
65,500-px square (17 GB). Each case runs on every ``remove_background`` setting.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.memory_probe import Call, PeakMemory, measure_peaks

MODES = ("auto", "on", "off")
# What the issue allows above idle for any input, and what a strip of a few kB may cost.
BOUND_BYTES = 1536 * 1024**2
TINY_BOUND_BYTES = 64 * 1024**2

_INPUTS: dict[str, Any] = {}


def _jpeg(image, quality: int = 85, progressive: bool = False) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, progressive=progressive)
    return buffer.getvalue()


def _filling_photo(size: tuple[int, int]):
    from PIL import Image

    width, height = size
    image = Image.new("RGB", size, (245, 245, 245))
    image.paste((150, 60, 40), (width // 40, height // 40, width - width // 40, height - height // 40))
    return image


def _strip(size: tuple[int, int]):
    from PIL import Image

    image = Image.new("RGB", size, (250, 250, 250))
    long_side = max(size)
    box = (0, long_side // 3, size[0], 2 * long_side // 3) if size[1] > size[0] else (long_side // 3, 0, 2 * long_side // 3, size[1])
    image.paste((20, 90, 160), box)
    return image


def _build(kind: str) -> Any:
    from PIL import Image

    fmt, _, shape = kind.partition("-")
    width, height = (int(v) for v in shape.split("x"))
    if fmt == "pjpegclaim":  # libjpeg would hold the claimed size's coefficients, whatever the draft
        return _progressive_with_declared_size(width, height)
    if fmt == "strip":  # a PIL image handed to the background stage directly, past the decoder's refusal
        return _strip((width, height))
    if fmt == "png":
        buffer = io.BytesIO()
        _filling_photo((width, height)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    if fmt == "pjpeg":  # a 48 MP progressive photo: its 4:2:0 coefficients (144 MB) fit the budget
        return _jpeg(_filling_photo((width, height)), progressive=True)
    if width == 1 or height == 1:
        return _jpeg(Image.new("RGB", (width, height), (90, 120, 30)))
    return _jpeg(_filling_photo((width, height)))


def _progressive_with_declared_size(width: int, height: int) -> bytes:
    """A 64 x 64 progressive JPEG whose frame header claims ``width`` x ``height`` (a few hundred bytes)."""
    from PIL import Image

    from tests.pipeline.test_jpeg_markers import declare_size

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(buffer, format="JPEG", progressive=True)
    return declare_size(buffer.getvalue(), width, height)


def prepare(kinds: list[str]) -> None:
    """In the child, before measuring: the pipeline's imports and every input."""
    import pipeline.background  # noqa: F401 - torch, Pillow, numpy loaded before the idle level
    import pipeline.decode  # noqa: F401

    for kind in kinds:
        _INPUTS[kind] = _build(kind)


def run_case(kind: str, mode: str, weights_dir: str | None) -> dict[str, Any]:
    """decode + background as the engine runs them; a typed refusal is an outcome, anything else raises."""
    from lift3d.errors import InputError
    from lift3d.settings import EngineSettings
    from pipeline.background import BackgroundStage, BorderColourSegmenter
    from pipeline.decode import DecodeStage
    from pipeline.events import CancelToken, ProgressBus
    from pipeline.options import JobOptions, resolve_options
    from pipeline.runtime import Runtime
    from pipeline.stage import StageContext
    from pipeline.state import JobState

    runtime = Runtime.from_settings(EngineSettings(device="cpu", weights="tiny", weights_dir=weights_dir or "/nonexistent"))
    options = resolve_options(JobOptions(seed=0, remove_background=mode), runtime.settings)
    source = _INPUTS[kind]
    job = JobState(options=options, input_bytes=source) if isinstance(source, bytes) else JobState(options=options, image=source)
    stages = [DecodeStage()] if isinstance(source, bytes) else []
    stages.append(BackgroundStage(segmenter=None if weights_dir else BorderColourSegmenter()))
    try:
        for stage in stages:
            stage.load(runtime)
            stage.run(job, StageContext(runtime, stage.name, ProgressBus(), CancelToken(), 0.0, 1.0))
    except InputError as refused:
        return {"refused": refused.code}
    return {"cutout": list(job.cutout.size), "mask": job.metadata["background"]["mask"], "reduction": job.metadata.get("decode", {}).get("reduction")}


def _calls(kinds: list[str], modes: tuple[str, ...], weights_dir: str | None) -> list[Call]:
    return [Call(run_case, (kind, mode, weights_dir), f"{kind}/{mode}") for kind in kinds for mode in modes]


def _check(results: list[PeakMemory], tiny: set[str]) -> None:
    report = "\n".join(f"{r.label:32s} +{r.above_idle / 2**20:7.1f} MiB  {r.error or r.value}" for r in results)
    for result in results:
        assert result.error is None, f"{result.label} raised an untyped error\n{report}"
        kind = result.label.split("/")[0]
        bound = TINY_BOUND_BYTES if kind in tiny else BOUND_BYTES
        assert result.above_idle < bound, f"{result.label} used {result.above_idle / 2**20:.0f} MiB above idle\n{report}"


HOSTILE = [
    "jpeg-1x65500",
    "jpeg-65500x1",
    "jpeg-1x20000",
    "strip-1x65500",
    "strip-65500x1",
    "strip-3x40000",
    "pjpegclaim-16384x16384",
]
LARGE = ["jpeg-4032x3024", "jpeg-8000x6000", "pjpeg-8000x6000", "png-4096x4096"]


def test_memory_stays_bounded_on_every_background_setting_heuristic_mask():
    kinds = HOSTILE + LARGE
    results = measure_peaks(_calls(kinds, MODES, None), prepare=prepare, prepare_args=[kinds])
    _check(results, tiny=set(HOSTILE))
    outcomes = {r.label: r.value for r in results}
    for mode in MODES:
        # The decoder refuses the strips by their shape; past it, the stage frames them without a square.
        assert outcomes[f"jpeg-1x65500/{mode}"] == {"refused": "extreme_aspect_ratio"}
        assert outcomes[f"pjpegclaim-16384x16384/{mode}"] == {"refused": "decompression_bomb"}
        assert "cutout" in outcomes[f"strip-1x65500/{mode}"], outcomes[f"strip-1x65500/{mode}"]
        assert outcomes[f"jpeg-4032x3024/{mode}"]["reduction"] == 4
        assert outcomes[f"jpeg-8000x6000/{mode}"]["reduction"] == 8
        assert outcomes[f"pjpeg-8000x6000/{mode}"]["reduction"] == 8
        assert outcomes[f"png-4096x4096/{mode}"]["cutout"] == [320, 320]


def test_memory_stays_bounded_with_the_u2netp_session(u2netp_weights_dir: Path):
    kinds = ["jpeg-1x65500", "strip-1x65500", "jpeg-4032x3024", "png-4096x4096"]
    results = measure_peaks(_calls(kinds, ("auto", "on"), str(u2netp_weights_dir)), prepare=prepare, prepare_args=[kinds])
    _check(results, tiny={"jpeg-1x65500"})  # the session's own arena is allocated on the first strip call
    assert all(r.value.get("mask", "u2netp") == "u2netp" for r in results)


def test_the_probe_sees_an_allocation_and_survives_a_runaway_one():
    results = measure_peaks(
        [Call(np.ones, ([64 * 1024**2],), "512 MiB"), Call(np.ones, ([1024**4],), "8 TiB")],
        headroom_bytes=2 * 1024**3,
    )
    touched, runaway = results
    assert touched.error is None and 500 * 2**20 < touched.above_idle < 700 * 2**20
    assert runaway.out_of_memory  # the address-space limit stops it, not the OOM killer
