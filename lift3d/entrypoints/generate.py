"""``lift3d generate IMAGE -o OUT.glb``: the server's engine, once, with a terminal progress bar.

Input and options are checked before any model loads, so a bad file fails in a
second with one line on stderr. Exit codes: 0 done, 2 bad input or options,
1 anything else (missing weights, a failed stage), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from lift3d.process import prepare_process
from lift3d.settings import Settings
from lift3d.errors import InputError, Lift3dError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int) -> int:
    print(f"lift3d generate: {message}", file=sys.stderr)
    return code


def _job_options(args: argparse.Namespace):  # noqa: ANN202 - JobOptions, imported lazily
    from pipeline.options import JobOptions

    return JobOptions(
        seed=args.seed,
        steps=args.steps,
        guidance=getattr(args, "guidance", None),
        remove_background=getattr(args, "remove_background", None),
        target_faces=getattr(args, "target_faces", None),
        texture_size=getattr(args, "texture_size", None),
        texture=getattr(args, "texture", None),
        pipeline=getattr(args, "pipeline", None),
        reconstruct_model=getattr(args, "reconstruct_model", None),
    )


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.partial")
    temp.write_bytes(data)
    os.replace(temp, path)


def generate(settings: Settings, args: argparse.Namespace) -> int:
    prepare_process(logging.WARNING, cpu_threads=settings.engine.cpu_threads)
    from pipeline.decode import decode_image
    from pipeline.options import resolve_options

    source, output = Path(args.image), Path(args.output)
    if output.suffix.lower() != ".glb":
        return _fail(f"the output must be a .glb file, got {output.name!r}", EXIT_BAD_INPUT)
    if not output.parent.is_dir():
        return _fail(f"the output folder {str(output.parent)!r} does not exist", EXIT_BAD_INPUT)
    try:
        size = source.stat().st_size
        if size > settings.engine.decode.max_upload_bytes:
            return _fail(
                f"{source.name}: {size} bytes is over the limit of {settings.engine.decode.max_upload_bytes} "
                f"(LIFT3D_MAX_UPLOAD_BYTES)",
                EXIT_BAD_INPUT,
            )
        data = source.read_bytes()
    except OSError as error:
        return _fail(f"cannot read {str(source)!r}: {error.strerror or error}", EXIT_BAD_INPUT)

    options = _job_options(args)
    try:
        resolve_options(options, settings.engine)
        decode_image(data, settings.engine.decode).close()
    except InputError as error:
        return _fail(f"{source.name}: {error.message} [{error.code}]", EXIT_BAD_INPUT)

    from pipeline.engine import Engine, TerminalProgress

    started = time.perf_counter()
    progress: TerminalProgress | None = None
    try:
        engine = Engine(settings.engine)
        engine.load()
        progress = TerminalProgress()
        result = engine.run(data, options, progress=progress)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except InputError as error:
        return _fail(f"{source.name}: {error.message} [{error.code}]", EXIT_BAD_INPUT)
    except Lift3dError as error:
        return _fail(f"{error.message} [{error.code}]", EXIT_FAILED)
    except RuntimeError as error:  # e.g. --device cuda without a GPU
        return _fail(str(error).splitlines()[0], EXIT_FAILED)
    finally:
        del data
        if progress is not None:
            progress.close()

    _write_atomically(output, result.glb)
    faces = result.qa.get("faces")
    summary = f"wrote {output} ({len(result.glb)} bytes"
    summary += f", {faces} faces" if faces is not None else ""
    summary += f", seed {result.seed}, pipeline {result.options.pipeline}, weights {result.weights_mode}) in {time.perf_counter() - started:.1f}s"
    print(summary)
    if result.weights_mode != "locked":
        print(f"note: {result.weights_mode} weights are random-init test models, not a real reconstruction", file=sys.stderr)
    return EXIT_OK
