"""Where and how models run: device, dtype and weights mode, resolved once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lift3d.process import resolve_cpu_threads
from lift3d.settings import EngineSettings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    settings: EngineSettings
    device: torch.device
    dtype: torch.dtype

    @property
    def weights_mode(self) -> str:
        return self.settings.weights

    @property
    def weights_dir(self) -> Path:
        return self.settings.weights_path

    @property
    def cpu_threads(self) -> int:
        """Threads for CPU work that sizes its own pool (onnxruntime sessions): ``engine.cpu_threads``."""
        return resolve_cpu_threads(self.settings.cpu_threads)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for queued GPU work so wall clocks measure it."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> "Runtime":
        if settings.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(settings.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("device=cuda was asked for, but torch sees no CUDA GPU")
        if settings.dtype != "auto":
            dtype = _DTYPES[settings.dtype]
        elif device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        return cls(settings=settings, device=device, dtype=dtype)
