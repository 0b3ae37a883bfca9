"""Background removal and framing: the decoded photo -> a square, centred cut-out on white.

Modes (``remove_background``):
- ``auto``: an image with real alpha keeps it untouched; anything else is segmented;
- ``on``: always segment (rembg), even over an existing alpha channel;
- ``off``: no segmentation and no reframing; the whole image, padded to square, on white.

After segmenting, the object's alpha bounding box is recentred in a square whose
side makes the box's larger side ``foreground_ratio`` of it, then resized to the
multiview input size and composited on the fill colour the multiview model expects.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final, Protocol

import numpy as np
from PIL import Image

from lift3d.settings import BackgroundSettings
from lift3d.errors import NoForeground
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

    def __init__(self, weights_dir: Path, model: str, prefer_cuda: bool) -> None:
        from models.background import load_session

        self.name = model
        self._session = load_session(weights_dir, model, prefer_cuda=prefer_cuda)

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

    def __init__(self, threshold: float = 40.0) -> None:
        self.threshold = threshold

    def mask(self, image: Image.Image) -> Image.Image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        distance = np.linalg.norm(pixels - np.median(border, axis=0), axis=-1)
        return Image.fromarray(np.where(distance > self.threshold, 255, 0).astype(np.uint8))


def has_real_alpha(image: Image.Image) -> bool:
    if image.mode != "RGBA":
        return False
    alpha = np.asarray(image.getchannel("A"))
    return float((alpha < 255).mean()) >= REAL_ALPHA_MIN_AREA


def foreground_bbox(alpha: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of pixels with alpha >= FOREGROUND_ALPHA, or None when there are none."""
    return alpha.point(lambda value: 255 if value >= FOREGROUND_ALPHA else 0).getbbox()


def frame_foreground(cutout: Image.Image, ratio: float, size: int) -> Image.Image:
    """Centre the object's bounding box in a ``size`` square, its larger side ``ratio`` of the side."""
    box = foreground_bbox(cutout.getchannel("A"))
    if box is None:
        raise NoForeground("no object was found in the image; try remove_background=off")
    left, top, right, bottom = box
    side = max(right - left, bottom - top) / ratio
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    # A crop box reaching outside the image pads with transparent pixels: recentre and pad in one step.
    square = cutout.crop(
        (
            round(centre_x - side / 2),
            round(centre_y - side / 2),
            round(centre_x - side / 2) + round(side),
            round(centre_y - side / 2) + round(side),
        )
    )
    return square.resize((size, size), Image.Resampling.LANCZOS)


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """The whole image, centred in a transparent square, resized to ``size`` (``off`` mode)."""
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


class BackgroundStage:
    name = "background"
    progress_weight = 0.04
    reads = frozenset({"image"})
    writes = frozenset({"cutout", "metadata", "previews"})

    def __init__(self, segmenter: Segmenter | None = None) -> None:
        self._segmenter = segmenter
        self._settings: BackgroundSettings | None = None

    def load(self, runtime: Runtime) -> None:
        self._settings = runtime.settings.background
        if self._segmenter is None:
            self._segmenter = self._load_segmenter(runtime)

    @staticmethod
    def _load_segmenter(runtime: Runtime) -> Segmenter:
        from models.background import model_file

        settings = runtime.settings.background
        weights_dir = runtime.weights_dir
        # In dummy/tiny mode the real (small) model is still used when its file is there;
        # only its absence falls back to the labelled heuristic. Locked mode always needs the file.
        if runtime.weights_mode == "locked" or model_file(weights_dir, settings.model).is_file():
            return RembgSegmenter(weights_dir, settings.model, prefer_cuda=runtime.is_cuda)
        log.warning("no rembg %s file in %s: %s mode uses the border-colour heuristic", settings.model, weights_dir, runtime.weights_mode)
        return BorderColourSegmenter()

    def run(self, job: JobState, ctx: StageContext) -> None:
        settings = ctx.runtime.settings.background
        image: Image.Image = job.image
        mode = job.options.remove_background
        ctx.report(0, 3, "choosing")
        if mode == "off":
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
            cutout = frame_foreground(rgba, settings.foreground_ratio, settings.output_size)
        job.cutout = cutout
        job.metadata["background"] = {"mode": mode, "mask": source}
        if job.options.return_views:
            job.previews[CUTOUT_PREVIEW] = png_bytes(cutout)
        ctx.report(3, 3, "done")
