"""RunPod serverless entry point: `python scripts/runpod_handler.py` (the image's worker command).

Exactly `lift3d runpod-worker`: settings come from the environment (LIFT3D_*) and
the worker's flags, every other flag goes to the RunPod SDK: `--test_input '{"input": {...}}'`
(or a test_input.json in the working directory) runs one job locally and exits,
`--rp_serve_api --rp_api_host 127.0.0.1` serves the SDK's local /run, /status, /stream API.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d.entrypoints.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["runpod-worker", *sys.argv[1:]]))
