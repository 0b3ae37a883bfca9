"""`lift3d weights pull | verify | lock` (lift3d/entrypoints/cli.py mounts these on its `weights` command)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lift3d.settings import Settings
from lift3d.weights.lock import DEFAULT_LOCK_PATH, WeightsLock, load_lock
from lift3d.errors import Lift3dError

DEFAULT_PROFILE = "quality"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock", type=Path, default=None, help=f"lock file (default: {DEFAULT_LOCK_PATH.name})")
    commands = parser.add_subparsers(dest="weights_command", required=True)

    pull = commands.add_parser("pull", help="download, check and install a profile's weight files")
    _profile_flag(pull)
    pull.add_argument(
        "--allow-unverified",
        action="store_true",
        help="also fetch entries whose revision or sha256 weights.lock does not pin yet",
    )
    pull.add_argument(
        "--source",
        choices=["auto", "primary", "mirror"],
        default="auto",
        help="auto: the primary source, then its mirrors (default); primary or mirror: only those",
    )
    _weights_dir_flag(pull)

    verify = commands.add_parser("verify", help="re-hash a profile's files; print status and licence")
    _profile_flag(verify)
    _weights_dir_flag(verify)

    lock = commands.add_parser("lock", help="resolve unknown revisions and digests, then rewrite weights.lock")
    lock.add_argument("--check", action="store_true", help="only report; exit 1 when something is unresolved")


def _profile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help=f"weights profile (default: {DEFAULT_PROFILE})")


def _weights_dir_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the sub-command it wins; absent, `lift3d weights --weights-dir` (or the env) stands.
    parser.add_argument("--weights-dir", default=argparse.SUPPRESS, help="where weight files live")


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        lock_path = args.lock or DEFAULT_LOCK_PATH
        if args.weights_command == "lock":
            return _lock(lock_path, check_only=args.check)
        lock = load_lock(lock_path)
        weights_dir = Path(getattr(args, "weights_dir", None) or settings.engine.weights_dir).expanduser()
        if args.weights_command == "pull":
            return _pull(lock, args, weights_dir)
        return _verify(lock, args.profile, weights_dir)
    except Lift3dError as error:
        print(f"lift3d weights: {error.message}", file=sys.stderr)
        return 1


def _pull(lock: WeightsLock, args: argparse.Namespace, weights_dir: Path) -> int:
    from lift3d.weights.pull import pull_profile

    print(f"pulling profile {args.profile!r} into {weights_dir}")
    outcomes = pull_profile(
        lock, args.profile, weights_dir, allow_unverified=args.allow_unverified, sources=args.source
    )
    failed = [o for o in outcomes if not o.ok]
    if failed:
        refused = sum(o.action == "refused" for o in failed)
        hint = ""
        if refused:
            from lift3d.weights.catalog import pull_command

            hint = f"; to take them unpinned, run `{pull_command(args.profile, weights_dir, lock)}`"
        print(
            f"{len(failed)} of {len(outcomes)} files not installed ({refused} refused as unverified){hint}",
            file=sys.stderr,
        )
        return 1
    print(f"profile {args.profile!r}: {len(outcomes)} files present and checked")
    return 0


def _verify(lock: WeightsLock, profile: str, weights_dir: Path) -> int:
    from lift3d.weights.verify import format_table, verify_profile

    checks = verify_profile(lock, profile, weights_dir)
    print(f"profile {profile!r} in {weights_dir}")
    print(format_table(checks))
    licences = sorted({c.artifact.licence for c in checks})
    print(f"licences: {', '.join(licences)}")
    if "CC-BY-NC-4.0" in licences:
        print("note: CC-BY-NC-4.0 weights are for non-commercial use only")
    if any(c.state in ("missing", "corrupt", "unknown-origin") for c in checks):
        from lift3d.weights.catalog import pull_command

        print(f"to fetch what is missing or broken, run `{pull_command(profile, weights_dir, lock)}`")
    return 0 if all(c.ok for c in checks) else 1


def _lock(lock_path: Path, *, check_only: bool) -> int:
    if check_only:
        lock = load_lock(lock_path)
        pending = [a for a in lock.artifacts if not a.verified]
        for artifact in pending:
            print(f"unresolved {', '.join(artifact.unresolved):<24} {artifact.path}")
        print(f"{len(pending)} of {len(lock.artifacts)} entries unresolved")
        return 1 if pending else 0
    from lift3d.weights.resolve import resolve_lock

    try:
        _, count = resolve_lock(lock_path)
    except Lift3dError:
        raise
    except Exception as error:  # network and hub errors: say which, keep the old lock
        print(f"lift3d weights lock: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"{lock_path.name}: {count} entries resolved")
    return 0
