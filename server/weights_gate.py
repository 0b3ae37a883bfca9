"""What ``lift3d serve`` does about absent weights before the engine loads.

A server whose weights are missing never exits: a container whose main process
exits is restarted, and on a pod that is a restart loop with no way in. Instead the
worker thread runs one step before it loads the engine (``JobManager.prepare``):

- ``--pull-missing`` (``LIFT3D_PULL_MISSING=1``): fetch the profile with the same
  ``lift3d weights pull`` a person would run, in a child process (sha256-checked,
  resumable, progress in the server's log), while ``/readyz`` answers 503
  ``pulling_weights``. The child, not the server, goes online: the server itself
  stays offline (``HF_HUB_OFFLINE=1``, lift3d/process.py).
- otherwise, in ``locked`` mode: fail the load with ``weights_missing`` (``/readyz``
  503 ``weights_missing``, submissions 503), naming the commands that fix it. The
  process stays up, so an operator can open a terminal, pull, and restart.

``tiny`` and ``dummy`` read only the background model and fall back without it: a warning.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Callable

from lift3d.errors import WeightsMissing
from lift3d.settings import Settings

log = logging.getLogger("lift3d.server")

PULLING_WEIGHTS = "pulling_weights"
SetPhase = Callable[[str], None]


def serve_hint(settings: Settings, profile: str) -> str:
    """How to start a server that fetches ``profile`` itself: the flags and the environment alike."""
    from lift3d.weights.catalog import artifacts_for

    unverified = any(not a.verified for a in artifacts_for(profile))
    flags = "--pull-missing" + (" --allow-unverified" if unverified else "")
    env = "LIFT3D_PULL_MISSING=1" + (" LIFT3D_ALLOW_UNVERIFIED=1" if unverified else "")
    return f"or restart with `lift3d serve {flags}` ({env}) to fetch them at start-up"


def pull_argv(settings: Settings, profile: str) -> list[str]:
    """The ``lift3d weights pull`` child process, against the lock this process checks."""
    from lift3d.weights import catalog

    argv = [sys.executable, "-m", "lift3d.entrypoints.cli", "weights", "--lock", str(catalog.DEFAULT_LOCK_PATH)]
    argv += ["pull", "--profile", profile, "--weights-dir", str(settings.engine.weights_path)]
    if settings.server.allow_unverified_weights:
        argv.append("--allow-unverified")
    return argv


def weights_step(settings: Settings) -> Callable[[SetPhase], None] | None:
    """The step the worker runs before loading, or None when every weight file is in place."""
    from lift3d.weights import LockError, missing_files, profile_for, weights_missing

    missing = missing_files(settings.engine)
    if not missing:
        return None
    try:
        profile = profile_for(settings.engine)
    except LockError as error:  # no lock profile holds this combination: refuse, never exit
        refusal = WeightsMissing(f"{len(missing)} weight files are missing and {error}; pull them by hand")
        log.error("%s", refusal.message)

        def refuse_unlocked(_: SetPhase) -> None:
            raise refusal

        return refuse_unlocked if settings.engine.weights == "locked" else None
    if settings.server.pull_missing:
        return lambda set_phase: pull_missing(settings, profile, [a.path for a in missing], set_phase)
    error = weights_missing([a.path for a in missing], settings.engine.weights_path, profile=profile)
    if settings.engine.weights != "locked":
        log.warning("%s", error.message)
        return None
    error = WeightsMissing(f"{error.message}; {serve_hint(settings, profile)}")
    log.error("%s", error.message)

    def refuse(_: SetPhase) -> None:
        raise error

    return refuse


def pull_missing(settings: Settings, profile: str, missing: list[str], set_phase: SetPhase) -> None:
    """Run ``lift3d weights pull`` for ``profile``; WeightsMissing (with the fix) when files are still absent."""
    from lift3d.weights import missing_files, pull_command

    set_phase(PULLING_WEIGHTS)
    log.info("pulling %d missing weight file(s) of profile %r into %s", len(missing), profile, settings.engine.weights_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}  # this child only; the server stays offline
    completed = subprocess.run(pull_argv(settings, profile), env=env, stdin=subprocess.DEVNULL, check=False)
    still = missing_files(settings.engine)
    if completed.returncode == 0 and not still:
        log.info("weights of profile %r in place", profile)
        return
    command = pull_command(profile, settings.engine.weights_path)
    hint = f"run `{command}` in a terminal to see why"
    if "--allow-unverified" in command and not settings.server.allow_unverified_weights:
        hint = "some files are not pinned in weights.lock yet: add --allow-unverified (LIFT3D_ALLOW_UNVERIFIED=1), or " + hint
    shown = ", ".join(a.path for a in still[:3]) or "(see the log above)"
    raise WeightsMissing(f"pulling profile {profile!r} failed (exit {completed.returncode}); still missing: {shown}; {hint}")
