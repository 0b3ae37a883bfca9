"""The whole engine in tiny mode: every real stage, one photo in, a valid GLB out, nothing on disk."""

from __future__ import annotations

import json
import struct

import pytest

from lift3d.settings import EngineSettings
from pipeline.engine import Engine
from pipeline.events import ProgressEvent
from pipeline.options import JobOptions
from tests.support.paths import shared_path
from tests.support.gltf_validator import assert_valid_glb
from tests.support.write_audit import WriteAudit, isolate_temp_and_cwd

STAGES = ["decode", "background", "multiview", "reconstruct", "finish"]


def glb_json(glb: bytes) -> dict:
    length, chunk_type = struct.unpack_from("<II", glb, 12)
    assert chunk_type == 0x4E4F534A  # "JSON"
    return json.loads(glb[20 : 20 + length])


@pytest.fixture(scope="module")
def tiny_engine(u2netp_weights_dir) -> Engine:
    # check_contracts: every real stage must read and write only what it declares.
    engine = Engine(EngineSettings(device="cpu", weights="tiny", weights_dir=str(u2netp_weights_dir)), check_contracts=True)
    engine.warmup()
    return engine


def test_warmup_loads_and_runs_every_stage(tiny_engine):
    assert tiny_engine.stage_names == STAGES
    assert tiny_engine.loaded
    assert set(tiny_engine.load_seconds) == set(STAGES)


@pytest.mark.shared
def test_a_photo_becomes_a_valid_glb_labelled_as_tiny(tiny_engine, tmp_path, monkeypatch):
    photo = shared_path("images", "fruit.jpg").read_bytes()
    temp_dir, work_dir = isolate_temp_and_cwd(tmp_path, monkeypatch)
    events: list[ProgressEvent] = []

    WriteAudit.start()
    try:
        result = tiny_engine.run(
            photo,
            JobOptions(seed=7, steps=2, remove_background="on", target_faces=2000, texture_size=512),
            progress=events.append,
        )
    finally:
        written = WriteAudit.stop()

    assert written == [], f"the engine wrote files: {written}"
    assert not any(temp_dir.iterdir()) and not any(work_dir.iterdir())
    assert list(result.timings) == STAGES and all(t >= 0 for t in result.timings.values())
    assert [e.stage for e in events][0] == "decode" and events[-1].stage == "finish"
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert sum(1 for e in events if e.stage == "multiview" and e.message not in ("started", "done")) >= 2

    assert result.weights_mode == "tiny" and result.seed == 7
    assert 0 < result.qa["faces"] <= 2000 * 1.02
    assert_valid_glb(result.glb)
    extras = glb_json(result.glb)["asset"]["extras"]
    assert extras["weights_mode"] == "tiny" and extras["seed"] == 7
    # The licence report: the default pipeline is multiview, and its CC-BY-NC artifacts are named.
    assert extras["pipeline"] == "multiview" and result.metadata["pipeline"] == "multiview"
    non_commercial = [a["path"] for a in extras["artifacts"] if not a["commercial_use"]]
    assert "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors" in non_commercial


@pytest.mark.shared
def test_same_seed_same_model_different_seed_different_model(tiny_engine):
    photo = shared_path("images", "chair.png").read_bytes()
    options = dict(steps=2, target_faces=1000, texture_size=512, texture="vertex")
    first = tiny_engine.run(photo, JobOptions(seed=1, **options))
    again = tiny_engine.run(photo, JobOptions(seed=1, **options))
    other = tiny_engine.run(photo, JobOptions(seed=2, **options))
    assert first.glb == again.glb
    assert first.glb != other.glb
