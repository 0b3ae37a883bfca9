"""Zeroing what held a photo: WipedBuffer, images, arrays, the upload reader and the engine's drop (issue 13, class 4)."""

from __future__ import annotations

import asyncio
import ctypes
import io
import os

import pytest

import numpy as np
from PIL import Image

from pipeline.decode import decode_upload
from pipeline.options import resolve_options, JobOptions
from pipeline.state import JobState
from pipeline.wipe import BufferReader, WipedBuffer, wipe, wipe_image
from lift3d.settings import DecodeSettings, EngineSettings
from server.uploads import ImageBytes, read_raw_image

MARK = b"wipe-test-marker-" * 64  # 1088 bytes: a heap chunk that stays mapped after free


def _address(buffer: bytearray) -> int:
    holder = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    address = ctypes.addressof(holder)
    del holder
    return address


def test_a_wiped_buffer_zeroes_itself_when_freed() -> None:
    buffer = WipedBuffer(MARK)
    address = _address(buffer)
    del buffer
    # The freed chunk is still heap memory; allocator metadata may take its first words, never the marker.
    assert MARK[100:200] not in ctypes.string_at(address, len(MARK))


@pytest.mark.skipif(bool(os.environ.get("PYTHONMALLOC")), reason="a debug allocator scribbles over freed memory itself")
def test_a_plain_bytearray_keeps_its_bytes_when_freed() -> None:
    """The control: without WipedBuffer the bytes survive the free (what the test above guards against)."""
    buffer = bytearray(MARK)
    address = _address(buffer)
    del buffer
    assert MARK[100:200] in ctypes.string_at(address, len(MARK))


def test_image_bytes_grows_without_leaving_copies() -> None:
    gathered = ImageBytes(expected=16)
    old = gathered._buffer
    gathered.add(MARK[:10])
    gathered.add(MARK[10:])  # outgrows the first buffer: moved, and the old one zeroed
    assert bytes(old) == bytes(len(old))
    taken = gathered.take()
    assert isinstance(taken, WipedBuffer) and bytes(taken) == MARK


def test_read_raw_image_returns_one_wiped_buffer_of_the_exact_size() -> None:
    async def chunks():
        for start in range(0, len(MARK), 100):
            yield MARK[start : start + 100]

    upload = asyncio.run(read_raw_image(chunks(), cap=10_000, expected=len(MARK)))
    assert isinstance(upload.image, WipedBuffer) and bytes(upload.image) == MARK


def test_wipe_zeroes_images_and_arrays_in_place() -> None:
    image = Image.new("RGB", (16, 16), (200, 100, 50))
    wipe_image(image)
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))
    array = np.full((4, 4), 7, np.uint8)
    wipe(array)
    assert not array.any()
    text = b"immutable"
    wipe(text)  # bytes cannot be changed in place: left alone, no error
    assert text == b"immutable"


def test_drop_inputs_zeroes_the_images_it_drops() -> None:
    image = Image.new("RGB", (8, 8), (9, 9, 9))
    cutout = Image.new("RGBA", (8, 8), (9, 9, 9, 255))
    views = np.ones((2, 3, 4, 4), np.float32)
    upload = WipedBuffer(b"photo bytes")
    job = JobState(options=resolve_options(JobOptions(), EngineSettings()), input_bytes=upload, image=image, cutout=cutout, views=views)
    job.drop_inputs()
    assert job.image is None and job.cutout is None and job.input_bytes is None
    assert image.getextrema() == ((0, 0),) * 3 and cutout.getextrema() == ((0, 0),) * 4
    assert not views.any() and bytes(upload) == bytes(len(upload))


def test_decode_reads_a_wiped_buffer_without_copying_it_whole() -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(png, format="PNG")
    data = WipedBuffer(png.getvalue())
    decoded = decode_upload(data, DecodeSettings())
    assert decoded.image.size == (64, 48) and decoded.image.getpixel((3, 3)) == (10, 200, 30)
    reader = BufferReader(data)
    assert reader.read(8) == bytes(data[:8]) and reader.seek(0, io.SEEK_END) == len(data)
    reader.close()
    data.wipe()  # no export is left behind by the decode: the buffer is still writable and resizable
    data.extend(b"x")


def test_wipe_zeroes_a_tensor_made_under_inference_mode() -> None:
    import torch

    with torch.inference_mode():
        made = torch.ones(4)
    wipe(made)  # outside inference mode, as the engine's clean-up runs
    assert made.sum().item() == 0
