"""Background removal and framing: the decoded photo -> a square, centred cut-out on white.

Modes (``remove_background``):
- ``auto``: an image with real alpha keeps it untouched; anything else is segmented;
- ``on``: always segment (rembg), even over an existing alpha channel;
- ``off``: no segmentation and no reframing; the whole image, padded to square, on white.

After segmenting, the object's alpha bounding box is recentred in a square whose
side makes the box's larger side ``foreground_ratio`` of it, then resized to the
multiview input size and composited on the fill colour the multiview model expects.

Memory is bounded by the decoded image, whatever its shape: the square is never
built at source resolution. Only the part of it that lies inside the image is
resampled, straight to the output size, onto a transparent output-sized canvas
(a 1 x 65,500 strip costs a 320 x 320 canvas, not a 65,500-px square).

When the decoder reduced a JPEG and the object's square holds fewer than
``OVERSAMPLING`` x output pixels at that scale, the stage decodes the upload again
at the coarsest reduction that gives it enough (within the pixel cap), so a
small object in a large photo keeps the detail a full decode would give it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import msgspec
import numpy as np
from PIL import Image

from lift3d.settings import BackgroundSettings
from lift3d.errors import NoForeground
from pipeline.decode import OVERSAMPLING, decode_image
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.png import png_bytes
from pipeline.state import CUTOUT_PREVIEW, JobState

log = logging.getLogger("lift3d.background")

# Alpha at or above this is "the object" when measuring its bounding box; softer
# fringe pixels still travel along inside the framed square.
FOREGROUND_ALPHA: Final = 128
# Fraction of pixels below full opacity for an alpha channel to count as real
# (a few stray transparent pixels from an editor do not make a cut-out).
REAL_ALPHA_MIN_AREA: Final = 0.01


class Segmenter(Protocol):
    name: str

    def mask(self, image: Image.Image) -> Image.Image:
        """An ``L`` mask the size of ``image``: 255 object, 0 background."""


class RembgSegmenter:
    """A resident rembg session (see models.background): loaded once, never downloads."""

    def __init__(self, weights_dir: Path, model: str, prefer_cuda: bool, threads: int | None = None) -> None:
        from models.background import load_session

        from models.background import session_provider

        self.name = model
        self._session = load_session(weights_dir, model, prefer_cuda=prefer_cuda, threads=threads)
        self.provider = session_provider(self._session)
        self.on_device = self.provider == "CUDAExecutionProvider"

    def mask(self, image: Image.Image) -> Image.Image:
        # The session's predict() rather than rembg.remove(): remove() re-applies EXIF
        # orientation (decode already did) and stacks multi-mask outputs vertically.
        masks = self._session.predict(image.convert("RGB"))
        combined = np.maximum.reduce([np.asarray(m.convert("L")) for m in masks])
        mask = Image.fromarray(combined)
        return mask if mask.size == image.size else mask.resize(image.size, Image.Resampling.BILINEAR)


class BorderColourSegmenter:
    """Stand-in for dummy/tiny weights without the rembg file: object = far from the border colour.

    Only for profiling and tests without weights; results name it, never a real model.
    """

    name = "border-colour-heuristic"
    provider = "none"  # plain numpy, no onnxruntime session

    def __init__(self, threshold: float = 40.0) -> None:
        self.threshold = threshold

    def mask(self, image: Image.Image) -> Image.Image:
        pixels = np.asarray(image.convert("RGB"))
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        reference = np.median(border, axis=0).round().astype(np.int32)
        # Squared distance summed channel by channel in int32: a few bytes per pixel,
        # where float32 broadcasting would hold three 12-byte copies of the image.
        distance = np.zeros(pixels.shape[:2], dtype=np.int32)
        for channel in range(3):
            difference = pixels[..., channel].astype(np.int32) - reference[channel]
            distance += difference * difference
        return Image.fromarray(np.where(distance > self.threshold**2, 255, 0).astype(np.uint8))


def has_real_alpha(image: Image.Image) -> bool:
    if image.mode != "RGBA":
        return False
    alpha = np.asarray(image.getchannel("A"))
    return float((alpha < 255).mean()) >= REAL_ALPHA_MIN_AREA


def foreground_bbox(alpha: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of pixels with alpha >= FOREGROUND_ALPHA, or None when there are none."""
    return alpha.point(lambda value: 255 if value >= FOREGROUND_ALPHA else 0).getbbox()


