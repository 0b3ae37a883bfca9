#!/usr/bin/env python3
"""The offline GPU kit: which wheels travel, and proof that they are enough.

The GPU machine (docs/gpu.md) is offline and already holds the packages listed in
``../shared/gpu/target-packages.txt``. The kit carries, as CPython 3.12 manylinux
x86-64 wheels at the versions ``requirements.lock`` pins, exactly what lift3d needs
there and that machine lacks. ``check`` proves the list closed: every ``Requires-Dist``
of every kit wheel (markers evaluated for that machine, extras followed) is met by a
kit wheel or by a package already on the machine, no kit wheel shadows one of the
machine's, and every wheel's tags and ``Requires-Python`` fit CPython 3.12 there.

    python scripts/gpukit.py plan                    # name==version per kit wheel
    python scripts/gpukit.py platforms               # pip --platform arguments
    python scripts/gpukit.py check --wheels DIR      # closure of the downloaded wheels
    python scripts/gpukit.py check --installed       # the same on this venv's metadata (no download)
    python scripts/gpukit.py prune DIR               # delete wheels an older plan left behind
    python scripts/gpukit.py manifest KITDIR         # write KITDIR/MANIFEST.json, print sizes, fail over the cap

Only the standard library and ``packaging`` are used: no lift3d import.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PYPROJECT = REPO / "pyproject.toml"
SHARED = Path(os.environ.get("LIFT3D_SHARED_DIR", REPO.parent / "shared"))
TARGET_PACKAGES = SHARED / "gpu" / "target-packages.txt"
KIT_LIMIT_BYTES = 56 * 2**20

# What travels. lift3d's runtime dependencies that the GPU machine lacks ...
KIT_ROOTS = (
    "diffusers",
    "litestar",
    "uvicorn",
    "python-multipart",
    "msgspec",
    "cryptography",
    "trimesh",
    "pygltflib",
    "xatlas",
    "fast-simplification",
    "pymcubes",
    "rembg",
    "tomlkit",
    "swagger-ui-bundle",  # the API docs page's assets, served offline
)
# ... and what those need that the machine lacks too (``check`` fails when one is missing).
KIT_CLOSURE = (
    "importlib-metadata",  # diffusers
    "lazy-importer",  # importlib-metadata
    "litestar-htmx",  # litestar
    "multipart",  # litestar
    "polyfactory",  # litestar
    "faker",  # polyfactory
    "rich-click",  # litestar
    "sniffio",  # litestar
    "cffi",  # cryptography
    "pycparser",  # cffi
    "dataclasses-json",  # pygltflib
    "marshmallow",  # dataclasses-json
    "deprecated",  # pygltflib
    "jsonschema",  # rembg
    "jsonschema-specifications",  # jsonschema
    "referencing",  # jsonschema
    "rpds-py",  # jsonschema, referencing
    "pooch",  # rembg
    "platformdirs",  # pooch
    "pymatting",  # rembg
)
KIT_PACKAGES = KIT_ROOTS + KIT_CLOSURE

# lift3d dependencies the machine already has: its version runs, not the pin. Why each is fine.
TARGET_KEEPS = {
    "torch": "the machine's CUDA 13 build (2.11) runs; the pin (2.13) is this repo's CPU build, "
    "and a CUDA torch wheel is gigabytes, far over the kit's limit",
    "transformers": "the machine's 5.17 runs; lift3d uses only the CLIP model, tokenizer and PIL image "
    "processor classes, all in 5.17 (the Zero123++ pipeline, preprocessing and golden tests pass "
    "with 5.17 and huggingface-hub 1.33); the pinned 5.23 would add 12 MB and need huggingface-hub 2",
    "huggingface-hub": "the machine's 1.33 runs: transformers 5.17 needs <2.0 and diffusers 0.42.1 "
    "accepts >=1.32; dummy weights never touch the Hub",
    "numpy": "the machine's 2.5 runs; the kit's compiled wheels (xatlas, fast-simplification, "
    "PyMCubes, rpds-py) are built against the numpy 2 ABI, which 2.5 keeps",
    "onnxruntime": "the machine's 1.30 (CPU) runs the u2netp background model; onnxruntime-gpu "
    "would be hundreds of MB and background removal is a few ms of a job",
    "safetensors": "the same 0.8.0 as the pin",
    "pillow": "the machine's pillow runs (version not recorded; the check prints it)",
    "scipy": "the machine's scipy runs (version not recorded; the check prints it)",
    "httpx": "the machine's httpx runs (version not recorded; the check prints it)",
    "prometheus-client": "the machine's prometheus-client runs (version not recorded)",
    "tqdm": "the machine's tqdm runs (version not recorded)",
    "idna": "the machine's idna runs (httpx needs it too); server/urls.py uses only its IDNA 2008 "
    "encode with UTS 46 mapping, stable across idna 3.x",
}

# pip --platform values, newest first. glibc 2.28 or older: any CUDA 13 image has a newer one.
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)) + (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)


@dataclass(frozen=True)
class Dist:
    """One distribution as the closure check sees it (from a wheel or from installed metadata)."""

    name: str  # canonical
    version: str
    requires: tuple[str, ...]
    requires_python: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Target:
    """The packages of the GPU machine: canonical name -> version (None where not recorded)."""

    packages: dict[str, str | None]
    python: str  # full version, e.g. 3.12.3

    def environment(self) -> dict[str, str]:
        """PEP 508 marker values of that machine."""
        return {
            "implementation_name": "cpython",
            "implementation_version": self.python,
            "os_name": "posix",
            "platform_machine": "x86_64",
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": self.python,
            "python_version": ".".join(self.python.split(".")[:2]),
            "sys_platform": "linux",
        }


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    # Requirements met by a machine package whose version was not recorded: name -> needs.
    unversioned: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``requirements.lock`` as canonical name -> pinned version."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def read_target(path: Path = TARGET_PACKAGES) -> Target:
    """``target-packages.txt``: comment lines, then one ``name`` or ``name==version`` a line."""
    text = path.read_text()
    found = re.search(r"CPython (\d+\.\d+\.\d+)", text)
    if found is None:
        raise ValueError(f"{path.name} does not say which CPython the machine has")
    packages: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("Packages:").strip()
        name, _, version = line.partition("==")
        packages[canonicalize_name(name)] = version.strip() or None
    return Target(packages, found.group(1))


def runtime_dependencies(path: Path = PYPROJECT) -> list[Requirement]:
    """lift3d's own ``[project] dependencies`` (extras such as runpod are not needed there)."""
    project = tomllib.loads(path.read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def kit_pins(lock: dict[str, str]) -> dict[str, str]:
    """The kit's wheels at their locked versions."""
    missing = [name for name in KIT_PACKAGES if canonicalize_name(name) not in lock]
    if missing:
        raise ValueError(f"not pinned in requirements.lock: {', '.join(missing)}")
    return {canonicalize_name(name): lock[canonicalize_name(name)] for name in KIT_PACKAGES}


def supported_tags(python: str) -> set[Tag]:
    """Every wheel tag CPython ``python`` on manylinux x86-64 (glibc >= 2.28) accepts."""
    major, minor = (int(part) for part in python.split(".")[:2])
    interpreter = f"cp{major}{minor}"
    return set(cpython_tags((major, minor), [interpreter], PLATFORMS)) | set(
        compatible_tags((major, minor), interpreter, PLATFORMS)
    )


def _metadata_dist(headers: Any, source: str) -> Dist:
    """From METADATA headers (an ``email.message.Message`` or importlib's ``PackageMetadata``)."""
    return Dist(
        canonicalize_name(headers["Name"]),
        headers["Version"],
        tuple(headers.get_all("Requires-Dist") or ()),
        headers.get("Requires-Python"),
        source,
    )


def wheel_dist(path: Path) -> Dist:
    """A wheel's name, version, requirements and Requires-Python, from its METADATA."""
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        return _metadata_dist(HeaderParser().parsestr(archive.read(member).decode()), path.name)


def installed_dist(name: str) -> Dist:
    """The same from this interpreter's installed metadata (same version, same requirements)."""
    dist = metadata.distribution(name)
    return _metadata_dist(dist.metadata, f"installed {dist.metadata['Name']}")


def _applies(requirement: Requirement, environment: dict[str, str], extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras))


