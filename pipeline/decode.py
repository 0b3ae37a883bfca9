"""Decode and validate an uploaded image: PNG, JPEG or WebP in, an upright RGB/RGBA PIL image out.

Checks run cheapest first, and nothing touches pixel data until the header has
been judged: byte cap -> magic bytes -> header dimensions (pixel cap and
decompression-bomb ratio) -> decode of the first frame -> EXIF orientation ->
ICC to sRGB -> mode normalisation. Every failure is a typed ``InputError``.

The pixel cap bounds the *decoded* bitmap. A JPEG over it (a 48 MP phone photo)
is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when that fits, since JPEG can
downscale in the DCT domain for free; PNG and WebP over the cap are refused.

GIF is rejected (415): the issue allows PNG, JPEG and WebP, GIF is a 256-colour
format that no phone or camera produces for photos, and keeping its decoder out
shrinks the attack surface. Animated input is covered by animated WebP (and
APNG), of which the first frame is used.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Final

import numpy as np
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from lift3d.settings import DecodeSettings
from lift3d.errors import (
    DecompressionBomb,
    EmptyImage,
    TooManyPixels,
    TruncatedImage,
    UndecodableImage,
    UnsupportedFormat,
    UploadTooLarge,
)
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState

log = logging.getLogger("lift3d.decode")

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
GIF_MAGICS: Final = (b"GIF87a", b"GIF89a")

# Header readers per format. They parse the header only; building them directly
# (not through Image.open) lets our own pixel-cap check speak first, with our
# error codes, before Pillow's process-wide bomb check would.
_HEADER_READERS: Final = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}

# An over-cap image whose decoded RGBA size would exceed this many times its file
# size is reported as a decompression bomb (flat deflate/VP8L streams reach ~1000x;
# honest photos stay below ~30x). Either way it is refused before decoding.
BOMB_EXPANSION: Final = 100

_SRGB: Final = ImageCms.createProfile("sRGB")


def sniff_format(data: bytes) -> str:
    """The container format from magic bytes, never from a name or a declared type."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(GIF_MAGICS):
        raise UnsupportedFormat("GIF is not accepted; send PNG, JPEG or WebP")
    raise UnsupportedFormat("not a PNG, JPEG or WebP image (checked by content, not by file name)")


