"""The decode matrix: every accepted format and mode, and every typed rejection."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest

from server.problems import http_status
from PIL import Image

from lift3d.settings import DecodeSettings
from lift3d import errors
from pipeline import decode as decode_module
from pipeline.decode import MAX_ASPECT_RATIO, decode_image, decode_upload, sniff_format, webp_canvas_size

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


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_keeps_real_alpha(fmt):
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    palette.paste(1, (8, 8, 24, 24))
    image = decode_image(encode(palette, fmt, transparency=0), SETTINGS)
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
    assert sniff_format(encode(gradient_rgb(), "GIF")) == "GIF"


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
        pytest.param(_truncated("GIF"), errors.TruncatedImage, 422, id="truncated-gif"),
        pytest.param(b"this is not an image, whatever photo.jpg says" * 10, errors.UnsupportedFormat, 415, id="text-named-jpg"),
        pytest.param(b"%PDF-1.7\n" + bytes(500), errors.UnsupportedFormat, 415, id="pdf"),
        pytest.param(b"GIF89a" + b"\x00" * 64 + b";", errors.UndecodableImage, 422, id="gif-magic-garbage"),
        pytest.param(b"BM" + bytes(200), errors.UnsupportedFormat, 415, id="bmp"),
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


def test_pillow_global_guard_is_left_alone_so_our_own_canvases_never_trip_it():
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    decode_image(encode(gradient_rgb(), "PNG"), DecodeSettings(max_pixels=7000))
    assert Image.MAX_IMAGE_PIXELS == limit
    assert list(warnings.filters) == filters
    # The cap still holds for untrusted input...
    with pytest.raises(errors.TooManyPixels):
        decode_image(encode(noise_rgb(90, 90), "PNG"), DecodeSettings(max_pixels=7000))
    # ...while a canvas of our own far beyond it is not an error anywhere else in the process.
    assert Image.new("L", (200, 200)).crop((-50, -50, 250, 250)).size == (300, 300)


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


# ---------------------------------------------------------------- GIF: the first frame, like APNG and WebP


def test_animated_gif_yields_its_first_frame():
    frames = [Image.new("RGB", (48, 48), colour) for colour in [(220, 20, 20), (20, 220, 20), (20, 20, 220)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data, SETTINGS)
    assert image.mode == "RGB" and image.size == (48, 48)
    assert tuple(np.asarray(image)[24, 24]) == (220, 20, 20)


def test_a_gif_without_a_transparent_index_is_rgb():
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    assert decode_image(encode(palette, "GIF"), SETTINGS).mode == "RGB"


def gif_declaring_frame(screen: tuple[int, int], frame_box: tuple[int, int, int, int]) -> bytes:
    """A GIF whose first image descriptor says ``frame_box`` (x, y, w, h): a few dozen bytes."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", *frame_box, 0)
    return header + descriptor + b"\x02\x02\x4c\x01\x00" + b";"


@pytest.mark.parametrize(
    ("frame_box", "error"),
    [((0, 0, 60000, 60000), errors.TooManyPixels), ((65000, 65000, 10, 10), errors.TooManyPixels), ((0, 0, 5000, 5000), errors.DecompressionBomb)],
    ids=["huge-frame", "frame-far-off-screen", "bomb-ratio"],
)
def test_a_gif_frame_outside_its_screen_is_judged_before_decoding(frame_box, error):
    with pytest.raises(error):
        decode_image(gif_declaring_frame((10, 10), frame_box), SETTINGS)


# ---------------------------------------------------------------- completeness: the end marker must be there


def _png_bytes() -> bytes:
    data = encode(noise_rgb(64, 48), "PNG")
    assert data.endswith(decode_module.PNG_IEND_CHUNK)
    return data


@pytest.mark.parametrize("cut", [12, 16, 20], ids=["no-IEND", "no-IEND-nor-IDAT-crc", "no-IEND-crc-adler"])
def test_a_png_without_iend_is_truncated_even_when_its_pixels_decode(cut):
    data = _png_bytes()[:-cut]
    # Pillow alone decodes every pixel of these: the cut falls after the last image row.
    Image.open(io.BytesIO(data)).load()
    with pytest.raises(errors.TruncatedImage):
        decode_image(data, SETTINGS)


def test_bytes_after_the_end_marker_are_ignored():
    png = _png_bytes()
    assert decode_image(png + b"trailing bytes", SETTINGS).size == (64, 48)
    # A JPEG followed by more data (motion photos append a video, MPO a second image).
    jpeg = encode(gradient_rgb(), "JPEG", quality=90)
    assert decode_image(jpeg + b"\x00" * 100 + b"ftypmp42" + bytes(500), SETTINGS).size == (96, 64)


@pytest.mark.parametrize(
    ("fmt", "cut"),
    [("JPEG", 2), ("GIF", 1), ("WEBP", 1)],
    ids=["jpeg-no-EOI", "gif-no-trailer", "webp-short-of-riff-size"],
)
def test_a_missing_end_marker_is_truncated(fmt, cut):
    data = encode(noise_rgb(64, 48), fmt)
    with pytest.raises(errors.TruncatedImage):
        decode_image(data[:-cut], SETTINGS)


# ---------------------------------------------------------------- aspect ratio