def machine_target() -> Target:
    """The running interpreter's own packages, as the GPU machine has them (run before the kit is on sys.path)."""
    import platform

    packages: dict[str, str | None] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(canonicalize_name(name), dist.version)
    return Target(packages, platform.python_version())


def check_closure(kit: dict[str, Dist], target: Target, *, shadowing_is_a_problem: bool = True) -> Report:
    """Every requirement of every kit dist met by the kit or the machine; nothing shadows the machine."""
    report = Report()
    environment = target.environment()
    python = Version(target.python)
    for name, dist in kit.items():
        if name in target.packages:
            message = (
                f"{dist.name} {dist.version} is in the kit but the machine has {name} "
                f"{target.packages[name] or '(version not recorded)'}: the kit would shadow it"
            )
            if shadowing_is_a_problem:
                report.problems.append(message)
            else:
                report.notes.append(message)
        if dist.requires_python and not SpecifierSet(dist.requires_python).contains(python, prereleases=True):
            report.problems.append(f"{dist.name} {dist.version} needs Python {dist.requires_python}, the machine has {python}")
    pending = [(dist, frozenset()) for dist in kit.values()]
    done: set[tuple[str, frozenset[str]]] = set()
    while pending:
        dist, extras = pending.pop()
        if (dist.name, extras) in done:
            continue
        done.add((dist.name, extras))
        for line in dist.requires:
            requirement = Requirement(line)
            if not _applies(requirement, environment, extras):
                continue
            name = canonicalize_name(requirement.name)
            needs = f"{dist.name} {dist.version} needs {requirement}"
            if name in kit:
                if not requirement.specifier.contains(kit[name].version, prereleases=True):
                    report.problems.append(f"{needs}, the kit has {kit[name].version}")
                if requirement.extras:
                    pending.append((kit[name], frozenset(requirement.extras)))
            elif name in target.packages:
                version = target.packages[name]
                if version is None:
                    if requirement.specifier or requirement.extras:
                        report.unversioned.setdefault(name, set()).add(f"{dist.name}: {requirement}")
                elif not requirement.specifier.contains(version, prereleases=True):
                    report.problems.append(f"{needs}, the machine has {version}")
            else:
                report.problems.append(f"{needs}: neither in the kit nor on the machine")
    return report


