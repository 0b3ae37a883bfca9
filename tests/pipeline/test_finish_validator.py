"""The glTF Validator helper itself: it passes a known-good GLB and catches a broken one."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import trimesh

from tests.support.gltf_validator import assert_valid_glb, validate_glb


def _box_glb() -> bytes:
    return trimesh.creation.box(extents=(1.0, 2.0, 3.0)).export(file_type="glb")


def test_valid_box_has_no_errors() -> None:
    report = assert_valid_glb(_box_glb())
    assert report["info"]["totalVertexCount"] > 0


def test_broken_accessor_is_reported() -> None:
    data = bytearray(_box_glb())
    # Point the first index past the vertex count: an out-of-range index is a validator error.
    json_length = struct.unpack_from("<I", data, 12)[0]
    binary_start = 20 + json_length + 8
    struct.pack_into("<I" if _index_width(data) == 4 else "<H", data, binary_start, 60000)
    report = validate_glb(bytes(data))
    assert report["issues"]["numErrors"] > 0
    with pytest.raises(AssertionError, match="error"):
        assert_valid_glb(bytes(data))


def _index_width(data: bytearray) -> int:
    import json

    json_length = struct.unpack_from("<I", data, 12)[0]
    document = json.loads(bytes(data[20 : 20 + json_length]))
    index_accessor = document["accessors"][document["meshes"][0]["primitives"][0]["indices"]]
    assert document["bufferViews"][index_accessor["bufferView"]].get("byteOffset", 0) == 0
    return {5125: 4, 5123: 2}[index_accessor["componentType"]]


def test_not_a_glb_is_rejected() -> None:
    report_or_error = None
    try:
        report_or_error = validate_glb(b"definitely not a glb" + bytes(np.zeros(16, dtype=np.uint8)))
    except RuntimeError as error:  # the validator may refuse outright
        assert "gltf-validator" in str(error)
        return
    assert report_or_error["issues"]["numErrors"] > 0
