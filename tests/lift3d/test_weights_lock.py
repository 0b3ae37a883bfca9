"""weights.lock: the committed file parses, says what it does not know, and bad locks are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lift3d.settings import load_settings
from lift3d.weights import artifact_info, engine_artifacts, profile_for, weights_missing
from lift3d.weights.lock import DEFAULT_LOCK_PATH, LockError, load_lock, parse_lock
from lift3d.weights.resolve import Resolution, rewrite
from lift3d.errors import WeightsMissing

GOOD_ENTRY = """
version = 1
[profiles.test]
[[artifact]]
path = "rembg/model.onnx"
stage = "background"
profiles = ["test"]
licence = "Apache-2.0"
size = 3
sha256 = "{sha}"
status = "verified"
[[artifact.source]]
kind = "url"
url = "https://example.invalid/model.onnx"
"""
SHA = "a" * 64


def test_committed_lock_parses_and_has_the_profiles() -> None:
    lock = load_lock()
    assert {"test", "tiny", "dummy", "fast", "quality"} <= set(lock.profiles)
    for small in ("test", "tiny", "dummy"):
        assert [a.path for a in lock.for_profile(small)] == ["rembg/u2netp.onnx"]
    quality = {a.path for a in lock.for_profile("quality")}
    assert {
        "rembg/u2net.onnx",
        "sudo-ai/zero123plus-v1.2/model_index.json",
        "sudo-ai/zero123plus-v1.2/unet/diffusion_pytorch_model.safetensors",
        "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors",
        "TencentARC/InstantMesh/instant_nerf_large.safetensors",
    } <= quality
    assert "TencentARC/InstantMesh/instant_nerf_base.safetensors" in quality
    assert {
        "TencentARC/InstantMesh/instant_mesh_large.safetensors",
        "TencentARC/InstantMesh/instant_mesh_base.safetensors",
    } <= quality
    # fast is the TripoSR pipeline: only permissively licensed files, nothing of the multiview models.
    fast = lock.for_profile("fast")
    assert [a.path for a in fast] == [
        "rembg/u2netp.onnx",
        "stabilityai/TripoSR/model.safetensors",
        "stabilityai/TripoSR/config.yaml",
    ]
    assert {a.licence for a in fast} == {"Apache-2.0", "MIT"}


def test_committed_lock_pins_what_is_known_and_says_what_is_not() -> None:
    lock = load_lock()
    u2netp = lock.by_path("rembg/u2netp.onnx")
    assert u2netp.status == "verified" and u2netp.size == 4_574_861
    assert u2netp.sha256 == "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
    assert [s.__class__.__name__ for s in u2netp.source] == ["UrlSource", "WheelSource"]
    nerf = lock.by_path("TencentARC/InstantMesh/instant_nerf_large.safetensors")
    assert nerf.status == "pinned" and re.fullmatch(r"[0-9a-f]{40}", nerf.revision or "")
    assert nerf.convert == "checkpoint-state-dict" and nerf.hub_source.file == "instant_nerf_large.ckpt"
    for size in ("large", "base"):
        mesh = lock.by_path(f"TencentARC/InstantMesh/instant_mesh_{size}.safetensors")
        assert mesh.status == "pinned" and mesh.revision == nerf.revision and mesh.licence == "Apache-2.0"
        assert mesh.convert == "checkpoint-state-dict" and mesh.hub_source.file == f"instant_mesh_{size}.ckpt"
        assert re.fullmatch(r"[0-9a-f]{64}", mesh.sha256 or "") and mesh.size and mesh.size > 1_000_000_000
    for artifact in lock.artifacts:
        if artifact.path.startswith("sudo-ai/zero123plus-v1.2/"):
            # Only the short commit 63d1c9c is known: the entry must say the revision is unresolved.
            assert artifact.status == "unresolved" and "revision" in artifact.unresolved
            assert artifact.revision is None and not artifact.verified
    triposr = lock.by_path("stabilityai/TripoSR/model.safetensors")
    assert triposr.status == "pinned" and triposr.size == 1_677_246_742
    assert triposr.revision == "c1cf7716aed5aa6c1c5e174657791ef0e1327bde"
    # A flat state dict (no Lightning container): converted with its keys unchanged.
    assert triposr.convert == "state-dict" and triposr.hub_source.file == "model.ckpt"
    config = lock.by_path("stabilityai/TripoSR/config.yaml")
    assert config.revision == triposr.revision and config.unresolved == ["sha256"] and not config.verified


def test_licences_of_the_non_commercial_weights() -> None:
    lock = load_lock()
    assert lock.by_path("TencentARC/InstantMesh/diffusion_pytorch_model.safetensors").licence == "CC-BY-NC-4.0"
    assert {a.licence for a in lock.artifacts if a.path.startswith("sudo-ai/")} == {"CC-BY-NC-4.0"}
    assert lock.by_path("rembg/u2netp.onnx").licence == "Apache-2.0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('status = "verified"', 'status = "pinned"\nunresolved = ["size"]'), "cannot list"),
        (lambda t: t.replace(f'sha256 = "{SHA}"\n', ""), "sha256 missing"),
        (lambda t: t.replace('path = "rembg/model.onnx"', 'path = "../etc/model.onnx"'), "relative"),
        (lambda t: t.replace('profiles = ["test"]', 'profiles = ["nope"]'), "unknown profile"),
        (lambda t: t.replace(SHA, "A" * 64), "64 lowercase hex"),
        (lambda t: t.replace('licence = "Apache-2.0"', 'licence = "Apache-2.0"\ncolour = "red"'), "colour"),
        (
            lambda t: t.replace('kind = "url"\nurl = "https://example.invalid/model.onnx"', 'kind = "hf"\nrepo = "a/b"\nfile = "m.onnx"\nrevision = "63d1c9c"'),
            "not a full 40-hex",
        ),
    ],
)
def test_inconsistent_lock_is_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    text = GOOD_ENTRY.format(sha=SHA)
    assert parse_lock(text).artifacts[0].verified
    with pytest.raises(LockError, match=message):
        parse_lock(change(text))


def test_unresolved_entry_must_name_what_is_missing() -> None:
    text = GOOD_ENTRY.format(sha=SHA).replace(f'sha256 = "{SHA}"\n', "").replace('"verified"', '"unresolved"')
    with pytest.raises(LockError, match="must list what is unresolved"):
        parse_lock(text)
    lock = parse_lock(text.replace('status = "unresolved"', 'status = "unresolved"\nunresolved = ["sha256"]'))
    assert not lock.artifacts[0].verified


def test_lock_rewrite_fills_unresolved_entries_and_keeps_comments() -> None:
    lock_path_text = DEFAULT_LOCK_PATH.read_text(encoding="utf-8")
    lock = parse_lock(lock_path_text)
    resolutions = {
        a.path: Resolution(a.sha256 or "b" * 64, 10, "pinned", "c" * 40) for a in lock.artifacts if not a.verified
    }
    assert resolutions
    text = rewrite(lock_path_text, resolutions)
    resolved = parse_lock(text)
    assert all(a.verified for a in resolved.artifacts)
    assert resolved.by_path("sudo-ai/zero123plus-v1.2/unet/config.json").revision == "c" * 40
    assert "# lift3d weights lock" in text  # the header comment survives


def test_engine_artifacts_and_profile_per_settings() -> None:
    tiny = load_settings({}, engine__weights="tiny").engine
    assert profile_for(tiny) == "tiny"
    assert [a.path for a in engine_artifacts(tiny)] == ["rembg/u2netp.onnx"]
    locked = load_settings({}).engine
    assert profile_for(locked) == "quality"
    paths = {a.path for a in engine_artifacts(locked)}
    # The FlexiCubes variant is the quality default; only the loaded reconstruct models are read.
    assert "TencentARC/InstantMesh/instant_mesh_large.safetensors" in paths
    assert "TencentARC/InstantMesh/instant_nerf_large.safetensors" not in paths
    both = load_settings({"LIFT3D_RECONSTRUCT_EXTRA_MODELS": "instant-nerf-large"}).engine
    assert "TencentARC/InstantMesh/instant_nerf_large.safetensors" in {a.path for a in engine_artifacts(both)}
    assert "TencentARC/InstantMesh/diffusion_pytorch_model.safetensors" in paths
    base = load_settings({"LIFT3D_RECONSTRUCT_MODEL": "instant-nerf-base"}).engine
    assert profile_for(base) == "quality"
    assert {a.path for a in engine_artifacts(base)} <= {a.path for a in load_lock().for_profile("quality")}
    info = {row["path"]: row for row in artifact_info(locked)}
    assert info["TencentARC/InstantMesh/diffusion_pytorch_model.safetensors"]["licence"] == "CC-BY-NC-4.0"
    assert info["TencentARC/InstantMesh/instant_mesh_large.safetensors"]["revision"] is not None


def test_weights_missing_message_names_the_command_and_the_way_around() -> None:
    error = weights_missing(["rembg/u2net.onnx"], profile="quality")
    assert isinstance(error, WeightsMissing)
    assert "lift3d weights pull --profile quality" in error.message
    assert "--weights dummy" in error.message


def test_each_server_profile_reads_only_its_pipelines_files() -> None:
    fast = load_settings({"LIFT3D_PROFILE": "fast"}).engine
    assert profile_for(fast) == "fast"
    assert [a.path for a in engine_artifacts(fast)] == [a.path for a in load_lock().for_profile("fast")]
    both = load_settings({"LIFT3D_PROFILE": "all"}).engine
    assert profile_for(both) == "all"
    assert {a.path for a in engine_artifacts(both)} == {a.path for a in engine_artifacts(fast)} | {
        a.path for a in engine_artifacts(load_settings({}).engine)
    }
    assert [a.path for a in engine_artifacts(load_settings({"LIFT3D_PROFILE": "fast", "LIFT3D_WEIGHTS": "tiny"}).engine)] == [
        "rembg/u2netp.onnx"
    ]


def test_licence_report_names_every_artifact_and_whether_it_may_earn_money(tmp_path: Path) -> None:
    from lift3d.weights.catalog import is_commercial, licence_report

    assert not is_commercial("CC-BY-NC-4.0") and is_commercial("MIT") and is_commercial("Apache-2.0")
    locked = load_settings({}).engine
    fast = licence_report("fast", locked)
    assert [row["path"] for row in fast] == [a.path for a in load_lock().for_profile("fast")]
    assert all(row["commercial_use"] and row["use"] == "weights" for row in fast)
    multiview = {row["path"]: row for row in licence_report("multiview", locked)}
    unet = multiview["TencentARC/InstantMesh/diffusion_pytorch_model.safetensors"]
    assert unet["licence"] == "CC-BY-NC-4.0" and not unet["commercial_use"]
    tiny = licence_report("fast", load_settings({}, engine__weights="tiny", engine__weights_dir=str(tmp_path)).engine)
    assert {row["use"] for row in tiny if row["path"].startswith("stabilityai/")} == {"architecture only (tiny weights)"}
    assert [row["use"] for row in tiny if row["path"] == "rembg/u2netp.onnx"][0].startswith("not used")
    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / "u2netp.onnx").write_bytes(b"present")
    tiny = licence_report("fast", load_settings({}, engine__weights="tiny", engine__weights_dir=str(tmp_path)).engine)
    assert [row["use"] for row in tiny if row["path"] == "rembg/u2netp.onnx"] == ["weights"]

