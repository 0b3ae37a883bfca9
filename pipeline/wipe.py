"""Overwriting the memory that held a user's photo once a job is done with it.

Freed memory keeps its bytes until something else is written there, so dropping a
reference is not enough: a later heap dump, core file or memory-reading bug would
still find the photo. What we own and Python lets us change in place is zeroed:

- the upload, held from the first body byte to the decode in one :class:`WipedBuffer`
  (a ``bytearray`` that zeroes itself when its last reference goes, on every path,
  and is never resized in place, so no stale copy is left by a reallocation);
- decoded bitmaps (Pillow images, pasted over with zeros) and numpy/torch arrays.

Immutable ``bytes`` (the HTTP server's own chunks, Pillow's internal reads) cannot
be overwritten; docs/security.md lists what may remain.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np


class WipedBuffer(bytearray):
    """A ``bytearray`` whose contents are zeroed when it is wiped or garbage-collected."""

    def wipe(self) -> None:
        wipe_bytes(self)

    def __del__(self) -> None:
        wipe_bytes(self)


def wipe_bytes(buffer: bytearray | memoryview) -> None:
    """Zero a writable buffer in place (never resizes it)."""
    try:
        with memoryview(buffer) as view:
            if view.readonly or view.nbytes == 0:
                return
            flat = view.cast("B")
            flat[:] = bytes(flat.nbytes)
    except (TypeError, ValueError):
        pass


def wipe_image(image: Any) -> None:
    """Zero a Pillow image's pixels in place (a lazy, unloaded or read-only image is left alone)."""
    try:
        # Pasting into an image whose file is not decoded yet (``tile`` pending) would decode it first.
        if getattr(image, "readonly", 0) or getattr(image, "tile", None):
            return
        image.paste(0, (0, 0, *image.size))
    except Exception:  # noqa: BLE001 - a closed or unloaded image holds no pixels to wipe
        pass


def wipe(value: Any) -> None:
    """Zero whatever of ``value`` can be zeroed in place: WipedBuffers, arrays, tensors, images."""
    if value is None or isinstance(value, (bytes, str)):
        return
    if isinstance(value, WipedBuffer):
        value.wipe()
    elif isinstance(value, np.ndarray):
        if value.flags.writeable:
            value.fill(0)
    elif "torch" in sys.modules and isinstance(value, sys.modules["torch"].Tensor):
        _wipe_tensor(value, sys.modules["torch"])
    elif hasattr(value, "paste") and hasattr(value, "size"):
        wipe_image(value)


def _wipe_tensor(tensor: Any, torch: Any) -> None:
    # A tensor made under inference_mode may only be changed in place inside it again.
    mode = torch.inference_mode() if tensor.is_inference() else torch.no_grad()
    try:
        with mode:
            tensor.zero_()
    except RuntimeError:  # a view of a shared or expanded tensor: not ours to overwrite
        pass


class BufferReader(io.RawIOBase):
    """A seekable read-only file over a buffer, without ``io.BytesIO``'s copy of a ``bytearray``."""

    def __init__(self, data: bytes | bytearray) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        size = min(len(target), max(0, len(self._view) - self._position))
        target[:size] = self._view[self._position : self._position + size]
        self._position += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        # Releasing the view lets the buffer be resized, wiped and freed.
        if not self.closed:
            self._view.release()
        super().close()
