"""Full-size Zero123++ (dummy weights) on a CUDA GPU in bf16: seconds per step and peak memory.

Run with ``pytest -m gpu tests/test_zero123plus_gpu.py``; results go to
``benchmarks/results/zero123plus_dummy_<gpu>.json``. Dummy weights time the real
architecture; the numbers say nothing about image quality.
"""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.zero123plus.factory import build_multiview_model

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
STEP_COUNTS = (28, 75)


def _condition() -> Image.Image:
    array = np.full((320, 320, 4), 255, dtype=np.uint8)
    array[..., 3] = 0
    array[60:260, 60:260] = (200, 80, 40, 255)
    return Image.fromarray(array, "RGBA")


@pytest.mark.gpu
def test_full_size_dummy_bf16_steps_and_memory():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    dtype = torch.bfloat16
    model = build_multiview_model("dummy", weights_dir=Path("."), variant="instantmesh", device=device, dtype=dtype)
    pipeline = model.pipeline
    image = _condition()

    def generate(steps: int, step_ends: list[float]):
        def on_step_end(_pipe, _index, _t, tensors):
            torch.cuda.synchronize(device)
            step_ends.append(time.perf_counter())
            return tensors

        return pipeline(
            image,
            num_inference_steps=steps,
            width=model.width,
            height=model.height,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=on_step_end,
        )

    generate(2, [])  # warm-up: kernels, allocator
    runs = []
    for steps in STEP_COUNTS:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step_ends: list[float] = []
        started = time.perf_counter()
        output = generate(steps, step_ends)
        torch.cuda.synchronize(device)
        total = time.perf_counter() - started
        assert output.views.shape == (6, 3, 320, 320)
        assert torch.isfinite(output.views).all()
        assert len(step_ends) == steps
        runs.append(
            {
                "steps": steps,
                "seconds_per_step": (step_ends[-1] - step_ends[0]) / (steps - 1),
                "seconds_total": total,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            }
        )

    gpu = torch.cuda.get_device_name(device)
    result = {
        "benchmark": "zero123plus full-size pipeline, dummy (random) weights",
        "weights_mode": "dummy",
        "dtype": "bfloat16",
        "grid": [model.width, model.height],
        "guidance": 4.0,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    (RESULTS_DIR / f"zero123plus_dummy_{slug}.json").write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        assert run["seconds_per_step"] > 0 and run["peak_memory_gib"] > 1.0