def check_tags(wheels: Iterable[Path], target: Target) -> list[str]:
    """Wheels the machine's pip would refuse, and names present twice (two versions stop an install)."""
    supported = supported_tags(target.python)
    problems, seen = [], {}
    for path in wheels:
        name, version, _, tags = parse_wheel_filename(path.name)
        if not tags & supported:
            problems.append(f"{path.name}: no tag CPython {target.python} on manylinux x86-64 accepts")
        if name in seen:
            problems.append(f"{name} twice: {seen[name]} and {path.name}")
        seen[name] = path.name
    return problems


def stale_wheels(folder: Path, pins: dict[str, str]) -> list[Path]:
    """Wheels in ``folder`` at a name or version the plan does not name (left by an older plan)."""
    stale = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        if name not in pins or Version(pins[name]) != version:
            stale.append(path)
    return stale


def check_dependencies_covered(target: Target) -> list[str]:
    """Every lift3d runtime dependency travels in the kit or is on the machine with a stated reason."""
    kit = {canonicalize_name(name) for name in KIT_PACKAGES}
    keeps = {canonicalize_name(name) for name in TARGET_KEEPS}
    problems = []
    for requirement in runtime_dependencies():
        name = canonicalize_name(requirement.name)
        if name in kit:
            continue
        if name not in target.packages:
            problems.append(f"lift3d needs {requirement}: neither in the kit nor on the machine")
        elif name not in keeps:
            problems.append(f"lift3d needs {requirement}, the machine has {name}: say why in TARGET_KEEPS or carry it")
    return problems


def decisions(target: Target, lock: dict[str, str]) -> list[dict[str, str | None]]:
    """Per dependency kept from the machine: its version there, our pin, and why it is fine."""
    return [
        {
            "package": name,
            "target": target.packages.get(canonicalize_name(name)),
            "pin": lock.get(canonicalize_name(name)),
            "why": why,
        }
        for name, why in TARGET_KEEPS.items()
    ]


def verify(kit: dict[str, Dist], target: Target, lock: dict[str, str], *, on_machine: bool = False) -> Report:
    """The whole check on ``kit``: the pins, the dependency coverage and the closure.

    ``on_machine``: ``target`` is the GPU machine's own interpreter, whose versions are all
    known; a kit wheel it also has is then a note (the kit's copy wins on sys.path), not a failure.
    """
    report = check_closure(kit, target, shadowing_is_a_problem=not on_machine)
    pins = kit_pins(lock)
    for name, version in pins.items():
        if name not in kit:
            report.problems.append(f"{name}=={version} is planned but absent")
        elif kit[name].version != version:
            report.problems.append(f"{name} is {kit[name].version}, requirements.lock pins {version}")
    report.problems += [f"{dist.name} is not in the plan" for name, dist in kit.items() if name not in pins]
    report.problems += check_dependencies_covered(target)
    return report


