"""The GIL-holding finishing calls in a helper process: same results as in process, errors
come back typed, a dead helper is replaced, and the lanes' finish stage uses it."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from lift3d.settings import EngineSettings
from pipeline.finish import FinishStage
from pipeline.finish.decimate import decimate
from pipeline.finish.unwrap import unwrap
from pipeline import native_calls
from pipeline.native_calls import IN_PROCESS, NativeCalls, pack_atlas
from pipeline.runtime import Runtime


@pytest.fixture(scope="module")
def helper():
    calls = NativeCalls(in_process=False)
    calls.start()
    yield calls
    calls.close()


def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4)


def test_decimate_and_unwrap_in_the_helper_equal_the_in_process_results(helper):
    here = decimate(sphere(), 1000, IN_PROCESS)
    there = decimate(sphere(), 1000, helper)
    assert np.array_equal(here.vertices, there.vertices) and np.array_equal(here.faces, there.faces)
    uv_here, uv_there = unwrap(here, 512, "box", IN_PROCESS), unwrap(here, 512, "box", helper)
    assert np.array_equal(uv_here.uvs, uv_there.uvs) and np.array_equal(uv_here.faces, uv_there.faces)
    assert uv_here.charts == uv_there.charts > 1


def test_an_error_in_the_helper_is_raised_in_the_caller(helper):
    with pytest.raises(Exception):
        helper.call(pack_atlas, np.zeros((3, 3), np.float32), np.array([[0, 1, 5]], np.uint32), None, 64, 1)
    assert helper.call(pack_atlas, *_triangle(), None, 64, 1)[3] == 1  # the helper survived


def _triangle():
    return np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.uint32)


def test_a_dead_helper_is_replaced(helper):
    first = helper._process
    first.kill()
    first.wait()
    assert helper.call(pack_atlas, *_triangle(), None, 64, 1)[3] == 1  # died between calls: a new helper runs it
    assert helper._process is not None and helper._process is not first and helper._process.poll() is None


def test_a_helper_that_dies_during_a_call_fails_that_call_without_rerunning_it_here(helper, monkeypatch):
    from lift3d.errors import NativeHelperCrashed

    ran_here: list[str] = []
    first = helper._process

    def crash(*args):  # stands for a native crash: the helper is gone while it works on the call
        ran_here.append("in process")
        return None

    monkeypatch.setitem(native_calls.CALLS, "crash_probe", crash)
    first.kill()
    first.wait()
    helper._process = first  # the death is not noticed before the call, as when it dies mid-call
    monkeypatch.setattr(first, "poll", lambda: None)
    with pytest.raises(NativeHelperCrashed):
        helper.call(crash)
    assert ran_here == []  # never rerun in the server process
    monkeypatch.undo()
    assert helper.call(pack_atlas, *_triangle(), None, 64, 1)[3] == 1  # the next call gets a new helper


@pytest.mark.parametrize("overlap", [True, False])
def test_the_finish_stage_uses_the_helper_only_with_the_lanes_on(overlap):
    stage = FinishStage()
    stage.load(Runtime.from_settings(EngineSettings(device="cpu", weights="tiny", overlap=overlap)))
    assert stage.native.in_process is (not overlap)
    if overlap:
        again = FinishStage()
        again.load(Runtime.from_settings(EngineSettings(device="cpu", weights="tiny")))
        assert again.native is stage.native  # one helper per process, whatever the engines
