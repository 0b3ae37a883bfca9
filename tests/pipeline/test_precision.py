"""Precision routing: the LRM's encoder and transformer under bf16 autocast only on CUDA and only
when the setting says so, the triplane field always fp32, TF32 and compile from their settings."""

from __future__ import annotations

import pytest
import torch

import pipeline.precision as precision
import pipeline.reconstruct as reconstruct
from lift3d.settings import EngineSettings, ReconstructSettings
from pipeline.precision import apply_tf32, compile_modules, lrm_autocast_dtype
from pipeline.reconstruct import ReconstructStage
from pipeline.runtime import Runtime
from tests.pipeline.test_reconstruct_stage import AnalyticSphereModel, run_stage


def runtime(device: str, **settings) -> Runtime:
    # A CUDA runtime as data only: nothing here touches a GPU.
    reconstruct_settings = ReconstructSettings(precision=settings.pop("precision", "auto"))
    engine = EngineSettings(device="cpu", reconstruct=reconstruct_settings, **settings)
    return Runtime(settings=engine, device=torch.device(device), dtype=torch.float32)


@pytest.mark.parametrize(
    ("device", "setting", "bf16", "expected"),
    [
        ("cpu", "auto", True, None),
        ("cpu", "bfloat16", True, None),  # the CPU path stays fp32 whatever the setting
        ("cuda", "auto", True, torch.bfloat16),
        ("cuda", "auto", False, None),
        ("cuda", "bfloat16", False, torch.bfloat16),
        ("cuda", "float32", True, None),
    ],
)
def test_the_lrm_dtype_follows_device_and_setting(device, setting, bf16, expected):
    assert lrm_autocast_dtype(runtime(device, precision=setting), bf16_supported=lambda: bf16) is expected


class RecordingModel(AnalyticSphereModel):
    """Records the autocast state each part of the model ran under, and the triplanes' dtype."""

    def __init__(self) -> None:
        super().__init__(centre=(0.0, 0.0, 0.0), radius=0.5)
        self.seen: dict[str, tuple[bool, torch.dtype | None]] = {}
        field, model = self.synthesizer, self

        def state() -> bool:
            return torch.is_autocast_enabled("cpu")

        density_grid, rgb = field.density_grid, field.rgb

        def recording_grid(planes, *args, **kwargs):
            model.seen["field"] = (state(), planes.dtype)
            return density_grid(planes, *args, **kwargs)

        def recording_rgb(planes, points, **kwargs):
            model.seen["colour"] = (state(), planes.dtype)
            return rgb(planes, points, **kwargs)

        field.density_grid, field.rgb = recording_grid, recording_rgb

    def encode(self, images, cameras):
        self.seen["encode"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().encode(images, cameras)

    def planes_from_tokens(self, tokens, batch):
        self.seen["transformer"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        # What a bf16 transformer hands back: the stage must give the field fp32 triplanes.
        return super().planes_from_tokens(tokens, batch).to(torch.bfloat16)


def test_on_a_cpu_every_part_runs_in_fp32():
    model = RecordingModel()
    job, _ = run_stage(ReconstructStage(model), weights="locked")
    assert model.seen["encode"][0] is False and model.seen["transformer"][0] is False
    assert model.seen["field"] == (False, torch.float32) and model.seen["colour"] == (False, torch.float32)
    assert job.metadata["reconstruct"]["lrm_precision"] == "float32"
    assert job.metadata["reconstruct"]["field_precision"] == "float32"


def test_with_bf16_routing_the_encoder_and_transformer_autocast_and_the_field_does_not(monkeypatch):
    # The routing as it runs on CUDA, exercised on the CPU's autocast.
    monkeypatch.setattr(precision, "lrm_autocast_dtype", lambda rt, bf16_supported=None: torch.bfloat16)
    monkeypatch.setattr(reconstruct, "lrm_autocast_dtype", lambda rt, bf16_supported=None: torch.bfloat16)
    model = RecordingModel()
    job, _ = run_stage(ReconstructStage(model), weights="locked")
    assert model.seen["encode"] == (True, torch.bfloat16) and model.seen["transformer"] == (True, torch.bfloat16)
    assert model.seen["field"] == (False, torch.float32)
    assert job.metadata["reconstruct"]["lrm_precision"] == "bfloat16"
    model.seen.pop("colour")
    job.mesh.color_query(job.mesh.vertices[:10])  # the finishing stage's colour query
    assert model.seen["colour"] == (False, torch.float32)


@pytest.mark.parametrize(("device", "tf32", "expected"), [("cuda", True, True), ("cuda", False, False), ("cpu", True, False)])
def test_tf32_is_set_from_the_setting_on_cuda_only(device, tf32, expected):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        # Start from the opposite (the CPU case starts from off, which it must leave alone).
        start = False if device == "cpu" else not expected
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = start
        apply_tf32(runtime(device, tf32=tf32))
        assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class CompileRecorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def compile(self, **kwargs) -> None:  # noqa: A003 - nn.Module's own name
        self.calls.append(kwargs)


@pytest.mark.parametrize(("device", "setting", "compiled"), [("cuda", True, True), ("cuda", False, False), ("cpu", True, False)])
def test_compile_happens_on_cuda_only_when_asked_with_static_shapes(device, setting, compiled, monkeypatch):
    monkeypatch.setattr(precision, "c_compiler", lambda: "/usr/bin/cc")
    modules = [("unet", CompileRecorder()), ("lrm.encoder", CompileRecorder())]
    names = compile_modules(runtime(device, compile=setting), modules)
    assert names == (["unet", "lrm.encoder"] if compiled else [])
    assert all(module.calls == ([{"dynamic": False}] if compiled else []) for _, module in modules)


def test_compile_without_a_c_compiler_runs_eagerly_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert precision.c_compiler() is None
    modules = [("unet", CompileRecorder())]
    with caplog.at_level("WARNING", logger="lift3d.precision"):
        assert compile_modules(runtime("cuda", compile=True), modules) == []
    assert modules[0][1].calls == []
    assert any("needs a C compiler" in record.getMessage() for record in caplog.records)


def test_the_c_compiler_is_cc_then_the_path(monkeypatch, tmp_path):
    compiler = tmp_path / "mycc"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    assert precision.c_compiler() == str(compiler)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert precision.c_compiler() is None
    (tmp_path / "mycc").rename(tmp_path / "gcc")
    assert precision.c_compiler() == str(tmp_path / "gcc")
