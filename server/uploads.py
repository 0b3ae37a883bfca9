"""Reading an upload into memory with a hard byte cap; nothing ever touches disk.

Litestar's own form parsing spools file parts over 1 MiB to temporary files, so
the upload route never asks Litestar for the form: it streams the raw body
through python-multipart's push parser into memory, counting every byte, and
stops reading one chunk past the cap. A body that ends before the closing
boundary (``--boundary--``) is refused with 400 ``incomplete_multipart``: the
image part may have been cut short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from lift3d.errors import BadRequest, IncompleteMultipart, InputError, InvalidOption, MissingImage, UploadTooLarge
from pipeline.wipe import WipedBuffer

IMAGE_FIELD = "image"
RAW_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
# Room for the multipart framing and the small option fields around the image.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 32


@dataclass
class Upload:
    """The image bytes and the text fields that came with them (no filename is kept).

    ``image`` is the one copy of the upload this process makes: a WipedBuffer, zeroed
    when the last reference to it goes (docs/security.md).
    """

    image: WipedBuffer
    fields: dict[str, str] = field(default_factory=dict)


class ImageBytes:
    """Upload bytes gathered into one WipedBuffer, grown by copying (then zeroing the old one), never reallocated."""

    def __init__(self, expected: int | None = None) -> None:
        self._buffer = WipedBuffer(expected or 64 * 1024)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes | memoryview) -> None:
        needed = self.size + len(data)
        if needed > len(self._buffer):
            self._move_to(max(needed, 2 * len(self._buffer)))
        self._buffer[self.size : needed] = data
        self.size = needed

    def _move_to(self, capacity: int) -> None:
        bigger = WipedBuffer(capacity)
        bigger[: self.size] = memoryview(self._buffer)[: self.size]
        self._buffer.wipe()
        self._buffer = bigger

    def take(self) -> WipedBuffer:
        """The bytes, in a buffer of exactly their length."""
        if self.size != len(self._buffer):
            self._move_to(self.size)
        taken, self._buffer, self.size = self._buffer, WipedBuffer(0), 0
        return taken

    def wipe(self) -> None:
        self._buffer.wipe()
        self.size = 0


def _too_large(cap: int) -> UploadTooLarge:
    return UploadTooLarge(f"the upload is larger than the limit of {cap} bytes")


def check_declared_length(content_length: str | None, limit: int, cap: int) -> int | None:
    """The announced body size; refused before reading anything when it is too many bytes."""
    if content_length is None:
        return None
    if not content_length.strip().isdigit():
        raise BadRequest("invalid Content-Length")
    declared = int(content_length)
    if declared > limit:
        raise _too_large(cap)
    return declared


async def read_raw_image(chunks: AsyncIterator[bytes], cap: int, expected: int | None = None) -> Upload:
    """A raw ``image/*`` body, at most ``cap`` bytes (reads at most cap + one chunk)."""
    image = ImageBytes(expected)
    try:
        async for chunk in chunks:
            if len(image) + len(chunk) > cap:
                raise _too_large(cap)
            image.add(chunk)
        return Upload(image=image.take())
    finally:
        image.wipe()


class _FormCollector:
    """python-multipart callbacks that keep the ``image`` part and small text fields in memory."""

    def __init__(self, cap: int, expected: int | None = None) -> None:
        self.cap = cap
        self.expected = expected
        self.image: ImageBytes | None = None
        self.fields: dict[str, str] = {}
        self.stray_files: list[str] = []  # file parts other than the image
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        # A part with a filename is a file; the filename itself is dropped here, unread.
        self._is_file = b"filename" in params
        if not self._name:
            # RFC 7578 requires a plain name (no name*=): a part without one would be silently lost.
            # 422 like any field the server cannot use (the form's schema allows any field name).
            raise InvalidOption("a form part has no name; send Content-Disposition: form-data; name=\"...\"")
        if self._name == IMAGE_FIELD:
            if self.image is not None:
                raise InputError("the form carries more than one image field")
            self.image = ImageBytes(self.expected)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == IMAGE_FIELD and self.image is not None:
            if len(self.image) + (end - start) > self.cap:
                raise _too_large(self.cap)
            self.image.add(memoryview(data)[start:end])
        elif not self._is_file:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidOption(f"form field {self._name!r} is too long")
        # Other file parts are refused once the form is read; their bytes are never kept.

    def _part_end(self) -> None:
        if self._is_file and self._name != IMAGE_FIELD:
            if len(self.stray_files) >= MAX_FIELDS:
                raise InvalidOption("too many form fields")
            self.stray_files.append(self._name)
        elif self._name != IMAGE_FIELD:
            if self._name in self.fields:
                # One value per option: a proxy reading the first and the server the last would disagree.
                raise InvalidOption(f"form field {self._name!r} is given more than once")
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidOption("too many form fields")
            self.fields[self._name] = self._value.decode("utf-8", "replace")
        self._value = bytearray()


async def read_multipart_image(
    chunks: AsyncIterator[bytes], content_type: str, cap: int, expected: int | None = None
) -> Upload:
    """The ``image`` part of a multipart/form-data body, parsed in memory under the cap."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    collector = _FormCollector(cap, expected)
    limit = cap + FORM_OVERHEAD_BYTES
    received = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise _too_large(cap)
            parser.write(chunk)
        parser.finalize()
        if parser.state != MultipartState.END:
            # The body ended inside a part: the image may be cut short, so nothing of it is used.
            raise IncompleteMultipart("the multipart body ends without its closing boundary")
    except MultipartParseError:
        raise BadRequest("malformed multipart body") from None
    except ValueError:
        raise BadRequest("malformed multipart body") from None
    finally:
        # On a refusal the partial image goes with the last reference (a WipedBuffer zeroes itself).
        image, collector.image = collector.image, None
    if image is None:
        stray = f" (it has the file field {collector.stray_files[0]!r})" if collector.stray_files else ""
        raise MissingImage(f"the form has no {IMAGE_FIELD!r} file field{stray}")
    if collector.stray_files:
        # An option sent as a file would otherwise be dropped unread (an owner lost to erasure).
        image.wipe()
        raise InvalidOption(
            f"form field {collector.stray_files[0]!r} is a file part; only {IMAGE_FIELD!r} may be a file, options are text fields"
        )
    return Upload(image=image.take(), fields=collector.fields)
