"""RunPod serverless entry point: `python scripts/runpod_handler.py` (the image's worker command).

Settings come from the environment (LIFT3D_*), RunPod's flags from the command
line: `--test_input '{"input": {...}}'` (or a test_input.json in the working
directory) runs one job locally and exits, as the RunPod SDK documents.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d.entrypoints.runpod_worker import start  # noqa: E402
from lift3d.settings import load_settings  # noqa: E402

if __name__ == "__main__":
    sys.exit(start(load_settings()))
