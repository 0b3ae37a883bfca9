"""Which precision each network runs at, from the settings: one place that decides.

- The LRM's image encoder and triplane transformer run under bf16 autocast on CUDA
  (``reconstruct.precision``: ``auto`` = bf16 where the GPU has it). Their weights stay
  fp32; autocast runs the matmuls and attention in bf16 and keeps norms in fp32.
- The triplane field (density grid, colour queries) always runs in fp32 on fp32
  triplanes: the iso-level (density 10 in locked mode) is a threshold on its output,
  and bf16's 8-bit mantissa would quantise the density right where the threshold cuts.
- On a CPU everything is fp32, whatever the setting: the golden checks stay exact.
- ``engine.tf32`` lets CUDA's fp32 matmuls and convolutions use TF32 (the field's
  matmuls included); ``engine.compile`` compiles the UNet and the LRM during warm-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from pipeline.runtime import Runtime

log = logging.getLogger("lift3d.precision")


def lrm_autocast_dtype(runtime: Runtime, bf16_supported: Callable[[], bool] | None = None) -> torch.dtype | None:
    """The autocast dtype for the LRM's encoder and transformer, or None for plain fp32."""
    precision = runtime.settings.reconstruct.precision
    if not runtime.is_cuda or precision == "float32":
        return None
    supported = bf16_supported or torch.cuda.is_bf16_supported
    if precision == "bfloat16" or supported():
        return torch.bfloat16
    return None  # auto on a GPU without bf16: fp32 (with TF32 when engine.tf32 is on)


def lrm_autocast(runtime: Runtime) -> ContextManager[object]:
    dtype = lrm_autocast_dtype(runtime)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=dtype)


def field_precision(runtime: Runtime) -> ContextManager[object]:
    """fp32 for the triplane field, even inside an enclosing autocast."""
    return torch.autocast(device_type=runtime.device.type, enabled=False)


def apply_tf32(runtime: Runtime) -> None:
    """TF32 for CUDA fp32 matmuls and convolutions (process-wide; only the engine's CUDA runtime sets it)."""
    if runtime.is_cuda:
        torch.backends.cuda.matmul.allow_tf32 = runtime.settings.tf32
        torch.backends.cudnn.allow_tf32 = runtime.settings.tf32


def compile_modules(runtime: Runtime, modules: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """``torch.compile`` each module in place (static shapes) when ``engine.compile`` is on and on CUDA.

    Compiling happens at the first call, which is the engine's warm-up job (the same
    shapes as every real job), so no user's job pays for it. Returns the names compiled.
    """
    if not runtime.settings.compile:
        return []
    if not runtime.is_cuda:
        log.warning("engine.compile is for CUDA; the CPU path runs eagerly")
        return []
    if c_compiler() is None:
        # Triton builds each kernel's launcher with a C compiler; without one the first
        # compiled call fails. The CUDA image ships none: eager is slower, never wrong.
        log.warning("engine.compile needs a C compiler (CC, cc, gcc or clang) for Triton; none found, running eagerly")
        return []
    compiled = []
    for name, module in modules:
        module.compile(dynamic=False)
        compiled.append(name)
    log.info("torch.compile: %s (compiled by the warm-up job)", ", ".join(compiled))
    return compiled


def c_compiler() -> str | None:
    """The C compiler Triton would use: ``$CC``, else the first of cc, gcc, clang on PATH."""
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)