def _print_report(report: Report, label: str, *, verbose: bool) -> None:
    for note in report.notes:
        print(f"note: {note}")
    if report.unversioned:
        print(
            f"note: {len(report.unversioned)} requirement(s) met by packages whose version the list does not "
            "record; gpu_check.sh checks them against the real versions there (-v lists them)"
        )
    for name, needs in sorted(report.unversioned.items()) if verbose else ():
        print(f"  {name}: {'; '.join(sorted(needs))}")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{label}: {'closed' if report.ok else f'{len(report.problems)} problem(s)'}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(kit_dir: Path, target: Target, lock: dict[str, str]) -> tuple[dict, int]:
    """MANIFEST.json: every file with size and sha256, the pins, and the versions kept from the machine."""
    files = sorted(p for p in kit_dir.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    total = sum(p.stat().st_size for p in files)
    manifest = {
        "python": target.python,
        "platforms": list(PLATFORMS),
        "wheels": kit_pins(lock),
        "kept_from_machine": decisions(target, lock),
        "total_bytes": total,
        "limit_bytes": KIT_LIMIT_BYTES,
        "files": [
            {"path": p.relative_to(kit_dir).as_posix(), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ],
    }
    (kit_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpukit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-packages", type=Path, default=TARGET_PACKAGES)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="name==version of every kit wheel")
    commands.add_parser("platforms", help="pip download --platform arguments")
    check = commands.add_parser("check", help="the closure check")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--wheels", type=Path, help="folder of downloaded wheels")
    source.add_argument("--installed", action="store_true", help="this interpreter's metadata of the pinned versions")
    check.add_argument("-v", "--verbose", action="store_true", help="list every requirement met at an unrecorded version")
    check.add_argument(
        "--machine", action="store_true",
        help="check against this interpreter's packages instead of target-packages.txt (on the GPU machine)",
    )
    prune = commands.add_parser("prune", help="delete wheels in DIR that the plan no longer names")
    prune.add_argument("wheel_dir", type=Path)
    manifest = commands.add_parser("manifest", help="write KITDIR/MANIFEST.json and check the size")
    manifest.add_argument("kit_dir", type=Path)
    args = parser.parse_args(argv)

    lock = read_lock()
    if args.command == "plan":
        print("\n".join(f"{name}=={version}" for name, version in kit_pins(lock).items()))
        return 0
    if args.command == "platforms":
        print(" ".join(f"--platform {platform}" for platform in PLATFORMS))
        return 0
    if args.command == "prune":
        for path in stale_wheels(args.wheel_dir, kit_pins(lock)):
            print(f"removing {path.name}: not in the plan")
            path.unlink()
        return 0
    on_machine = args.command == "check" and args.machine
    if not on_machine and not args.target_packages.is_file():
        print(f"{args.target_packages} is absent: cannot check against the GPU machine's packages", file=sys.stderr)
        return 2
    target = machine_target() if on_machine else read_target(args.target_packages)
    if args.command == "check":
        if args.installed:
            kit = {canonicalize_name(n): installed_dist(n) for n in KIT_PACKAGES}
            report = verify(kit, target, lock, on_machine=on_machine)
        else:
            wheels = sorted(args.wheels.glob("*.whl"))
            kit = {dist.name: dist for dist in map(wheel_dist, wheels)}
            report = verify(kit, target, lock, on_machine=on_machine)
            report.problems += check_tags(wheels, target)
        against = "this interpreter's packages" if on_machine else args.target_packages.name
        _print_report(report, f"dependency closure of {len(kit)} packages against {against}", verbose=args.verbose)
        return 0 if report.ok else 1
    manifest_doc, total = write_manifest(args.kit_dir, target, lock)
    for entry in manifest_doc["files"]:
        print(f"{entry['bytes'] / 2**20:8.2f} MiB  {entry['path']}")
    print(f"kit total: {total / 2**20:.2f} MiB of {KIT_LIMIT_BYTES / 2**20:.0f} MiB allowed")
    if total > KIT_LIMIT_BYTES:
        print(f"the kit is over its limit by {(total - KIT_LIMIT_BYTES) / 2**20:.2f} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
