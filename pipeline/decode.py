"""Decode and validate an uploaded image: PNG, JPEG, WebP or GIF in, an upright RGB/RGBA PIL image out.

Checks run cheapest first, and nothing touches pixel data until the header has
been judged: byte cap -> magic bytes -> completeness (the format's end marker) ->
header dimensions (aspect ratio, pixel cap, decompression-bomb ratio) -> decode
of the first frame -> EXIF orientation -> ICC to sRGB -> mode normalisation.
Every failure is a typed ``InputError``.

The pixel cap bounds the *decoded* bitmap, and it is enforced here, from the
header, before any pixel buffer exists (for WebP from the RIFF chunk, because
libwebp allocates its canvas when Pillow merely opens the file). Pillow's own
process-wide guard (``Image.MAX_IMAGE_PIXELS``, warning filters) is left alone:
the guard belongs to untrusted input, and the pipeline's own canvases must never
trip it.

JPEGs are decoded in the DCT domain at 1/2, 1/4 or 1/8 scale (libjpeg's "draft"
mode: the full-size bitmap is never allocated) when the pixel cap requires it,
and otherwise as far as the shorter side stays at or above ``min_side``: twice
the 320 px the segmenter and the framed output use. The background stage
re-decodes at a finer scale when the object turns out small (pipeline/background.py),
so the reduction never costs the condition image any detail. PNG, WebP and GIF
cannot be reduced while decoding; over the cap they are refused. A JPEG of several
scans (progressive) is the exception to "draft bounds memory": libjpeg holds all its
coefficients at full size and walks them once per scan, so its coefficient buffer and
its scan count are judged from the markers (pipeline/jpeg_markers.py) before decoding.

Animated PNG, WebP and GIF give their first frame.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import GifImagePlugin, Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from lift3d.errors import (
    DecompressionBomb,
    EmptyImage,
    ExtremeAspectRatio,
    TooManyPixels,
    TruncatedImage,
    UndecodableImage,
    UnsupportedFormat,
    UploadTooLarge,
)
from lift3d.settings import DecodeSettings
from pipeline.jpeg_markers import read_layout
from pipeline.runtime import Runtime
from pipeline.stage import StageContext
from pipeline.state import JobState
from pipeline.wipe import BufferReader, wipe_image

log = logging.getLogger("lift3d.decode")

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
GIF_MAGICS: Final = (b"GIF87a", b"GIF89a")
# The whole IEND chunk: zero length, type, and its fixed CRC.
PNG_IEND_CHUNK: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"
GIF_TRAILER: Final = b";"

# Header readers per format. They parse the header only; building them directly
# (not through Image.open) keeps Pillow's global bomb check out of the way, so our
# own checks speak first, with our error codes.
_HEADER_READERS: Final = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "GIF": GifImagePlugin.GifImageFile,
}

# An over-cap image whose decoded RGBA size would exceed this many times its file
# size is reported as a decompression bomb (flat deflate/VP8L streams reach ~1000x;
# honest photos stay below ~30x). Either way it is refused before decoding.
BOMB_EXPANSION: Final = 100
# Longer side / shorter side beyond which an image is refused (ExtremeAspectRatio):
# past 32:1 the whole image, padded to the square condition image, is a strip
# under 10 of its 320 px. Panoramas (up to ~12:1) and long screenshots pass.
MAX_ASPECT_RATIO: Final = 32
# libjpeg's DCT-domain scales.
DCT_REDUCTIONS: Final = (1, 2, 4, 8)
# Decoded pixels kept per pixel of what the later stages look at. Measured in
# benchmarks/bench_decode.py: at 2x a DCT-reduced decode gives a framed 320 px
# output within 50 dB PSNR of the one a full decode gives (about the error JPEG
# q90 itself leaves at that scale); at 1x it falls to 40-49 dB, below 1x to ~31.
OVERSAMPLING: Final = 2
# A multi-scan JPEG's full-size coefficient buffer may take this many bytes per pixel
# of the cap: three RGBA bitmaps at the cap, about what a capped image costs the later
# stages. Progressive 4:2:0 colour then passes up to 2.7x the cap, 4:4:4 up to 1.3x.
MULTI_SCAN_BYTES_PER_CAP_PIXEL: Final = 12
# libjpeg's default progressive script writes 10 scans, mozjpeg's a few more; each one is
# a pass over the whole coefficient buffer, so a file of thousands of tiny scans would
# hold the decoder for minutes.
MAX_JPEG_SCANS: Final = 100
# What the u2net/u2netp segmenters look at: the whole image resized to 320 x 320.
SEGMENTER_INPUT_SIDE: Final = 320


def working_min_side(output_size: int) -> int:
    """The shorter side a reduced JPEG keeps: enough for the segmenter and for an ``off``-mode square."""
    return OVERSAMPLING * max(output_size, SEGMENTER_INPUT_SIDE)


DEFAULT_MIN_SIDE: Final = working_min_side(320)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str
    # 1: full size; k: a JPEG decoded at 1/k scale in the DCT domain.
    reduction: int
    # The finest reduction the pixel cap allows: 1 except for JPEGs over the cap.
    finest_reduction: int


def sniff_format(data: bytes) -> str:
    """The container format from magic bytes, never from a name or a declared type."""
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(GIF_MAGICS):
        return "GIF"
    raise UnsupportedFormat("not a PNG, JPEG, WebP or GIF image (checked by content, not by file name)")


def decode_image(data: bytes, settings: DecodeSettings, *, min_side: int = DEFAULT_MIN_SIDE) -> Image.Image:
    """Validate and decode ``data``; the result is upright, sRGB, and RGB or RGBA (RGBA only for real alpha)."""
    return decode_upload(data, settings, min_side=min_side).image


def decode_upload(data: bytes, settings: DecodeSettings, *, min_side: int = DEFAULT_MIN_SIDE) -> DecodedImage:
    """:func:`decode_image`, also saying at which JPEG reduction it decoded (``min_side=0``: the finest the cap allows)."""
    if len(data) == 0:
        raise EmptyImage("the upload is empty (0 bytes)")
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(f"the upload is {len(data)} bytes; the limit is {settings.max_upload_bytes}")
    fmt = sniff_format(data)
    _check_complete(data, fmt)
    if fmt == "JPEG":
        _check_scans(data, settings.max_pixels)
    if fmt == "WEBP":
        # libwebp allocates the whole canvas when the file is opened: judge its size first.
        _plan_reduction(*webp_canvas_size(data), fmt, len(data), settings.max_pixels, min_side)
    image = _open_header(data, fmt)
    try:
        finest, reduction = _plan_reduction(*image.size, fmt, len(data), settings.max_pixels, min_side)
        if reduction > 1:
            reduction = _apply_draft(image, reduction, finest, settings.max_pixels)
        frame = _decode_first_frame(image, data, fmt)
    finally:
        # The parser's own bitmap is a copy of the photo too: zeroed before it is freed.
        wipe_image(image)
        image.close()
    upright = _upright(frame)
    final = _normalise(upright)
    for intermediate in {id(frame): frame, id(upright): upright}.values():
        if intermediate is not final:
            wipe_image(intermediate)
    return DecodedImage(final, fmt, reduction, finest)


def _check_complete(data: bytes, fmt: str) -> None:
    """A file must end as its format says: a missing end marker means the transfer was cut.

    The cut may fall where no pixel is lost (after the last IDAT, after GIF frame 0),
    but the image is then unverified (a PNG cut there has lost its zlib checksum), and
    the client can simply send the whole file. JPEG's end marker is checked by libjpeg,
    which refuses a scan without EOI; data after EOI (motion photos, MPO) is allowed.
    """
    if fmt == "PNG" and PNG_IEND_CHUNK not in data:
        raise TruncatedImage("the PNG file has no IEND chunk: it ends early (truncated upload?)")
    if fmt == "GIF" and not data.rstrip(b"\x00").endswith(GIF_TRAILER):
        raise TruncatedImage("the GIF file has no trailer: it ends early (truncated upload?)")
    if fmt == "WEBP" and len(data) < int.from_bytes(data[4:8], "little") + 8:
        raise TruncatedImage("the WebP file is shorter than its RIFF header says (truncated upload?)")


def _check_scans(data: bytes, max_pixels: int) -> None:
    """Refuse a JPEG whose scans would cost libjpeg more than the cap allows, whatever the draft scale."""
    layout = read_layout(data)
    if layout is None or not layout.buffers_whole_frame:
        return
    if layout.scans > MAX_JPEG_SCANS:
        raise DecompressionBomb(
            f"the JPEG has {layout.scans} scans, each a pass over the whole image; more than "
            f"{MAX_JPEG_SCANS} are refused (ordinary progressive JPEGs have about 10)"
        )
    budget = MULTI_SCAN_BYTES_PER_CAP_PIXEL * max_pixels
    if layout.coefficient_bytes > budget:
        pixels = layout.width * layout.height
        detail = (
            f"the {layout.width}x{layout.height} JPEG is progressive (or multi-scan): libjpeg holds all "
            f"{layout.coefficient_bytes // 2**20} MiB of its coefficients at full size, over the "
            f"{budget // 2**20} MiB the pixel limit of {max_pixels} allows; send it smaller or as a baseline JPEG"
        )
        if pixels * 4 > BOMB_EXPANSION * len(data):
            raise DecompressionBomb(f"{detail} (a {len(data)}-byte file)")
        raise TooManyPixels(detail)


def webp_canvas_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first WebP chunk (VP8X canvas, VP8 key frame or VP8L header)."""
    chunk, payload = data[12:16], data[20:]
    if chunk == b"VP8X" and len(payload) >= 10:
        return 1 + int.from_bytes(payload[4:7], "little"), 1 + int.from_bytes(payload[7:10], "little")
    if chunk == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(payload[6:8], "little") & 0x3FFF, int.from_bytes(payload[8:10], "little") & 0x3FFF
    if chunk == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    raise UndecodableImage("the file starts like WebP but has no VP8X, VP8 or VP8L header")


