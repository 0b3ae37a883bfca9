"""`lift3d generate` and `lift3d serve` as a user types them."""

from __future__ import annotations

from pathlib import Path

import os
import pytest

import pipeline.engine
from lift3d.entrypoints.cli import build_parser, main
from tests.support.servers import BoxFinishStage, TimedStage, small_png
from pipeline.decode import DecodeStage


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(small_png())
    return path


@pytest.fixture()
def fake_engine_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """`generate` builds ``pipeline.engine.Engine(settings.engine)``: give it fake model stages."""

    class FakeEngine(pipeline.engine.Engine):
        def __init__(self, settings, stages=None):  # noqa: ANN001
            super().__init__(settings, [DecodeStage(), TimedStage(0.0), BoxFinishStage()])

    monkeypatch.setattr(pipeline.engine, "Engine", FakeEngine)


def test_generate_writes_a_glb(tmp_path: Path, photo: Path, fake_engine_class: None, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out.glb"
    code = main(["generate", str(photo), "-o", str(out), "--weights", "tiny", "--device", "cpu", "--seed", "4", "--steps", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes()[:4] == b"glTF"
    assert "seed 4" in captured.out and "weights tiny" in captured.out
    assert "not a real reconstruction" in captured.err
    assert not list(tmp_path.glob(".*.partial"))


def test_generate_pipeline_fast_with_tiny_weights_writes_a_valid_textured_glb(
    tmp_path: Path, photo: Path, u2netp_weights_dir: Path, capsys  # noqa: ANN001
) -> None:
    import json
    import struct

    import pygltflib

    from tests.support.gltf_validator import assert_valid_glb

    out = tmp_path / "fast.glb"
    args = ["generate", str(photo), "-o", str(out), "--pipeline", "fast", "--weights", "tiny", "--device", "cpu"]
    args += ["--weights-dir", str(u2netp_weights_dir), "--remove-background", "off", "--texture-size", "512"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pipeline fast" in captured.out and "weights tiny" in captured.out
    glb = out.read_bytes()
    assert_valid_glb(glb)
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    assert len(gltf.images) == 1 and gltf.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    length, _ = struct.unpack_from("<II", glb, 12)
    assert json.loads(glb[20 : 20 + length])["asset"]["extras"]["pipeline"] == "fast"


def test_generate_pipeline_flag_loads_only_that_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    import lift3d.entrypoints.generate

    seen = {}
    monkeypatch.setattr(lift3d.entrypoints.generate, "generate", lambda settings, args: seen.setdefault("s", settings) and 0)
    main(["generate", "x.png", "-o", "x.glb", "--pipeline", "fast"])
    assert seen["s"].engine.pipelines == ("fast",)


BAD = [
    ("missing file", lambda tmp: tmp / "nope.png", [], "cannot read"),
    ("not an image", lambda tmp: _write(tmp / "notes.png", b"hello, not a picture"), [], "unsupported_media_type"),
    ("truncated", lambda tmp: _write(tmp / "cut.png", small_png(size=300)[:300]), [], "truncated_image"),
    ("steps out of range", lambda tmp: _write(tmp / "ok.png", small_png()), ["--steps", "999"], "invalid_steps"),
    ("texture size", lambda tmp: _write(tmp / "ok.png", small_png()), ["--texture-size", "7"], "invalid_texture_size"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name,make,extra,reason", BAD, ids=[case[0] for case in BAD])
def test_generate_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, name: str, make, extra: list[str], reason: str, fake_engine_class: None, capsys  # noqa: ANN001
) -> None:
    image = make(tmp_path)
    out = tmp_path / "out.glb"
    code = main(["generate", str(image), "-o", str(out), "--weights", "tiny", "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("lift3d generate: ") and reason in err, err
    assert not out.exists()


def test_generate_refuses_a_non_glb_output(tmp_path: Path, photo: Path, capsys) -> None:  # noqa: ANN001
    assert main(["generate", str(photo), "-o", str(tmp_path / "out.obj")]) == 2
    assert ".glb" in capsys.readouterr().err


def test_generate_missing_weights_fails_with_one_line(
    tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch, capsys  # noqa: ANN001
) -> None:
    """Locked weights in an empty dir, with the real engine: exit 1 and one line naming the problem."""
    monkeypatch.setenv("LIFT3D_WEIGHTS_DIR", str(tmp_path / "empty"))
    code = main(["generate", str(photo), "-o", str(tmp_path / "o.glb"), "--device", "cpu", "--weights", "locked"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lift3d generate: ")]
    assert code == 1
    assert len(lines) == 1 and "weights" in lines[0], lines


def test_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_serve(settings):  # noqa: ANN001, ANN202
        seen["settings"] = settings
        return 0

    import server.main

    monkeypatch.setattr(server.main, "serve", fake_serve)
    monkeypatch.setenv("LIFT3D_API_KEYS", "a,b")
    monkeypatch.setenv("LIFT3D_QUEUE_SIZE", "5")
    code = main(["serve", "--host", "0.0.0.0", "--port", "8123", "--weights", "tiny", "--device", "cpu", "--data-dir", "/srv/x"])
    settings = seen["settings"]
    assert code == 0
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8123)
    assert (settings.engine.weights, settings.engine.device) == ("tiny", "cpu")
    assert settings.server.api_keys == ("a", "b") and settings.server.queue_size == 5
    assert settings.storage.data_dir == "/srv/x"


def test_cli_contract_flags_exist() -> None:
    parser = build_parser()
    args = parser.parse_args(["generate", "in.png", "-o", "out.glb", "--weights", "dummy", "--device", "cuda", "--seed", "1", "--steps", "3"])
    assert (args.image, args.output, args.weights, args.device, args.seed, args.steps) == ("in.png", "out.glb", "dummy", "cuda", 1, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--weights", "huge"])


def test_serve_in_locked_mode_without_weights_stays_up_and_names_the_commands(tmp_path, monkeypatch):
    """No exit 2 (a pod would restart-loop): the worker's first step fails the load with weights_missing."""
    import server.app
    from lift3d.entrypoints.cli import main
    from lift3d.errors import WeightsMissing

    seen = {}

    def capture(settings, engine=None, *, prepare=None):  # noqa: ANN001, ANN202
        seen["prepare"], seen["settings"] = prepare, settings
        raise RuntimeError("stop before uvicorn")

    monkeypatch.setattr(server.app, "create_app", capture)
    code = main(["serve", "--weights", "locked", "--device", "cpu", "--weights-dir", str(tmp_path / "empty"),
                 "--data-dir", str(tmp_path / "data")])
    assert code == 1 and seen["prepare"] is not None
    with pytest.raises(WeightsMissing) as refused:
        seen["prepare"](lambda phase: None)
    message = refused.value.message
    assert "lift3d weights pull --profile" in message and "--weights dummy" in message
    assert "lift3d serve --pull-missing" in message and "LIFT3D_PULL_MISSING=1" in message
    assert seen["settings"].server.pull_missing is False

    main(["serve", "--pull-missing", "--allow-unverified", "--weights-dir", str(tmp_path / "empty"),
          "--data-dir", str(tmp_path / "data")])
    assert seen["settings"].server.pull_missing and seen["settings"].server.allow_unverified_weights


def test_serve_refuses_a_data_dir_another_server_holds_with_one_line(tmp_path, capsys):
    from lift3d.entrypoints.cli import main
    from server.storage import lock_data_dir

    data = tmp_path / "data"
    data.mkdir()
    held = lock_data_dir(data)  # stands in for a live server on the same volume
    try:
        code = main(["serve", "--weights", "tiny", "--device", "cpu", "--data-dir", str(data), "--port", "0"])
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "in use by another lift3d process" in err


def test_weights_pull_refusal_names_the_command_with_its_flag(tmp_path, capsys):
    from lift3d.entrypoints.cli import main

    lock = tmp_path / "weights.lock"
    lock.write_text(
        'version = 1\n[profiles.test]\n[[artifact]]\npath = "rembg/x.onnx"\nstage = "background"\nprofiles = ["test"]\n'
        'licence = "MIT"\nstatus = "unresolved"\nunresolved = ["sha256", "size"]\nconvert = "none"\n'
        '[[artifact.source]]\nkind = "url"\nurl = "http://127.0.0.1:9/x.onnx"\n'
    )
    weights = tmp_path / "w"
    code = main(["weights", "--lock", str(lock), "pull", "--profile", "test", "--weights-dir", str(weights)])
    err = capsys.readouterr().err
    assert code == 1 and "1 refused as unverified" in err
    assert f"`lift3d weights pull --profile test --weights-dir {weights} --allow-unverified`" in err
