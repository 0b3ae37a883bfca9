"""Property-based fuzzing of the decoder: whatever the bytes, a bounded image or a typed refusal.

Inputs: random bytes (bare and behind each format's magic), and real images made
here in every format and mode (plus ../shared/images where present) mutated by bit
flips, byte overwrites, insertions, deletions, truncation, and header edits that
keep the checksums right (PNG IHDR, JPEG SOF, WebP VP8X/VP8L, GIF screen and frame
sizes), so the edits reach the decoder instead of failing at the first CRC.

Properties: ``decode_upload`` returns an RGB/RGBA image within the pixel cap and
the aspect limit, or raises an ``InputError`` with a stable code and a 4xx status;
any other exception fails. Each example has a deadline, and the process's peak
resident memory over a whole test stays bounded.

Deterministic: ``derandomize=True`` and no example database.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np
import pytest

from server.problems import http_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lift3d.errors import InputError
from lift3d.settings import DecodeSettings
from pipeline.decode import MAX_ASPECT_RATIO, decode_upload
from tests.support.paths import SHARED
from tests.support.memory_probe import reset_peak, vm_hwm_bytes, vm_rss_bytes

# A smaller cap than the default keeps the worst accepted case cheap; the rules are the same.
DECODE = DecodeSettings(max_upload_bytes=2_000_000, max_pixels=1024 * 1024)
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=5000,  # ms per example; the slowest honest case here decodes in well under 100 ms
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)
MEMORY_BOUND = 512 * 1024**2
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x01\x00\x00WEBPVP8X", b"RIFF\x00\x01\x00\x00WEBPVP8L", b"GIF89a", b"GIF87a"]


def check_decode(data: bytes) -> None:
    try:
        decoded = decode_upload(data, DECODE)
    except InputError as refused:
        assert refused.code and refused.code != "internal_error", refused
        assert 400 <= http_status(refused) < 500, refused
        return
    image = decoded.image
    width, height = image.size
    assert image.mode in ("RGB", "RGBA")
    assert 1 <= width * height <= DECODE.max_pixels
    # A reduced decode rounds up, so allow one pixel on the shorter side.
    assert max(width, height) <= MAX_ASPECT_RATIO * (min(width, height) + 1)
    assert decoded.reduction in (1, 2, 4, 8)


@pytest.fixture(scope="module", autouse=True)
def bounded_peak_memory():
    """The whole module's examples together stay under MEMORY_BOUND above where they started."""
    was_reset = reset_peak()
    start = vm_rss_bytes() if was_reset else vm_hwm_bytes()
    yield
    if was_reset:
        assert vm_hwm_bytes() - start < MEMORY_BOUND, f"peak {(vm_hwm_bytes() - start) / 2**20:.0f} MiB above the start"


# ---------------------------------------------------------------- seed images, made here


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def seeds() -> tuple[bytes, ...]:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    frames = [Image.new("RGB", (20, 16), c) for c in [(200, 20, 20), (20, 200, 20)]]
    made = [
        _encode(rgb, "PNG"),
        _encode(rgba, "PNG"),
        _encode(palette, "PNG", transparency=0),
        _encode(Image.fromarray(np.arange(24 * 40, dtype=np.uint16).reshape(24, 40)), "PNG"),
        _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", quality=80, progressive=True),
        _encode(rgb, "JPEG", exif=exif.tobytes(), icc_profile=srgb),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb.convert("L"), "JPEG"),
        _encode(rgb.resize((400, 240)), "JPEG"),  # large enough to be reduced at 1/2 under min_side=0
        _encode(rgb, "WEBP", quality=70),
        _encode(rgba, "WEBP", lossless=True),
        _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        _encode(palette, "GIF", transparency=0),
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
    ]
    shared = SHARED / "images"
    if shared.is_dir():
        made += [p.read_bytes() for p in sorted(shared.iterdir()) if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".gif"}]
    return tuple(made)


# ---------------------------------------------------------------- header edits with the checksums kept right


def _png_set_ihdr(data: bytes, width: int, height: int) -> bytes:
    at = data.find(b"IHDR")
    if at < 4:
        return data
    payload = bytearray(data[at + 4 : at + 17])
    payload[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(payload)))
    return data[: at + 4] + bytes(payload) + crc + data[at + 21 :]


def _jpeg_set_sof(data: bytes, width: int, height: int) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            return data[: at + 5] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + data[at + 9 :]
    return data


def _webp_set_size(data: bytes, width: int, height: int) -> bytes:
    chunk = data[12:16]
    if chunk == b"VP8X":
        w, h = (max(1, width) - 1) & 0xFFFFFF, (max(1, height) - 1) & 0xFFFFFF
        return data[:24] + w.to_bytes(3, "little") + h.to_bytes(3, "little") + data[30:]
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        bits = (bits & ~0xFFFFFFF) | ((max(1, width) - 1) & 0x3FFF) | (((max(1, height) - 1) & 0x3FFF) << 14)
        return data[:21] + bits.to_bytes(4, "little") + data[25:]
    return data


def _gif_set_sizes(data: bytes, width: int, height: int) -> bytes:
    edited = bytearray(data)
    edited[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    at = data.find(b",", 13)
    if 0 < at and at + 9 <= len(data):
        edited[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    return bytes(edited)


def edit_header(data: bytes, width: int, height: int) -> bytes:
    if data.startswith(b"\x89PNG"):
        return _png_set_ihdr(data, width, height)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_set_sof(data, width, height)
    if data.startswith(b"RIFF"):
        return _webp_set_size(data, width, height)
    if data.startswith(b"GIF"):
        return _gif_set_sizes(data, width, height)
    return data


# ---------------------------------------------------------------- mutations


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "header"]))
        if not data:
            break
        # Mostly past the magic (else it is only a 415), half of those among the headers.
        past_magic = min(12, len(data) - 1)
        position = draw(
            st.one_of(
                st.integers(past_magic, min(len(data) - 1, 96)),
                st.integers(past_magic, len(data) - 1),
                st.integers(0, len(data) - 1),
            )
        )
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[position:]
        else:
            side = st.one_of(st.integers(0, 70_000), st.sampled_from([1, 2, 1024, 1025, 4096, 16_383, 16_384, 65_535]))
            data = bytearray(edit_header(bytes(data), draw(side), draw(side)))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    check_decode(data)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_random_bytes_behind_a_magic(magic, body):
    check_decode(magic + body)


@settings(FUZZ, max_examples=1500)
@given(mutated())
def test_mutated_images(data):
    check_decode(data)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(range(16)), st.integers(1, 70_000), st.integers(1, 70_000))
def test_declared_sizes_with_valid_checksums(index, width, height):
    check_decode(edit_header(seeds()[index], width, height))
