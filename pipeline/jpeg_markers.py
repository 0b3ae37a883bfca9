"""A JPEG's frame header and scan count, read from its markers without decoding a pixel.

libjpeg decodes a single-scan JPEG in one streaming pass: with draft scaling only the
reduced bitmap exists. A JPEG of several scans (progressive, or sequential with one
component per scan) is different: libjpeg keeps every DCT coefficient of the whole
frame until the last scan, 2 bytes per coefficient at full size whatever the draft
scale, and walks that buffer once per scan. So for those files the declared size and
the number of scans, not the output size, bound memory and time; the decoder judges
them from what this module reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Start-of-frame markers (every SOFn but DHT C4, JPG C8 and DAC CC) and the progressive ones.
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF: Final = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
# Inside entropy-coded data a marker is 0xFF followed by anything but a stuffed 0x00,
# a restart marker (D0-D7) or fill (another 0xFF).
_NEXT_MARKER: Final = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_COEFFICIENT_BYTES: Final = 2  # libjpeg's JCOEF is a 16-bit short


@dataclass(frozen=True)
class JpegLayout:
    width: int
    height: int
    progressive: bool
    scans: int
    # (horizontal, vertical) sampling factor per component
    sampling: tuple[tuple[int, int], ...]

    @property
    def buffers_whole_frame(self) -> bool:
        """True when libjpeg keeps the full-size coefficient buffer (more than one scan)."""
        return self.progressive or self.scans > 1

    @property
    def coefficient_bytes(self) -> int:
        """Size of libjpeg's whole-frame coefficient buffer: blocks padded to whole MCUs."""
        if not self.sampling:
            return 0
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        mcus_across = -(-self.width // (8 * h_max))
        mcus_down = -(-self.height // (8 * v_max))
        blocks = sum(mcus_across * h * mcus_down * v for h, v in self.sampling)
        return blocks * 64 * _COEFFICIENT_BYTES


def read_layout(data: bytes | bytearray | memoryview) -> JpegLayout | None:
    """The frame header and scan count of a JPEG, or None where the markers cannot be followed.

    None leaves the verdict to libjpeg, which refuses a malformed file by itself; the
    walk never copies the upload and stops at EOI or at the end of the data.
    """
    frame: tuple[int, int, bool, tuple[tuple[int, int], ...]] | None = None
    scans = 0
    position = 2  # after SOI
    end = len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            position += 2
            continue
        length = (data[position + 2] << 8) | data[position + 3]
        if length < 2 or position + 2 + length > end:
            return None
        if marker in _SOF_MARKERS and frame is None:
            frame = _parse_frame(data, position + 4, length - 2, marker in _PROGRESSIVE_SOF)
            if frame is None:
                return None
        position += 2 + length
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
    if frame is None:
        return None
    width, height, progressive, sampling = frame
    return JpegLayout(width=width, height=height, progressive=progressive, scans=scans, sampling=sampling)


def _parse_frame(
    data: bytes | bytearray | memoryview, start: int, length: int, progressive: bool
) -> tuple[int, int, bool, tuple[tuple[int, int], ...]] | None:
    if length < 6:
        return None
    height = (data[start + 1] << 8) | data[start + 2]
    width = (data[start + 3] << 8) | data[start + 4]
    components = data[start + 5]
    if components == 0 or length < 6 + 3 * components:
        return None
    sampling = []
    for index in range(components):
        factors = data[start + 6 + 3 * index + 1]
        horizontal, vertical = factors >> 4, factors & 0x0F
        if not (1 <= horizontal <= 4 and 1 <= vertical <= 4):
            return None
        sampling.append((horizontal, vertical))
    return width, height, progressive, tuple(sampling)