def _open_header(data: bytes, fmt: str) -> Image.Image:
    try:
        # BufferReader, not BytesIO: BytesIO copies a bytearray upload (a copy nobody would wipe).
        return _HEADER_READERS[fmt](BufferReader(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own check, at its default limit: a GIF frame reaching far outside its screen.
        raise TooManyPixels(f"the {fmt} header declares a frame far larger than the pixel limit") from error
    except Exception as error:  # noqa: BLE001 - any parser failure is the client's bad file
        raise _decode_error(data, fmt, error) from error


def _reduced(length: int, reduction: int) -> int:
    return -(-length // reduction)


def _plan_reduction(
    width: int, height: int, fmt: str, nbytes: int, max_pixels: int, min_side: int
) -> tuple[int, int]:
    """(finest, chosen) reduction for a declared size, or the typed refusal."""
    pixels = width * height
    if pixels <= 0:
        raise UndecodableImage(f"the image header declares an empty size {width}x{height}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ExtremeAspectRatio(
            f"the image is {width}x{height}; sides more than {MAX_ASPECT_RATIO}:1 apart are refused"
        )
    candidates = DCT_REDUCTIONS if fmt == "JPEG" else (1,)
    fitting = [r for r in candidates if _reduced(width, r) * _reduced(height, r) <= max_pixels]
    if not fitting:
        if pixels * 4 > BOMB_EXPANSION * nbytes:
            raise DecompressionBomb(
                f"a {nbytes}-byte file declaring {width}x{height} pixels would expand "
                f"{pixels * 4 // nbytes}x when decoded; refused as a decompression bomb"
            )
        scale = " even at 1/8 scale" if fmt == "JPEG" else ""
        raise TooManyPixels(f"the image is {width}x{height} = {pixels} pixels{scale}; the limit is {max_pixels}")
    # A JPEG that fits at some reduction is decoded there whatever its ratio: memory
    # is bounded by the reduced bitmap, and libjpeg's time by the file's size.
    finest = reduction = fitting[0]
    short = min(width, height)
    while min_side > 0 and reduction * 2 in fitting and _reduced(short, reduction * 2) >= min_side:
        reduction *= 2
    return finest, reduction


def _apply_draft(image: Image.Image, reduction: int, finest: int, max_pixels: int) -> int:
    """Ask libjpeg for 1/``reduction`` scale; returns the reduction it will really decode at."""
    width, height = image.size
    # Pillow picks the largest scale not above min(width // w, height // h): floor sizes give exactly ``reduction``.
    drafted = image.draft(image.mode, (max(1, width // reduction), max(1, height // reduction)))
    actual = 1 if drafted is None else max(1, round(width / drafted[1][2]))
    if actual < finest or image.size[0] * image.size[1] > max_pixels:
        raise TooManyPixels(
            f"the {width}x{height} JPEG cannot be decoded at a scale under the limit of {max_pixels} pixels"
        )
    log.debug("decoding a %dx%d JPEG at 1/%d scale: %dx%d", width, height, actual, *image.size)
    return actual


def _decode_first_frame(image: Image.Image, data: bytes, fmt: str) -> Image.Image:
    """Decode frame 0 only into memory (a freshly opened APNG, animated WebP or GIF is there already)."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DecompressionBomb(str(error)) from error
    except Exception as error:  # noqa: BLE001 - decoder failures are the client's bad file
        raise _decode_error(data, fmt, error) from error
    # Detach from the parser (and its buffer of the upload): copy() keeps mode, info and pixels.
    return image.copy()


def _decode_error(data: bytes, fmt: str, error: Exception) -> Exception:
    if _looks_truncated(data, fmt) or "truncated" in str(error).lower() or isinstance(error, EOFError):
        return TruncatedImage(f"the {fmt} file ends early (truncated upload?)")
    return UndecodableImage(f"the file starts like {fmt} but can't be decoded: {type(error).__name__}: {error}")


def _looks_truncated(data: bytes, fmt: str) -> bool:
    """Container-level evidence that the file was cut short (JPEG: no EOI marker near the end)."""
    return fmt == "JPEG" and b"\xff\xd9" not in data[-1024:]


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


_SRGB: Final = ImageCms.createProfile("sRGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _normalise(image: Image.Image) -> Image.Image:
    """P/L/LA/1/CMYK/I;16/I/RGBA -> RGB, or RGBA when the alpha channel is real (not all opaque).

    The images made on the way are zeroed once the next one exists (the input is the caller's).
    """
    given = image

    def step(made: Image.Image) -> Image.Image:
        if made is not image and image is not given:
            wipe_image(image)
        return made

    if image.mode.startswith("I") or image.mode == "F":
        image = step(_high_depth_to_l(image))
    image = step(_to_srgb(image))
    rgba_wanted = _has_alpha(image)
    image = step(image.convert("RGBA" if rgba_wanted else "RGB"))
    if rgba_wanted and image.getchannel("A").getextrema()[0] == 255:
        image = step(image.convert("RGB"))
    return image


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit grey (I;16*, or I from PNG) scaled to 8 bits; Pillow's own convert would clip at 255."""
    values = np.asarray(image, dtype=np.float64)
    high = 65535.0 if image.mode.startswith("I") else max(float(values.max()), 1.0)
    scaled = np.clip(np.rint(values * (255.0 / high)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


class DecodeStage:
    """Bytes in ``job.input_bytes`` -> ``job.image``.

    The upload is forgotten as soon as it is decoded, except for a JPEG decoded at a
    reduced scale: the background stage may re-decode the object's region finer, and
    drops the bytes itself (the engine drops them on every other path).
    """

    name = "decode"
    progress_weight = 0.01
    reads = frozenset({"input_bytes"})
    writes = frozenset({"input_bytes", "image", "metadata"})

    def __init__(self) -> None:
        self._min_side = DEFAULT_MIN_SIDE

    def load(self, runtime: Runtime) -> None:
        self._min_side = working_min_side(runtime.settings.background.output_size)

    def run(self, job: JobState, ctx: StageContext) -> None:
        settings = ctx.runtime.settings.decode
        if job.input_bytes is None:
            raise EmptyImage("the job carries no image")
        decoded = decode_upload(job.input_bytes, settings, min_side=self._min_side)
        job.image = decoded.image
        if decoded.reduction == decoded.finest_reduction:
            job.input_bytes = None
        job.metadata["input_size"] = list(decoded.image.size)
        job.metadata["input_mode"] = decoded.image.mode
        job.metadata["decode"] = {
            "format": decoded.format,
            "reduction": decoded.reduction,
            "finest_reduction": decoded.finest_reduction,
        }
