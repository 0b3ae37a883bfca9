"""Multi-scan JPEGs: the frame header and scan count read from the markers, and the decoder's
refusals built on them (libjpeg keeps a progressive file's coefficients at full size and
walks them once per scan, so draft scaling bounds neither memory nor time there)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from lift3d.errors import DecompressionBomb, TooManyPixels
from lift3d.settings import DecodeSettings
from pipeline.decode import MAX_JPEG_SCANS, decode_upload
from pipeline.jpeg_markers import read_layout


def jpeg(size: tuple[int, int], *, progressive: bool, subsampling: int = 2, mode: str = "RGB", noise: bool = True) -> bytes:
    rng = np.random.default_rng(0)
    channels = len(mode)
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8) if noise else np.full((size[1], size[0], channels), 120, np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    # bufsize: Pillow's default output buffer is too small for a progressive noise image.
    image.save(buffer, format="JPEG", quality=85, progressive=progressive, subsampling=subsampling, bufsize=pixels.size * 2)
    return buffer.getvalue()


def declare_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with its SOF header claiming another size."""
    at = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    patched = bytearray(data)
    patched[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(patched)


def with_repeated_last_scan(data: bytes, copies: int) -> bytes:
    """Append the last scan ``copies`` more times: each adds a few bytes and one pass over the frame."""
    last_sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[last_sos:eoi] * copies + data[eoi:]


def test_a_baseline_jpeg_is_one_scan_and_streams():
    layout = read_layout(jpeg((640, 480), progressive=False))
    assert layout is not None and (layout.width, layout.height) == (640, 480)
    assert layout.scans == 1 and not layout.progressive and not layout.buffers_whole_frame
    assert layout.sampling == ((2, 2), (1, 1), (1, 1))  # 4:2:0


@pytest.mark.parametrize(("subsampling", "blocks_per_mcu", "mcu_side"), [(2, 6, 16), (0, 3, 8)])
def test_a_progressive_jpeg_buffers_its_whole_frame(subsampling, blocks_per_mcu, mcu_side):
    layout = read_layout(jpeg((640, 480), progressive=True, subsampling=subsampling, noise=False))
    assert layout is not None and layout.progressive and layout.buffers_whole_frame
    assert 5 <= layout.scans <= 20  # libjpeg's default progressive script
    mcus = -(-640 // mcu_side) * -(-480 // mcu_side)
    assert layout.coefficient_bytes == mcus * blocks_per_mcu * 64 * 2


def test_grey_and_cmyk_layouts():
    grey = read_layout(jpeg((100, 60), progressive=True, mode="L"))
    assert grey is not None and len(grey.sampling) == 1
    cmyk = read_layout(jpeg((64, 64), progressive=False, subsampling=0, mode="CMYK"))
    assert cmyk is not None and len(cmyk.sampling) == 4


@pytest.mark.parametrize("broken", [b"\xff\xd8\xff", b"\xff\xd8\x00\x00\x00\x00", b"\xff\xd8\xff\xe0\x00\x01", b"\xff\xd8\xff\xc0\x00\x08\x08\x00\x10"])
def test_markers_that_cannot_be_followed_leave_the_verdict_to_libjpeg(broken):
    assert read_layout(broken) is None


def test_a_progressive_file_over_its_coefficient_budget_is_refused_where_baseline_decodes_reduced():
    settings = DecodeSettings(max_pixels=128 * 128)  # budget: 12 bytes per capped pixel, 192 KiB
    baseline = decode_upload(jpeg((1024, 768), progressive=False), settings)
    assert baseline.reduction == 8 and baseline.image.size == (128, 96)
    with pytest.raises(TooManyPixels, match="progressive"):
        decode_upload(jpeg((1024, 768), progressive=True), settings)
    small = decode_upload(jpeg((128, 96), progressive=True), settings)  # under the cap: 36 KiB of coefficients
    assert small.image.size == (128, 96)


def test_a_tiny_file_claiming_a_huge_progressive_frame_is_a_bomb_refused_before_decoding():
    claim = declare_size(jpeg((64, 64), progressive=True, noise=False), 30000, 30000)
    assert len(claim) < 2000
    started = time.perf_counter()
    with pytest.raises(DecompressionBomb):
        decode_upload(claim, DecodeSettings())
    assert time.perf_counter() - started < 1.0  # refused from the markers: nothing was allocated or walked


def test_thousands_of_scans_are_refused_and_an_ordinary_progressive_jpeg_is_not():
    ordinary = jpeg((256, 256), progressive=True)
    assert decode_upload(ordinary, DecodeSettings()).image.size == (256, 256)
    many = with_repeated_last_scan(ordinary, MAX_JPEG_SCANS)
    layout = read_layout(many)
    assert layout is not None and layout.scans > MAX_JPEG_SCANS
    with pytest.raises(DecompressionBomb, match="scans"):
        decode_upload(many, DecodeSettings())


def test_the_walk_does_not_copy_a_large_upload():
    data = bytearray(jpeg((2000, 1500), progressive=True))
    import tracemalloc

    tracemalloc.start()
    read_layout(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < len(data) // 4
