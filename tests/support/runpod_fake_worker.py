"""``lift3d runpod-worker`` with stand-in model stages (tests only).

``python -m tests.support.runpod_fake_worker [worker and RunPod SDK flags]`` runs the
real CLI, the real worker and the real SDK; only the engine is the lifecycle tests'
fake one (tests/support/lifecycle.py), so a job takes a second, not minutes.
"""

from __future__ import annotations

import sys


def main() -> int:
    import lift3d.entrypoints.runpod_worker as worker
    from lift3d.entrypoints.cli import main as cli_main
    from tests.support.lifecycle import fake_engine

    real_start = worker.start

    def start_with_fake_engine(settings, sdk_args=None):  # noqa: ANN001, ANN202
        return real_start(settings, sdk_args, engine=fake_engine(settings))

    worker.start = start_with_fake_engine  # type: ignore[assignment]
    return cli_main(["runpod-worker", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
