"""The device's attainable matmul throughput and copy bandwidth, measured in the benchmark's own run.

The "compute floor" of a stage is its counted FLOPs divided by the matmul peak measured
here, on this device, in this process: never a datasheet number. A large square matmul
is the best case any model layer can reach, so floor / measured time is an upper bound
on how much faster the stage could get without doing less arithmetic.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timed(fn: Callable[[], None], device: torch.device, min_seconds: float, max_iters: int) -> tuple[int, float]:
    """Run ``fn`` until ``min_seconds`` have passed (synchronised); returns (iterations, seconds)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    sync(device)
    iterations = 0
    started = time.perf_counter()
    elapsed = 0.0
    while iterations < max_iters and (elapsed < min_seconds or iterations == 0):
        fn()
        iterations += 1
        if iterations % 4 == 0 or iterations == 1:
            sync(device)
            elapsed = time.perf_counter() - started
    sync(device)
    return iterations, time.perf_counter() - started


def _single_matmul_seconds(device: torch.device, dtype: torch.dtype, size: int) -> float:
    a = torch.ones(size, size, device=device, dtype=dtype)
    if device.type == "cuda":
        # The first cuBLAS call creates its handle and workspace: time the second.
        _timed(lambda: torch.mm(a, a), device, min_seconds=0.0, max_iters=1)
    return _timed(lambda: torch.mm(a, a), device, min_seconds=0.0, max_iters=1)[1]


def matmul_peak(
    device: torch.device, dtype: torch.dtype, size: int, *, trials: int = 3, min_seconds: float = 0.25
) -> dict[str, Any]:
    """Best of ``trials`` timings of ``size``x``size`` @ ``size``x``size`` in ``dtype``, in FLOP/s.

    Where one matmul alone outlasts ``min_seconds`` (fp16 on a CPU has no fast kernel),
    the size is halved until it does not, so the measurement stays bounded in time.
    """
    while size > 128 and _single_matmul_seconds(device, dtype, size) > min_seconds:
        size //= 2
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    flops_per_matmul = 2 * size**3

    def step() -> None:
        torch.mm(a, b, out=out)

    _timed(step, device, min_seconds=0.0, max_iters=2)  # warm-up: kernel selection, clocks
    best = 0.0
    for _ in range(trials):
        iterations, seconds = _timed(step, device, min_seconds=min_seconds, max_iters=10_000)
        best = max(best, flops_per_matmul * iterations / seconds)
    return {"flops_per_second": best, "size": size, "trials": trials}


def copy_bandwidth(device: torch.device, megabytes: int, *, trials: int = 3, min_seconds: float = 0.25) -> dict[str, Any]:
    """Best device-memory copy rate, counting the read and the write (bytes moved / second)."""
    elements = megabytes * 2**20 // 4
    src = torch.ones(elements, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    moved = 2 * src.numel() * src.element_size()

    def step() -> None:
        dst.copy_(src)

    _timed(step, device, min_seconds=0.0, max_iters=2)
    best = 0.0
    for _ in range(trials):
        iterations, seconds = _timed(step, device, min_seconds=min_seconds, max_iters=10_000)
        best = max(best, moved * iterations / seconds)
    return {"bytes_per_second": best, "buffer_bytes": src.numel() * src.element_size(), "trials": trials}


def host_to_device_bandwidth(device: torch.device, megabytes: int, *, min_seconds: float = 0.25) -> dict[str, Any] | None:
    """Pinned host to GPU upload rate (what moving images and weights in costs); None on CPU."""
    if device.type != "cuda":
        return None
    host = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32).pin_memory()
    target = torch.empty_like(host, device=device)

    def step() -> None:
        target.copy_(host, non_blocking=True)

    _timed(step, device, min_seconds=0.0, max_iters=2)
    iterations, seconds = _timed(step, device, min_seconds=min_seconds, max_iters=10_000)
    return {"bytes_per_second": host.numel() * host.element_size() * iterations / seconds, "buffer_bytes": host.numel() * 4}


def measure_device(
    device: torch.device, dtypes: list[str], *, matmul_size: int | None = None, copy_megabytes: int | None = None
) -> dict[str, Any]:
    """Matmul peak for each dtype the configurations run in, plus copy bandwidths."""
    on_gpu = device.type == "cuda"
    size = matmul_size or (8192 if on_gpu else 1024)
    megabytes = copy_megabytes or (1024 if on_gpu else 128)
    peaks = {name: matmul_peak(device, DTYPES[name], size) for name in sorted(set(dtypes))}
    result = {
        "matmul": peaks,
        "copy": copy_bandwidth(device, megabytes),
        "host_to_device": host_to_device_bandwidth(device, min(megabytes, 256)),
    }
    if on_gpu:
        torch.cuda.empty_cache()
    return result
