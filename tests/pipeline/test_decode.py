"""The decode matrix: every accepted format and mode, and every typed rejection."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest

from server.problems import http_status
from PIL import Image

from lift3d.settings import DecodeSettings
from lift3d import errors
from pipeline.decode import decode_image, sniff_format

SETTINGS = DecodeSettings()


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 96, height: int = 64) -> Image.Image:
    """Smooth content so lossy codecs keep colours near their source."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


# ---------------------------------------------------------------- accepted input


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [("PNG", {}, 0.0), ("JPEG", {"quality": 95}, 3.0), ("WEBP", {"quality": 95}, 4.0), ("WEBP", {"lossless": True}, 0.0)],
    ids=["png", "jpeg", "webp-lossy", "webp-lossless"],
)
def test_rgb_formats_decode_to_the_same_pixels(fmt, params, tolerance):
    source = gradient_rgb()
    image = decode_image(encode(source, fmt, **params), SETTINGS)
    assert image.mode == "RGB" and image.size == source.size
    assert mean_abs_diff(image, source) <= tolerance


def test_exif_rotated_jpeg_comes_out_upright():
    # A portrait scene (tall, red top half) stored sideways with Orientation=6 (rotate 90 CW to view).
    upright = Image.new("RGB", (40, 80), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 40, 40))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: 80x40
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), SETTINGS)
    assert image.size == (40, 80)
    top, bottom = np.asarray(image)[5, 20], np.asarray(image)[75, 20]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan ink
    image = decode_image(encode(cmyk, "JPEG", quality=95), SETTINGS)
    assert image.mode == "RGB"
    red, green, blue = np.asarray(image)[16, 16].astype(int)
    assert red < 40 and green > 215 and blue > 215


def test_16_bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data, SETTINGS)
    assert image.mode == "RGB"
    grey = np.asarray(image)[..., 0].astype(int)
    expected = np.rint(ramp / 257.0).astype(int)
    assert np.abs(grey - expected).max() <= 1
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 200


def test_palette_png_with_transparency_keeps_real_alpha():
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    palette.paste(1, (8, 8, 24, 24))
    image = decode_image(encode(palette, "PNG", transparency=0), SETTINGS)
    assert image.mode == "RGBA"
    pixels = np.asarray(image)
    assert pixels[0, 0, 3] == 0
    assert tuple(pixels[16, 16]) == (200, 30, 30, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P"])
def test_grey_and_palette_modes_become_rgb(mode):
    source = gradient_rgb().convert("L").convert(mode)
    image = decode_image(encode(source, "PNG"), SETTINGS)
    # LA whose alpha is all opaque carries no real alpha: RGB.
    assert image.mode == "RGB"
    assert image.size == source.size


def test_rgba_keeps_real_alpha_and_drops_opaque_alpha():
    rgba = gradient_rgb().convert("RGBA")
    opaque = decode_image(encode(rgba, "PNG"), SETTINGS)
    assert opaque.mode == "RGB"
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    real = decode_image(encode(rgba, "PNG"), SETTINGS)
    assert real.mode == "RGBA"
    assert np.array_equal(np.asarray(real), np.asarray(rgba))


def test_animated_webp_yields_its_first_frame():
    frames = [Image.new("RGB", (48, 48), colour) for colour in [(220, 20, 20), (20, 220, 20), (20, 20, 220)]]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data, SETTINGS)
    assert tuple(np.asarray(image)[24, 24]) == (220, 20, 20)


def test_animated_png_yields_its_first_frame():
    frames = [Image.new("RGB", (48, 48), colour) for colour in [(200, 100, 0), (0, 100, 200)]]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)
    image = decode_image(data, SETTINGS)
    assert tuple(np.asarray(image)[24, 24]) == (200, 100, 0)


def test_format_comes_from_content_not_name():
    # A PNG payload is a PNG whatever the client called it; the decoder never sees a name.
    assert sniff_format(encode(gradient_rgb(), "PNG")) == "PNG"
    assert sniff_format(encode(gradient_rgb(), "JPEG")) == "JPEG"
    assert sniff_format(encode(gradient_rgb(), "WEBP")) == "WEBP"


# ---------------------------------------------------------------- rejections


