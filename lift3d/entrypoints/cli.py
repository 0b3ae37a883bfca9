"""`lift3d` command line: a contract other tools drive, so flags change only additively.

Each sub-command's work lives with its owner; this module only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lift3d.settings import Settings, load_settings


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=["locked", "dummy", "tiny"], help="weights mode (default: locked)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device (default: auto)")
    parser.add_argument("--weights-dir", help="where weight files live (env LIFT3D_WEIGHTS_DIR)")
    parser.add_argument(
        "--reconstruct-model",
        choices=["instant-mesh-large", "instant-mesh-base", "instant-nerf-large", "instant-nerf-base"],
        help="reconstruction model: the one loaded and used by default (env LIFT3D_RECONSTRUCT_MODEL)",
    )


def _profile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        dest="server_profile",  # not the weights subcommand's --profile, which names a weights.lock profile
        choices=["fast", "quality", "all"],
        help="pipelines to load: fast (TripoSR, commercial use allowed), quality (multiview), all (env LIFT3D_PROFILE; default quality)",
    )


def _settings_from(args: argparse.Namespace) -> Settings:
    profile = getattr(args, "server_profile", None)
    if profile is None and getattr(args, "pipeline", None) is not None:
        # generate loads just the pipeline it runs.
        profile = {"fast": "fast", "multiview": "quality"}[args.pipeline]
    overrides: dict[str, Any] = {
        "engine__profile": profile,
        "engine__weights": getattr(args, "weights", None),
        "engine__device": getattr(args, "device", None),
        "engine__weights_dir": getattr(args, "weights_dir", None),
        "engine__reconstruct__model": getattr(args, "reconstruct_model", None),
        "server__host": getattr(args, "host", None),
        "server__port": getattr(args, "port", None),
        "storage__data_dir": getattr(args, "data_dir", None),
        # store_true flags: only a given flag overrides the environment.
        "server__pull_missing": getattr(args, "pull_missing", None) or None,
        "server__allow_unverified_weights": getattr(args, "allow_unverified_serve", None) or None,
    }
    return load_settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lift3d", description="One photo in, a textured 3D model (GLB) out.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; 0.0.0.0 on a pod)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--data-dir", help="job store and results (env LIFT3D_DATA_DIR)")
    serve.add_argument(
        "--pull-missing", action="store_true", help="fetch missing weights before loading (env LIFT3D_PULL_MISSING=1)"
    )
    serve.add_argument(
        "--allow-unverified",
        dest="allow_unverified_serve",
        action="store_true",
        help="with --pull-missing: also fetch entries weights.lock does not pin yet (env LIFT3D_ALLOW_UNVERIFIED=1)",
    )
    _engine_flags(serve)
    _profile_flag(serve)

    generate = commands.add_parser("generate", help="turn one image into a GLB, with a progress bar")
    generate.add_argument("image", help="input image (PNG, JPEG, WebP or GIF; the first frame of an animation)")
    generate.add_argument("-o", "--output", required=True, help="output .glb path")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--steps", type=int)
    generate.add_argument("--guidance", type=float)
    generate.add_argument("--remove-background", choices=["auto", "on", "off"])
    generate.add_argument("--target-faces", type=int)
    generate.add_argument("--texture-size", type=int)
    generate.add_argument("--texture", choices=["uv", "vertex"])
    generate.add_argument(
        "--pipeline", choices=["multiview", "fast"], help="multiview (default; CC-BY-NC parts) or fast (TripoSR, MIT)"
    )
    _engine_flags(generate)

    weights = commands.add_parser("weights", help="pin, download and verify weight files")
    from lift3d.entrypoints.weights import add_arguments as add_weights_arguments

    add_weights_arguments(weights)
    weights.add_argument("--weights-dir", help="where weight files live (env LIFT3D_WEIGHTS_DIR)")

    worker = commands.add_parser(
        "runpod-worker",
        help="run as a RunPod serverless worker",
        description="Any other flag goes to the RunPod SDK: --rp_serve_api, --rp_api_host, --rp_api_port, "
        "--rp_api_concurrency, --rp_log_level, --rp_debugger, --test_input.",
    )
    _engine_flags(worker)
    _profile_flag(worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # The RunPod SDK parses its own flags (--rp_serve_api, --test_input, ...): the worker passes them on.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "runpod-worker":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    settings = _settings_from(args)
    if args.command != "weights":
        from lift3d.process import resolve_cpu_threads, set_thread_environment

        # Before torch and numpy load below: OpenMP and BLAS read their thread counts once.
        set_thread_environment(resolve_cpu_threads(settings.engine.cpu_threads))
    if args.command == "serve":
        from server.main import serve

        return serve(settings)
    if args.command == "generate":
        from lift3d.entrypoints.generate import generate

        return generate(settings, args)
    if args.command == "weights":
        from lift3d.entrypoints.weights import run as run_weights

        return run_weights(settings, args)
    if args.command == "runpod-worker":
        from lift3d.entrypoints.runpod_worker import start

        return start(settings, extra)
    return 2


if __name__ == "__main__":
    sys.exit(main())