def harden_pillow(max_pixels: int) -> None:
    """Pillow's bomb limit becomes our pixel cap and its warning an error.

    Both are process-wide (Pillow and the warnings module keep them globally), so
    this is the one place that sets them. It is idempotent and runs on every
    decode: one process serves one settings object, and test runners reset
    warning filters between tests.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    promoted = any(
        action == "error" and category is Image.DecompressionBombWarning
        for action, _message, category, _module, _line in warnings.filters
    )
    if not promoted:
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode_image(data: bytes, settings: DecodeSettings) -> Image.Image:
    """Validate and decode ``data``; the result is upright, sRGB, and RGB or RGBA (RGBA only for real alpha)."""
    if len(data) == 0:
        raise EmptyImage("the upload is empty (0 bytes)")
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(f"the upload is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    harden_pillow(settings.max_pixels)
    fmt = sniff_format(data)
    image = _open_header(data, fmt)
    _check_pixels(image, fmt, len(data), settings.max_pixels)
    frame = _decode_first_frame(image, data, fmt)
    frame = _upright(frame)
    return _normalise(frame)


def _open_header(data: bytes, fmt: str) -> Image.Image:
    try:
        return _HEADER_READERS[fmt](io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - any parser failure is the client's bad file
        raise _decode_error(data, fmt, error) from error


def _check_pixels(image: Image.Image, fmt: str, nbytes: int, max_pixels: int) -> None:
    """Refuse over-cap images from their header; a JPEG may instead be decoded at a reduced scale."""
    width, height = image.size
    pixels = width * height
    if pixels <= 0:
        raise UndecodableImage(f"the image header declares an empty size {width}x{height}")
    if pixels <= max_pixels:
        return
    if pixels * 4 > BOMB_EXPANSION * nbytes:
        raise DecompressionBomb(
            f"a {nbytes}-byte file declaring {width}x{height} pixels would expand "
            f"{pixels * 4 // nbytes}x when decoded; refused as a decompression bomb"
        )
    if fmt == "JPEG" and _draft_under_cap(image, max_pixels):
        return
    raise TooManyPixels(f"the image is {width}x{height} = {pixels} pixels; the limit is {max_pixels}")


def _draft_under_cap(image: Image.Image, max_pixels: int) -> bool:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale (in the DCT domain: the full-size
    bitmap is never allocated) so the decoded image fits the cap. 48-200 MP phone photos
    become usable this way; the pipeline works at 320 px anyway."""
    width, height = image.size
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            image.draft(image.mode, (width // scale, height // scale))
            fits = image.size[0] * image.size[1] <= max_pixels
            if fits:
                log.info("decoding a %dx%d JPEG at 1/%d scale: %dx%d", width, height, scale, *image.size)
            return fits
    return False


def _decode_first_frame(image: Image.Image, data: bytes, fmt: str) -> Image.Image:
    """Decode frame 0 only (animated WebP/APNG) into memory."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except Image.DecompressionBombError as error:
        raise DecompressionBomb(str(error)) from error
    except Image.DecompressionBombWarning as error:
        raise DecompressionBomb(str(error)) from error
    except Exception as error:  # noqa: BLE001 - decoder failures are the client's bad file
        raise _decode_error(data, fmt, error) from error
    # Detach from the parser (and its buffer of the upload): copy() keeps mode, info and pixels.
    frame = image.copy()
    image.close()
    return frame


def _decode_error(data: bytes, fmt: str, error: Exception) -> Exception:
    if _looks_truncated(data, fmt) or "truncated" in str(error).lower() or isinstance(error, EOFError):
        return TruncatedImage(f"the {fmt} file ends early (truncated upload?)")
    return UndecodableImage(f"the file starts like {fmt} but can't be decoded: {error}")


def _looks_truncated(data: bytes, fmt: str) -> bool:
    """Container-level evidence that the file was cut short."""
    if fmt == "PNG":
        return b"IEND" not in data[-64:]
    if fmt == "WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        return len(data) < declared
    if fmt == "JPEG":
        return b"\xff\xd9" not in data[-1024:]
    return False


def _upright(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block is not worth failing a job over."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001
        log.warning("ignoring unreadable EXIF orientation: %s", error)
        return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert from an embedded ICC profile (Display P3 phones, CMYK prints) to sRGB."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        log.warning("ignoring unusable ICC profile: %s", error)
        return image
    return converted if converted is not None else image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _normalise(image: Image.Image) -> Image.Image:
    """P/L/LA/1/CMYK/I;16/I/RGBA -> RGB, or RGBA when the alpha channel is real (not all opaque)."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    image = _to_srgb(image)
    rgba_wanted = _has_alpha(image)
    image = image.convert("RGBA" if rgba_wanted else "RGB")
    if rgba_wanted and image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")
    return image


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit grey (I;16*, or I from PNG) scaled to 8 bits; Pillow's own convert would clip at 255."""
    values = np.asarray(image, dtype=np.float64)
    high = 65535.0 if image.mode.startswith("I") else max(float(values.max()), 1.0)
    scaled = np.clip(np.rint(values * (255.0 / high)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


class DecodeStage:
    """Bytes in ``job.input_bytes`` -> ``job.image``; the upload is forgotten as soon as it is decoded."""

    name = "decode"
    progress_weight = 0.01
    reads = frozenset({"input_bytes"})
    writes = frozenset({"input_bytes", "image", "metadata"})

    def load(self, runtime: Runtime) -> None:
        harden_pillow(runtime.settings.decode.max_pixels)

    def run(self, job: JobState, ctx: StageContext) -> None:
        settings = ctx.runtime.settings.decode
        if job.input_bytes is None:
            raise EmptyImage("the job carries no image")
        job.image = decode_image(job.input_bytes, settings)
        job.input_bytes = None
        job.metadata["input_size"] = list(job.image.size)
        job.metadata["input_mode"] = job.image.mode