@dataclass(frozen=True)
class Square:
    """A square in an image's pixel coordinates; it may reach outside the image."""

    left: float
    top: float
    side: float


def framing_square(alpha: Image.Image, ratio: float) -> Square:
    """The square centred on the object's bounding box, the box's larger side ``ratio`` of its side."""
    box = foreground_bbox(alpha)
    if box is None:
        raise NoForeground("no object was found in the image; try remove_background=off")
    left, top, right, bottom = box
    side = max(right - left, bottom - top) / ratio
    return Square((left + right - side) / 2, (top + bottom - side) / 2, side)


def whole_image_square(width: int, height: int) -> Square:
    side = max(width, height)
    return Square((width - side) / 2, (height - side) / 2, side)


def render_square(rgba: Image.Image, square: Square, size: int) -> Image.Image:
    """``square`` of ``rgba`` as a ``size`` x ``size`` RGBA image, transparent where it leaves the image.

    Only the square's intersection with the image is resampled (LANCZOS, premultiplied
    alpha), straight to its share of the output: no canvas larger than the image or
    the output is ever allocated.
    """
    scale = size / square.side
    source = (
        max(0.0, square.left),
        max(0.0, square.top),
        min(float(rgba.width), square.left + square.side),
        min(float(rgba.height), square.top + square.side),
    )

    def span(start: float, stop: float, origin: float) -> tuple[int, int]:
        first = min(size - 1, max(0, round((start - origin) * scale)))
        return first, min(size, max(first + 1, round((stop - origin) * scale)))

    x0, x1 = span(source[0], source[2], square.left)
    y0, y1 = span(source[1], source[3], square.top)
    region = rgba.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS, box=source)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(region, (x0, y0))
    return canvas


def frame_foreground(cutout: Image.Image, ratio: float, size: int) -> Image.Image:
    """Centre the object's bounding box in a ``size`` square, its larger side ``ratio`` of the side."""
    return render_square(cutout, framing_square(cutout.getchannel("A"), ratio), size)


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """The whole image, centred in a transparent square, resized to ``size`` (``off`` mode)."""
    return render_square(image.convert("RGBA"), whole_image_square(*image.size), size)


