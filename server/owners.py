"""The owner-id grammar: what an ``owner`` may be, at submit and in the owner routes.

An owner id names the subject of a data-subject request (listing, erasure), so it
must name exactly one subject however it travels. Ids are 1-128 characters from
``A-Z a-z 0-9 . _ : @ -`` and not only dots: no ``/`` (a path separator), no ``%``
(an escape), no spaces, no non-ASCII (no case folding or Unicode normalisation can
make two ids equal). Every other id is refused at submit with 422 ``invalid_owner``.

The owner routes match the id exactly: the raw request path must be
``/v1/owners/<id>`` or ``/v1/owners/<id>/jobs`` with nothing collapsed, stripped or
decoded into another segment; percent-escapes in the segment are decoded once and
the result must itself be a valid id (``%40`` is ``@``; ``%2F`` decodes to ``/`` and
is refused).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

from lift3d.errors import InvalidOwner, JobNotFound

MAX_OWNER_CHARS: Final = 128
OWNER_GRAMMAR: Final = "[A-Za-z0-9._:@-]{1,128}, not only dots"
_OWNER: Final = re.compile(r"[A-Za-z0-9._:@-]{1,%d}" % MAX_OWNER_CHARS)
# One path segment after /v1/owners/, then nothing or exactly "/jobs".
_OWNER_PATH: Final = re.compile(rb"/v1/owners/([^/]*)(/jobs)?")
_ESCAPE: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def is_valid_owner(owner: str) -> bool:
    # "." and ".." are dot segments: URL clients remove them, so such an id could never be addressed.
    return _OWNER.fullmatch(owner) is not None and owner.strip(".") != ""


def check_owner(owner: str) -> str:
    """``owner`` unchanged when it is in the grammar, else InvalidOwner (422)."""
    if not is_valid_owner(owner):
        raise InvalidOwner(f"owner must match {OWNER_GRAMMAR}")
    return owner


def owner_from_raw_path(raw_path: bytes, routed: str, *, listing: bool) -> str:
    """The owner id the client's raw path names, checked against what the router extracted.

    The router works on the decoded, normalised path (``//victim`` and ``%2Fvictim``
    both route as ``victim``), so the id is taken from the raw bytes instead, and any
    disagreement is a 404: such a path names no owner.
    """
    match = _OWNER_PATH.fullmatch(raw_path)
    if match is None or bool(match.group(2)) != listing:
        raise JobNotFound("no such route")
    segment = match.group(1)
    if _ESCAPE.search(segment):
        raise InvalidOwner(f"owner must match {OWNER_GRAMMAR}")
    try:
        owner = unquote_to_bytes(segment).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidOwner(f"owner must match {OWNER_GRAMMAR}") from None
    check_owner(owner)
    if owner != routed:
        raise JobNotFound("no such route")
    return owner
