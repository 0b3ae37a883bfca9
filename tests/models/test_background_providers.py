"""Which onnxruntime provider background removal runs on: CUDA where the build offers it
(onnxruntime-gpu in the CUDA image), else the CPU with a log line; /v1/info reports it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from models.background import load_session, onnx_providers, session_provider


def offer(monkeypatch: pytest.MonkeyPatch, *providers: str) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))


def test_cuda_first_where_the_build_offers_it(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    offer(monkeypatch, "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="lift3d.models.background"):
        assert onnx_providers(prefer_cuda=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert caplog.records == []


def test_cpu_with_a_log_line_without_cuda(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    offer(monkeypatch, "CPUExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="lift3d.models.background"):
        assert onnx_providers(prefer_cuda=True) == ["CPUExecutionProvider"]
    assert len(caplog.records) == 1 and "runs on the CPU" in caplog.records[0].getMessage()
    assert "onnxruntime-gpu" in caplog.records[0].getMessage()


def test_cpu_quietly_when_the_engine_runs_on_the_cpu(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    offer(monkeypatch, "CUDAExecutionProvider", "CPUExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="lift3d.models.background"):
        assert onnx_providers(prefer_cuda=False) == ["CPUExecutionProvider"]
    assert caplog.records == []


def test_a_cuda_provider_that_fails_to_load_is_reported_as_the_cpu(monkeypatch, caplog, u2netp_weights_dir) -> None:  # type: ignore[no-untyped-def]
    """The listed provider is only a wish: this CPU build cannot run CUDA, and the session says so."""
    offer(monkeypatch, "CUDAExecutionProvider", "CPUExecutionProvider")
    with caplog.at_level(logging.WARNING, logger="lift3d.models.background"):
        session = load_session(u2netp_weights_dir, "u2netp", prefer_cuda=True)
    assert session_provider(session) == "CPUExecutionProvider"
    assert any("CUDAExecutionProvider did not load" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cuda", [True, False])
def test_cuda_libraries_are_preloaded_only_for_a_cuda_session(monkeypatch, u2netp_weights_dir, cuda) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    offer(monkeypatch, *(["CUDAExecutionProvider"] if cuda else []), "CPUExecutionProvider")
    calls: list[dict] = []
    monkeypatch.setattr(onnxruntime, "preload_dlls", lambda **kwargs: calls.append(kwargs), raising=False)
    load_session(u2netp_weights_dir, "u2netp", prefer_cuda=True)
    assert calls == ([{"cuda": True, "cudnn": True}] if cuda else [])


def test_info_reports_the_provider_of_the_loaded_background_stage(u2netp_weights_dir) -> None:  # type: ignore[no-untyped-def]
    from lift3d.settings import load_settings
    from pipeline.background import BackgroundStage, BorderColourSegmenter, RembgSegmenter
    from server.info import background_provider, build_info

    stage = BackgroundStage(RembgSegmenter(u2netp_weights_dir, "u2netp", prefer_cuda=False))
    assert stage.provider == "CPUExecutionProvider"
    assert background_provider(SimpleNamespace(stages=[SimpleNamespace(name="decode"), stage])) == "CPUExecutionProvider"
    assert background_provider(SimpleNamespace(stages=[BackgroundStage()])) is None  # not loaded yet
    assert BackgroundStage(BorderColourSegmenter()).provider == "none"
    settings = load_settings({})
    runtime = SimpleNamespace(device="cpu", dtype="torch.float32")
    info = build_info(settings, runtime, True, [], provider="CUDAExecutionProvider")  # type: ignore[arg-type]
    assert info.background_provider == "CUDAExecutionProvider"
