"""Benchmark JPEG decoding: full size vs the DCT-domain reduction the decoder picks, and what it costs in quality.

Inputs are phone-like JPEGs made here (a real photo from ../shared/images when
present, upscaled, with sensor noise and fine texture so the files are photo-sized):
12 MP (4032x3024) and 48 MP (8000x6000), quality 90.

1. Decode time: ``decode_upload(min_side=0)`` (the finest scale the pixel cap allows:
   full size for 12 MP, 1/2 for 48 MP) against the default (the coarsest scale whose
   shorter side stays >= 640 px), and decode + background (heuristic mask) both ways.
2. Quality: PSNR of a framed 320 px output made from a 1/2, 1/4 or 1/8 decode against
   the same output made from the full decode, by how many decoded pixels the square
   had per output pixel; next to it, the error JPEG q90 itself leaves at that scale.
   This is the measurement behind ``OVERSAMPLING = 2`` in pipeline/decode.py.

    python benchmarks/bench_decode.py [--repeats 7] [--write]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    capture_environment,
    default_images_dir,
    load_average,
    results_stem,
    utc_now,
    write_results,
)
from lift3d.settings import DecodeSettings, EngineSettings  # noqa: E402
from pipeline.background import BackgroundStage, BorderColourSegmenter  # noqa: E402
from pipeline.decode import DecodeStage, decode_upload  # noqa: E402
from pipeline.events import CancelToken, ProgressBus  # noqa: E402
from pipeline.options import JobOptions, resolve_options  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.stage import StageContext  # noqa: E402
from pipeline.state import JobState  # noqa: E402

SIZES = {"12 MP": (4032, 3024), "48 MP": (8000, 6000)}
OUTPUT = 320


def phone_photo(size: tuple[int, int], seed: int = 0) -> tuple[Image.Image, str]:
    width, height = size
    source = next((p for p in sorted(default_images_dir().glob("*.jpg"))), None) if default_images_dir().is_dir() else None
    if source is not None:
        base = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        origin = f"{source.name} upscaled"
    else:
        x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        base = Image.fromarray(np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), np.full((height, width), 128.0)], -1).astype(np.uint8))
        origin = "synthetic gradient"
    rng = np.random.default_rng(seed)
    pixels = np.asarray(base, np.float32)
    pixels += rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)  # sensor noise
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels += (8.0 * np.sin(xx / 2.3) * np.sin(yy / 3.1))[..., None]  # fine texture, near the pixel scale
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), origin + " + noise + texture"


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def timed(function, repeats: int) -> float:  # noqa: ANN001
    function()  # warm
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def decode_and_frame(data: bytes, runtime: Runtime, *, reduced: bool) -> JobState:
    job = JobState(options=resolve_options(JobOptions(seed=0, remove_background="on"), runtime.settings), input_bytes=data)
    background = BackgroundStage(segmenter=BorderColourSegmenter())
    background.load(runtime)
    if reduced:
        decode = DecodeStage()
        decode.load(runtime)
        decode.run(job, StageContext(runtime, "decode", ProgressBus(), CancelToken(), 0.0, 1.0))
    else:
        job.image = decode_upload(data, runtime.settings.decode, min_side=0).image
    background.run(job, StageContext(runtime, "background", ProgressBus(), CancelToken(), 0.0, 1.0))
    return job


def psnr(a: Image.Image, b: Image.Image) -> float:
    difference = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255.0**2 / max(float((difference**2).mean()), 1e-12)))


def quality_table(original: Image.Image, data: bytes) -> list[dict[str, Any]]:
    full = Image.open(io.BytesIO(data))
    full.load()
    decoded = {1: full}
    for reduction in (2, 4, 8):
        image = Image.open(io.BytesIO(data))
        image.draft(image.mode, (image.width // reduction, image.height // reduction))
        image.load()
        decoded[reduction] = image
    centre_x, centre_y = original.width / 2, original.height / 2
    rows = []
    for side in (320, 640, 1280, 2560):
        box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
        reference = full.resize((OUTPUT, OUTPUT), Image.Resampling.LANCZOS, box=box)
        jpeg_own = psnr(reference, original.resize((OUTPUT, OUTPUT), Image.Resampling.LANCZOS, box=box))
        for reduction in (2, 4, 8):
            image = decoded[reduction]
            k = image.width / full.width
            scaled = tuple(v * k for v in box)
            output = image.resize((OUTPUT, OUTPUT), Image.Resampling.LANCZOS, box=scaled)
            rows.append(
                {
                    "square_full_px": side,
                    "reduction": reduction,
                    "decoded_px_per_output_px": side / reduction / OUTPUT,
                    "psnr_vs_full_decode_db": round(psnr(reference, output), 1),
                    "jpeg_q90_own_error_db": round(jpeg_own, 1),
                }
            )
    return rows


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Decode benchmark: JPEG draft (DCT-domain) reduction",
        "",
        f"- date: {env['date_utc']}",
        f"- commit: {env['git']['commit']}{' (dirty)' if env['git']['dirty'] else ''}",
        f"- device: {env['device'].get('name', 'cpu')}; load average after: {payload['load_average']}",
        f"- command: `{env['command']}`",
        f"- inputs: {payload['origin']}, JPEG quality 90; median of {payload['repeats']} runs, wall clock, one process",
        "",
        "| input | file | decode, finest the cap allows | decode, default | decoded sizes | decode + background, full | decode + background, default |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in payload["timings"]:
        lines.append(
            f"| {row['input']} | {row['bytes'] / 1e6:.1f} MB | {row['decode_finest_s'] * 1000:.0f} ms | {row['decode_default_s'] * 1000:.0f} ms "
            f"| {row['finest_size']} -> {row['default_size']} | {row['pipeline_full_s'] * 1000:.0f} ms | {row['pipeline_default_s'] * 1000:.0f} ms |"
        )
    def worst(low: float, high: float) -> float:
        return min(r["psnr_vs_full_decode_db"] for r in payload["quality"] if low <= r["decoded_px_per_output_px"] < high)

    lines += [
        "",
        "Quality of a framed 320 px output from a reduced decode, against the same output from the full",
        "decode (12 MP input; higher is closer). \"decoded px per output px\" is the square's side in the",
        "reduced image over 320; the decoder and the framing keep it >= 2 (OVERSAMPLING in pipeline/decode.py).",
        f"Worst case in this run: {worst(2, 99)} dB at >= 2, {worst(1, 2)} dB at 1, {worst(0, 1)} dB below 1;",
        "JPEG q90's own coding error at the same scales is in the last column.",
        "",
        "| square (full px) | reduction | decoded px per output px | PSNR vs full decode | JPEG q90's own error |",
        "|---|---|---|---|---|",
    ]
    for row in payload["quality"]:
        lines.append(
            f"| {row['square_full_px']} | 1/{row['reduction']} | {row['decoded_px_per_output_px']:.2f} "
            f"| {row['psnr_vs_full_decode_db']} dB | {row['jpeg_q90_own_error_db']} dB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/decode-cpu-<date>.{json,md}")
    args = parser.parse_args()
    runtime = Runtime.from_settings(EngineSettings(device="cpu", weights="tiny", weights_dir="/nonexistent"))
    settings: DecodeSettings = runtime.settings.decode
    timings, quality, origin = [], [], ""
    for label, size in SIZES.items():
        original, origin = phone_photo(size)
        data = jpeg(original)
        finest = decode_upload(data, settings, min_side=0)
        default = decode_upload(data, settings)
        row = {
            "input": f"{label} {size[0]}x{size[1]}",
            "bytes": len(data),
            "finest_size": "x".join(map(str, finest.image.size)),
            "default_size": "x".join(map(str, default.image.size)),
            "decode_finest_s": timed(lambda: decode_upload(data, settings, min_side=0), args.repeats),
            "decode_default_s": timed(lambda: decode_upload(data, settings), args.repeats),
            "pipeline_full_s": timed(lambda: decode_and_frame(data, runtime, reduced=False), args.repeats),
            "pipeline_default_s": timed(lambda: decode_and_frame(data, runtime, reduced=True), args.repeats),
        }
        print(row)
        timings.append(row)
        if label == "12 MP":
            quality = quality_table(original, data)
        del original, finest, default
    for row in quality:
        print(row)
    payload = {
        "environment": capture_environment(sys.argv, "cpu"),
        "load_average": load_average(),
        "origin": origin,
        "repeats": args.repeats,
        "timings": timings,
        "quality": quality,
    }
    text = markdown(payload)
    print(text)
    if args.write:
        stem = results_stem("decode", "none", "cpu", smoke=False, when=utc_now())
        for path in write_results(payload, text, REPO / "benchmarks" / "results", stem):
            print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