def _truncated(fmt: str) -> bytes:
    data = encode(noise_rgb(128, 128), fmt)
    return data[: len(data) * 2 // 3]


def _corrupt_png() -> bytes:
    # Right magic and header, garbage where the compressed pixels go.
    data = bytearray(encode(noise_rgb(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 200] = bytes(range(200))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "error", "status"),
    [
        pytest.param(b"", errors.EmptyImage, 422, id="zero-bytes"),
        pytest.param(_truncated("PNG"), errors.TruncatedImage, 422, id="truncated-png"),
        pytest.param(_truncated("JPEG"), errors.TruncatedImage, 422, id="truncated-jpeg"),
        pytest.param(_truncated("WEBP"), errors.TruncatedImage, 422, id="truncated-webp"),
        pytest.param(b"this is not an image, whatever photo.jpg says" * 10, errors.UnsupportedFormat, 415, id="text-named-jpg"),
        pytest.param(b"%PDF-1.7\n" + bytes(500), errors.UnsupportedFormat, 415, id="pdf"),
        pytest.param(encode(gradient_rgb(), "GIF"), errors.UnsupportedFormat, 415, id="gif"),
        pytest.param(_corrupt_png(), errors.UndecodableImage, 422, id="png-magic-garbage-body"),
        pytest.param(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9", errors.UndecodableImage, 422, id="jpeg-magic-garbage"),
    ],
)
def test_bad_input_raises_a_typed_error(data, error, status):
    with pytest.raises(error) as raised:
        decode_image(data, SETTINGS)
    assert http_status(raised.value) == status
    assert isinstance(raised.value, errors.InputError)


def test_byte_cap_is_checked_before_anything_else():
    # Not even an image: the size alone decides, before sniffing.
    with pytest.raises(errors.UploadTooLarge) as raised:
        decode_image(b"\x00" * 1001, DecodeSettings(max_upload_bytes=1000))
    assert http_status(raised.value) == 413


def test_pixel_cap_comes_from_the_header():
    # Noise compresses badly: an honest (non-bomb) image that is merely too large.
    data = encode(noise_rgb(120, 100), "PNG")
    with pytest.raises(errors.TooManyPixels):
        decode_image(data, DecodeSettings(max_pixels=100 * 100))
    assert decode_image(data, DecodeSettings(max_pixels=120 * 100)).size == (120, 100)


def tiny_png_bomb(side: int) -> bytes:
    """A 1-bit greyscale PNG of side x side zeros, written row by row: kilobytes on disk."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_png_decompression_bomb_fails_fast_with_bounded_memory():
    data = tiny_png_bomb(20_000)  # 400 megapixels
    assert len(data) < 100_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(errors.DecompressionBomb):
            decode_image(data, SETTINGS)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    # Decoding it would need 400 MB even as 8-bit; refusing it must stay near the file's size.
    assert peak < 5 * 1024 * 1024, peak


def test_pillow_bomb_limit_is_our_cap_and_its_warning_an_error():
    decode_image(encode(gradient_rgb(), "PNG"), DecodeSettings(max_pixels=7000))
    assert Image.MAX_IMAGE_PIXELS == 7000
    # Any other Image.open in the process is held to the same cap, as an error not a warning.
    with pytest.raises(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(encode(noise_rgb(90, 90), "PNG")))
    decode_image(encode(gradient_rgb(), "PNG"), SETTINGS)
    assert Image.MAX_IMAGE_PIXELS == SETTINGS.max_pixels


def test_an_over_cap_jpeg_is_decoded_at_a_reduced_scale_that_fits():
    source = gradient_rgb(400, 300)  # 120,000 pixels; the cap below allows 1/2 scale (30,000)
    data = encode(source, "JPEG", quality=90)
    assert 120_000 * 4 < 100 * len(data)  # an honest file, not a bomb by its ratio
    image = decode_image(data, DecodeSettings(max_pixels=40_000))
    assert image.size == (200, 150)
    # Still the same picture: the gradient matches a plain downscale of the source.
    assert mean_abs_diff(image, source.resize((200, 150), Image.Resampling.BOX)) < 4
    # Even 1/8 scale would not fit: refused.
    with pytest.raises(errors.TooManyPixels):
        decode_image(encode(source, "JPEG", quality=90), DecodeSettings(max_pixels=1_000))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_an_embedded_icc_profile_is_applied(mode, monkeypatch):
    from PIL import ImageCms

    calls = []
    real_transform = ImageCms.profileToProfile
    monkeypatch.setattr(ImageCms, "profileToProfile", lambda *a, **k: calls.append(a[0].mode) or real_transform(*a, **k))
    source = gradient_rgb().convert(mode)
    if mode == "RGBA":
        source.putalpha(128)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = decode_image(encode(source, "PNG", icc_profile=srgb), SETTINGS)
    assert image.mode == mode and calls == [mode]
    # sRGB -> sRGB: the transform runs and changes (almost) nothing.
    assert mean_abs_diff(image, source) < 1.5