@pytest.mark.parametrize("size", [(1, 65_500), (65_500, 1), (1, 20_000), (10, 330)], ids=["1x65500", "65500x1", "1x20000", "10x330"])
def test_an_extreme_aspect_ratio_is_refused_from_the_header(size):
    data = encode(Image.new("RGB", size, (90, 120, 30)), "JPEG", quality=80)
    with pytest.raises(errors.ExtremeAspectRatio) as raised:
        decode_image(data, SETTINGS)
    assert http_status(raised.value) == 422 and raised.value.code == "extreme_aspect_ratio"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_the_aspect_limit_is_inclusive(fmt):
    assert MAX_ASPECT_RATIO == 32
    image = decode_image(encode(Image.new("RGB", (10, 320), (90, 120, 30)), fmt), SETTINGS)
    assert image.size == (10, 320)


# ---------------------------------------------------------------- JPEG reduction (draft mode)


def phone_jpeg(size: tuple[int, int], **params) -> bytes:
    """A large JPEG with smooth content: a gradient with a darker object in the middle."""
    width, height = size
    image = gradient_rgb(width // 8, height // 8).resize(size, Image.Resampling.BILINEAR)
    image.paste((40, 40, 40), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return encode(image, "JPEG", quality=85, **params)


def test_a_12_mp_jpeg_decodes_at_the_coarsest_scale_that_keeps_640_px():
    data = phone_jpeg((4032, 3024))
    decoded = decode_upload(data, SETTINGS)
    assert (decoded.reduction, decoded.finest_reduction) == (4, 1)
    assert decoded.image.size == (1008, 756)
    # min_side decides: 1/8 would leave 378 px; asking for less allows it, min_side=0 is a full decode.
    assert decode_upload(data, SETTINGS, min_side=378).image.size == (504, 378)
    assert decode_upload(data, SETTINGS, min_side=0).image.size == (4032, 3024)
    # Still the same picture.
    full = decode_image(data, SETTINGS, min_side=0).resize((1008, 756), Image.Resampling.BOX)
    assert mean_abs_diff(decoded.image, full) < 2


def test_small_photos_are_never_reduced():
    data = encode(gradient_rgb(1000, 667), "JPEG", quality=90)
    decoded = decode_upload(data, SETTINGS)
    assert decoded.reduction == 1 and decoded.image.size == (1000, 667)


def test_a_48_mp_phone_jpeg_is_decoded_reduced_not_refused():
    data = phone_jpeg((8000, 6000))
    # Flat content compresses far beyond the bomb ratio: the reduced bitmap bounds memory anyway.
    assert 8000 * 6000 * 4 > decode_module.BOMB_EXPANSION * len(data)
    decoded = decode_upload(data, SETTINGS)
    assert (decoded.reduction, decoded.finest_reduction) == (8, 2)
    assert decoded.image.size == (1000, 750)
    finest = decode_upload(data, SETTINGS, min_side=0)
    assert finest.image.size == (4000, 3000) and finest.image.size[0] * finest.image.size[1] <= SETTINGS.max_pixels


def test_exif_orientation_is_applied_after_a_reduced_decode():
    upright = Image.new("RGB", (1300, 2400), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 1300, 1200))  # red top half
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())
    decoded = decode_upload(data, SETTINGS)
    assert decoded.reduction == 2 and decoded.image.size == (650, 1200)
    pixels = np.asarray(decoded.image)
    assert pixels[100, 325, 0] > 200 and pixels[100, 325, 2] < 60
    assert pixels[1100, 325, 2] > 200 and pixels[1100, 325, 0] < 60


def test_cmyk_and_icc_survive_a_reduced_decode(monkeypatch):
    from PIL import ImageCms

    cmyk = Image.new("CMYK", (2600, 1400), (255, 0, 0, 0))  # pure cyan ink
    decoded = decode_upload(encode(cmyk, "JPEG", quality=90), SETTINGS)
    assert decoded.reduction == 2 and decoded.image.mode == "RGB"
    red, green, blue = np.asarray(decoded.image)[350, 650].astype(int)
    assert red < 40 and green > 215 and blue > 215

    calls = []
    real_transform = ImageCms.profileToProfile
    monkeypatch.setattr(ImageCms, "profileToProfile", lambda *a, **k: calls.append(a[0].size) or real_transform(*a, **k))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_upload(phone_jpeg((2600, 1400), icc_profile=srgb), SETTINGS)
    assert decoded.reduction == 2 and calls == [(1300, 700)]


def test_a_progressive_jpeg_is_reduced_too():
    decoded = decode_upload(phone_jpeg((2600, 1400), progressive=True), SETTINGS)
    assert decoded.reduction == 2 and decoded.image.size == (1300, 700)


# ---------------------------------------------------------------- WebP: size judged before libwebp allocates


@pytest.mark.parametrize(
    "params",
    [{"quality": 80}, {"lossless": True}, {"lossless": True, "save_all": True, "append_images": [Image.new("RGB", (77, 51))]}],
    ids=["vp8", "vp8l", "vp8x-animated"],
)
def test_webp_canvas_size_is_read_from_the_first_chunk(params):
    data = encode(noise_rgb(77, 51), "WEBP", **params)
    assert webp_canvas_size(data) == (77, 51) == Image.open(io.BytesIO(data)).size


def test_an_over_cap_webp_is_refused_before_libwebp_sees_it(monkeypatch):
    # An animated WebP (VP8X) whose canvas field is edited to 16384 x 16384.
    data = bytearray(encode(noise_rgb(64, 64), "WEBP", lossless=True, save_all=True, append_images=[Image.new("RGB", (64, 64))]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (16383).to_bytes(3, "little") * 2
    assert webp_canvas_size(bytes(data)) == (16384, 16384)

    def never(*args, **kwargs):
        raise AssertionError("libwebp was handed an over-cap canvas")

    monkeypatch.setitem(decode_module._HEADER_READERS, "WEBP", never)
    with pytest.raises(errors.DecompressionBomb):
        decode_image(bytes(data), SETTINGS)