class BackgroundStage:
    name = "background"
    progress_weight = 0.04
    reads = frozenset({"image"})
    # input_bytes: kept by the decode stage for a finer decode of a reduced JPEG, dropped here.
    writes = frozenset({"cutout", "metadata", "previews", "input_bytes"})

    def __init__(self, segmenter: Segmenter | None = None, *, output_size: int | None = None) -> None:
        self._segmenter = segmenter
        # A pipeline whose model takes a larger image than the settings' size (TripoSR: 512 px).
        self.output_size = output_size
        self._shares: BackgroundStage | None = None
        # The host lane, unless the segmenter runs on the GPU (pipeline/lanes.py).
        self.lane = "host"

    def resized(self, output_size: int) -> "BackgroundStage":
        """The same stage at another cut-out size, sharing this one's segmentation model (loaded once)."""
        twin = BackgroundStage(self._segmenter, output_size=output_size)
        twin._shares = self
        return twin

    @property
    def provider(self) -> str | None:
        """Where segmentation runs (an onnxruntime execution provider), once loaded; for /v1/info."""
        return getattr(self._segmenter, "provider", None)

    def load(self, runtime: Runtime) -> None:
        if self._segmenter is None and self._shares is not None:
            self._shares.load(runtime)
            self._segmenter = self._shares._segmenter
        if self._segmenter is None:
            self._segmenter = self._load_segmenter(runtime)
        self.lane = "device" if getattr(self._segmenter, "on_device", False) else "host"

    @staticmethod
    def _load_segmenter(runtime: Runtime) -> Segmenter:
        from models.background import model_file

        settings = runtime.settings.background
        weights_dir = runtime.weights_dir
        # In dummy/tiny mode the real (small) model is still used when its file is there;
        # only its absence falls back to the labelled heuristic. Locked mode always needs the file.
        if runtime.weights_mode == "locked" or model_file(weights_dir, settings.model).is_file():
            return RembgSegmenter(weights_dir, settings.model, prefer_cuda=runtime.is_cuda, threads=runtime.cpu_threads)
        log.warning("no rembg %s file in %s: %s mode uses the border-colour heuristic", settings.model, weights_dir, runtime.weights_mode)
        return BorderColourSegmenter()

    def run(self, job: JobState, ctx: StageContext) -> None:
        try:
            settings = ctx.runtime.settings.background
            if self.output_size is not None:
                settings = msgspec.structs.replace(settings, output_size=self.output_size)
            self._run(job, ctx, settings)
        finally:
            job.input_bytes = None  # kept by the decode stage only for _finer_decode

    def _run(self, job: JobState, ctx: StageContext, settings: BackgroundSettings) -> None:
        image: Image.Image = job.image
        mode = job.options.remove_background
        reduction = job.metadata.get("decode", {}).get("reduction", 1)
        ctx.report(0, 3, "choosing")
        if mode == "off":
            # A reduced JPEG keeps a shorter side of OVERSAMPLING x output: the whole-image square has enough.
            source = "none"
            cutout = pad_to_square(image, settings.output_size)
        else:
            if mode == "auto" and has_real_alpha(image):
                source = "input-alpha"
                rgba = image
            else:
                assert self._segmenter is not None, "the engine loads every stage before it runs one"
                source = self._segmenter.name
                ctx.report(1, 3, "segmenting")
                rgba = image.convert("RGB")
                rgba.putalpha(self._segmenter.mask(image))
            ctx.check_cancelled()
            ctx.report(2, 3, "framing")
            square = framing_square(rgba.getchannel("A"), settings.foreground_ratio)
            finer = self._finer_decode(job, ctx, square, settings)
            if finer is not None:
                # The mask travels up (u2net's is 320 px across the image at any scale); the
                # box is measured again on the finer grid, so framing is as exact as the detail.
                alpha = rgba.getchannel("A").resize(finer.size, Image.Resampling.BILINEAR)
                reduction = max(1, round(reduction * image.width / finer.width))
                rgba = finer.convert("RGB")
                rgba.putalpha(alpha)
                square = framing_square(alpha, settings.foreground_ratio)
            cutout = render_square(rgba, square, settings.output_size)
        job.cutout = cutout
        job.metadata["background"] = {"mode": mode, "mask": source, "framing_reduction": reduction}
        if job.options.return_views:
            job.previews[CUTOUT_PREVIEW] = png_bytes(cutout)
        ctx.report(3, 3, "done")

    @staticmethod
    def _finer_decode(job: JobState, ctx: StageContext, square: Square, settings: BackgroundSettings) -> Image.Image | None:
        """The upload decoded at the coarsest JPEG reduction that gives ``square`` enough pixels, when
        the decode stage's reduction gives it too few and the pixel cap allows finer; else None."""
        record = job.metadata.get("decode", {})
        needed = OVERSAMPLING * settings.output_size
        if job.input_bytes is None or record.get("reduction", 1) <= record.get("finest_reduction", 1):
            return None
        if square.side >= needed:
            return None
        ctx.check_cancelled()
        # decode_image keeps the shorter side >= min_side; scaled so that the square gets `needed` pixels.
        min_side = math.ceil(min(job.image.size) * needed / square.side)
        finer = decode_image(job.input_bytes, ctx.runtime.settings.decode, min_side=min_side)
        return finer if finer.width > job.image.width else None
