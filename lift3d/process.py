"""Process-wide set-up every entry point shares: offline weights, and logs that leak nothing.

Called once at the top of ``serve``, ``generate`` and the RunPod worker, never at import.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def go_offline() -> None:
    """Weights are pulled ahead (`lift3d weights pull`): serving never reaches the Hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def configure_logging(level: int = logging.INFO) -> None:
    """Our loggers to stderr. Records carry ids, sizes, timings and codes; never bytes, names, IPs or keys."""
    root = logging.getLogger()
    if not any(getattr(handler, "_lift3d", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._lift3d = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO (webhook and presigned URLs may carry secrets);
    # uvicorn.access logs client IPs; Pillow logs EXIF tag values at DEBUG.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("PIL").setLevel(logging.WARNING)


def prepare_process(log_level: int = logging.INFO) -> None:
    go_offline()
    configure_logging(log_level)
