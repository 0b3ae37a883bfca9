#!/usr/bin/env python3
"""The Python half of scripts/gpu_check.sh: provenance, versions, the GLB check and the summary.

    python scripts/gpu_check_report.py source KITDIR             # which commit these files are
    python scripts/gpu_check_report.py environment --mode gpu    # versions, device, driver
    python scripts/gpu_check_report.py glb MODEL.glb --json OUT  # structural check + Khronos validator
    python scripts/gpu_check_report.py summary WORK OUTDIR --mode gpu

The shell script runs each step under its own time cap; this module only reads what the
steps left behind and writes ``summary.json`` and ``summary.md`` into OUTDIR.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE_STAMP = "SOURCE.json"
VALIDATOR_GLOB = "gltf-validator-*/validate.js"
# Packages whose versions the summary records (the kit's and those kept from the machine).
RECORDED_PACKAGES = (
    "torch", "diffusers", "transformers", "huggingface-hub", "tokenizers", "numpy", "scipy", "pillow",
    "onnxruntime", "safetensors", "litestar", "uvicorn", "msgspec", "trimesh", "pygltflib", "xatlas",
    "fast-simplification", "PyMCubes", "rembg", "cryptography", "httpx", "nvidia-ml-py", "pytest",
)


# ------------------------------------------------------------------ provenance

def git_blob_id(data: bytes) -> str:
    """The id git gives a file with these bytes (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_source_stamp(kit_dir: Path) -> dict[str, Any]:
    """At kit-build time: HEAD's commit and the blob id of every tracked file (``git ls-tree``)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    blobs = {}
    for line in git("ls-tree", "-r", "HEAD").splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, blob = meta.split()
        if kind == "blob" and mode != "120000":
            blobs[path] = blob
    stamp = {"commit": git("rev-parse", "HEAD").strip(), "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip(),
             "files": blobs}
    (kit_dir / SOURCE_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return stamp


def compare_with_stamp(kit_dir: Path) -> dict[str, Any]:
    """Where the copy has no git: is this tree the stamped commit? Lists the files that differ."""
    path = kit_dir / SOURCE_STAMP
    if not path.is_file():
        return {"commit": None, "reason": f"no {SOURCE_STAMP} in the kit"}
    stamp = json.loads(path.read_text())
    differing = []
    for relative, blob in sorted(stamp["files"].items()):
        file = REPO / relative
        if not file.is_file() or git_blob_id(file.read_bytes()) != blob:
            differing.append(relative)
    return {"commit": stamp["commit"], "branch": stamp["branch"], "dirty": bool(differing), "differing_files": differing}


def source_state(kit_dir: Path) -> dict[str, Any]:
    """The commit these files are: from git where the tree has it, else from the kit's stamp."""
    from benchmarks.common import git_state

    state = git_state()
    if state.get("commit") and not state.get("from"):
        return {**state, "from": "git"}
    return {**compare_with_stamp(kit_dir), "from": "source stamp"}


# ------------------------------------------------------------------ environment

def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(mode: str) -> dict[str, Any]:
    """Python, every recorded package, torch's CUDA view and the device (with driver and CUDA)."""
    import platform

    import torch

    from benchmarks.common import device_info

    return {
        "mode": mode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": device_info("cuda" if mode == "gpu" else "cpu"),
    }


# ------------------------------------------------------------------ the GLB

_COMPONENTS = {5120: "i1", 5121: "u1", 5122: "i2", 5123: "u2", 5125: "u4", 5126: "f4"}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def _accessor_array(gltf: Any, blob: bytes, index: int) -> Any:
    import numpy as np

    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = np.dtype(_COMPONENTS[accessor.componentType]).newbyteorder("<")
    width = _WIDTH[accessor.type]
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    stride = view.byteStride or dtype.itemsize * width
    if stride != dtype.itemsize * width:
        raise ValueError(f"accessor {index}: interleaved data is not checked here")
    end = start + accessor.count * stride
    if end > (view.byteOffset or 0) + view.byteLength or end > len(blob):
        raise ValueError(f"accessor {index} runs past its buffer view")
    return np.frombuffer(blob, dtype=dtype, count=accessor.count * width, offset=start).reshape(accessor.count, width)


def structural_check(data: bytes) -> dict[str, Any]:
    """What can be checked without the Khronos validator: the GLB parses (pygltflib), every
    accessor fits its buffer, indices are triangles inside the vertex range, positions are
    finite and within their declared min/max, per-vertex attributes match in count, the
    texture decodes (Pillow), and trimesh loads a non-empty mesh."""
    import numpy as np
    import pygltflib
    import trimesh
    from PIL import Image

    problems: list[str] = []
    stats: dict[str, Any] = {"bytes": len(data)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pygltflib warns, then returns None, on a bad header
            gltf = pygltflib.GLTF2.load_from_bytes(data)
    except Exception as error:  # noqa: BLE001 - any parse failure is the finding
        return {"ok": False, "problems": [f"not a parsable GLB: {type(error).__name__}: {error}"], **stats}
    if gltf is None or not data.startswith(b"glTF"):
        return {"ok": False, "problems": ["not a GLB: pygltflib could not read its header"], **stats}
    blob = gltf.binary_blob() or b""
    if gltf.asset.version != "2.0":
        problems.append(f"asset.version is {gltf.asset.version!r}, not '2.0'")
    if gltf.buffers and gltf.buffers[0].byteLength > len(blob):
        problems.append("buffer 0 declares more bytes than the BIN chunk holds")
    if not gltf.meshes:
        problems.append("no mesh")
    vertices = faces = 0
    for mesh_index, mesh in enumerate(gltf.meshes):
        for primitive in mesh.primitives:
            where = f"mesh {mesh_index}"
            try:
                if primitive.attributes.POSITION is None:
                    problems.append(f"{where}: no POSITION")
                    continue
                accessor = gltf.accessors[primitive.attributes.POSITION]
                positions = _accessor_array(gltf, blob, primitive.attributes.POSITION)
                count = len(positions)
                vertices += count
                if not np.isfinite(positions).all():
                    problems.append(f"{where}: non-finite positions")
                if accessor.min is None or accessor.max is None:
                    problems.append(f"{where}: POSITION has no min/max")
                elif (positions.min(0) < np.array(accessor.min) - 1e-5).any() or (
                    positions.max(0) > np.array(accessor.max) + 1e-5
                ).any():
                    problems.append(f"{where}: positions outside their declared min/max")
                for name in ("NORMAL", "TEXCOORD_0", "COLOR_0"):
                    attribute = getattr(primitive.attributes, name)
                    if attribute is not None and len(_accessor_array(gltf, blob, attribute)) != count:
                        problems.append(f"{where}: {name} count differs from POSITION")
                if primitive.indices is not None:
                    indices = _accessor_array(gltf, blob, primitive.indices).ravel()
                    if indices.size % 3:
                        problems.append(f"{where}: {indices.size} indices are not whole triangles")
                    if indices.size and int(indices.max()) >= count:
                        problems.append(f"{where}: index {int(indices.max())} past the {count} vertices")
                    faces += indices.size // 3
            except (ValueError, IndexError, KeyError) as error:
                problems.append(f"{where}: {error}")
    textures = []
    for image in gltf.images:
        try:
            view = gltf.bufferViews[image.bufferView]
            start = view.byteOffset or 0
            with Image.open(io.BytesIO(blob[start : start + view.byteLength])) as picture:
                picture.load()
                textures.append([picture.width, picture.height])
        except Exception as error:  # noqa: BLE001
            problems.append(f"image {len(textures)} does not decode: {error}")
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
        if len(loaded.faces) == 0:
            problems.append("trimesh loads no faces")
    except Exception as error:  # noqa: BLE001
        problems.append(f"trimesh cannot load it: {error}")
    return {"ok": not problems, "problems": problems, **stats, "vertices": vertices, "faces": faces, "textures": textures}


def find_validator(kit_dir: Path) -> Path | None:
    """The carried validator (``KITDIR/node``), else the one the tests installed (``.cache/node``)."""
    for folder in (kit_dir / "node", REPO / ".cache" / "node"):
        found = sorted(folder.glob(VALIDATOR_GLOB))
        if found:
            return found[-1]
    return None


def khronos_check(data: bytes, kit_dir: Path, *, may_install: bool) -> dict[str, Any]:
    """The Khronos glTF Validator's verdict, or why it could not run here."""
    node = shutil.which("node")
    if node is None:
        return {"ran": False, "reason": "no node on this machine: structural check only"}
    runner = find_validator(kit_dir)
    if runner is None and may_install and shutil.which("npm"):
        from tests.support.gltf_validator import ensure_validator  # installs the pinned version with npm

        runner = ensure_validator() / "validate.js"
    if runner is None:
        return {"ran": False, "reason": "node is here but no validator was carried (scripts/gpu_kit.sh carries it)"}
    completed = subprocess.run([node, str(runner)], input=data, capture_output=True, timeout=120)
    if completed.returncode != 0:
        return {"ran": True, "ok": False, "reason": completed.stderr.decode(errors="replace")[-2000:]}
    issues = json.loads(completed.stdout)["issues"]
    messages = [m for m in issues.get("messages", []) if m.get("severity", 3) <= 1]
    return {
        "ran": True,
        "ok": issues["numErrors"] == 0,
        "errors": issues["numErrors"],
        "warnings": issues["numWarnings"],
        "messages": [f"{m['code']} at {m.get('pointer', '')}: {m['message']}" for m in messages[:20]],
    }


def glb_check_bytes(data: bytes, kit_dir: Path, *, require_khronos: bool) -> dict[str, Any]:
    """Structural check always; the Khronos validator where node exists (required with ``require_khronos``)."""
    structural = structural_check(data)
    khronos = khronos_check(data, kit_dir, may_install=require_khronos)
    ok = structural["ok"] and khronos.get("ok", not require_khronos)
    validator = "khronos+structural" if khronos["ran"] else "structural"
    return {"ok": bool(ok), "validator": validator, "structural": structural, "khronos": khronos}


# ------------------------------------------------------------------ summary

def read_steps(work: Path) -> list[dict[str, Any]]:
    steps = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, started, ended, cap = line.split("\t")
        steps.append({"name": name, "rc": None if rc == "not-run" else int(rc), "started": float(started),
                      "seconds": round(float(ended) - float(started), 2), "cap_s": int(cap)})
    return steps


def pytest_outcomes(junit: Path) -> list[dict[str, Any]]:
    if not junit.is_file():
        return []
    outcomes = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", None
        for child in case:
            if child.tag in {"failure", "error", "skipped"}:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "")[:300]
        outcomes.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                         "seconds": float(case.get("time") or 0), "message": message})
    return outcomes


def results_written_since(folder: Path, since: float) -> dict[str, Any]:
    """JSON results the GPU tests wrote into benchmarks/results during the pytest step."""
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if path.stat().st_mtime >= since - 1:
            try:
                found[path.name] = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                found[path.name] = {"unreadable": str(error)}
    return found


def _one(out: Path, pattern: str) -> str | None:
    matches = sorted(out.glob(pattern))
    return matches[-1].name if matches else None


def judge(step: dict[str, Any], mode: str, out: Path) -> tuple[bool, str]:
    """Passed or not, and a one-line note. rc 124/137: the step ran past its cap."""
    rc = step["rc"]
    if rc is None:
        return False, "not run: the time budget was spent"
    if rc in (124, 137):
        return False, f"stopped at its {step['cap_s']} s cap"
    name = step["name"]
    if name == "pytest":
        outcomes = step.get("tests", [])
        counts = {kind: sum(o["outcome"] == kind for o in outcomes) for kind in ("passed", "failed", "error", "skipped")}
        note = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        if rc != 0 or not outcomes:
            return False, note or f"rc {rc}"
        if mode == "gpu" and counts["skipped"]:
            return False, note + ": a GPU test skipped on the GPU machine"
        return True, note
    if name in {"pipeline", "http"}:
        prefix = "pipeline" if name == "pipeline" else "http"
        files = [_one(out, f"{prefix}-*.json"), _one(out, f"{prefix}-*.md")]
        if rc != 0 or None in files:
            return False, f"rc {rc}" + ("" if None not in files else ", results not written")
        return True, ", ".join(files)
    if name == "generate":
        return (rc == 0 and (out / "model.glb").is_file()), f"rc {rc}, model.glb {'written' if (out / 'model.glb').is_file() else 'missing'}"
    if name == "validate":
        glb = step.get("glb") or {}
        if not glb:
            return False, f"rc {rc}, no report"
        problems = glb["structural"].get("problems", []) + ([glb["khronos"].get("reason")] if glb["khronos"].get("ok") is False else [])
        note = f"{glb['validator']}: " + ("0 errors" if glb["ok"] else "; ".join(str(p) for p in problems if p)[:300])
        if glb["khronos"].get("ran") and glb["khronos"].get("ok"):
            note += f", {glb['khronos']['warnings']} warning(s)"
        elif not glb["khronos"].get("ran"):
            note += f" ({glb['khronos']['reason']})"
        return rc == 0 and glb["ok"], note
    return rc == 0, f"rc {rc}"


def build_summary(work: Path, out: Path, mode: str, command: str) -> dict[str, Any]:
    from benchmarks.common import utc_now

    steps = read_steps(work)
    for step in steps:
        if step["name"] == "pytest":
            step["tests"] = pytest_outcomes(work / "pytest.xml")
            step["results_written"] = results_written_since(REPO / "benchmarks" / "results", step["started"])
        if step["name"] == "validate" and (work / "glb.json").is_file():
            step["glb"] = json.loads((work / "glb.json").read_text())
        step["passed"], step["note"] = judge(step, mode, out)
        del step["started"]
    read = lambda name: json.loads((work / name).read_text()) if (work / name).is_file() else None  # noqa: E731
    kit_manifest = read("kit-manifest.json")
    return {
        "kind": "gpu-check",
        "mode": mode,
        "ok": bool(steps) and all(step["passed"] for step in steps),
        "date_utc": utc_now().isoformat(timespec="seconds"),
        "command": command,
        "source": read("source.json"),
        "environment": read("environment.json"),
        "kit": None if kit_manifest is None else {
            "total_bytes": kit_manifest.get("total_bytes"),
            "wheels": kit_manifest.get("wheels"),
            "kept_from_machine": kit_manifest.get("kept_from_machine"),
        },
        "steps": steps,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()) + ["summary.json", "summary.md"],
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    env = summary.get("environment") or {}
    device = env.get("device") or {}
    packages = env.get("packages") or {}
    source = summary.get("source") or {}
    commit = (source.get("commit") or "unknown")[:10] + (" (tree differs from it)" if source.get("dirty") else "")
    if device.get("type") == "cuda":
        where = (f"{device.get('name')}, driver {device.get('driver')} (supports CUDA {device.get('cuda_driver')}), "
                 f"torch CUDA runtime {device.get('cuda_runtime')}")
    else:
        where = f"CPU {device.get('name')}"
    lines = [
        f"# GPU check ({summary['mode']} mode): {'all steps passed' if summary['ok'] else 'FAILED'}",
        "",
        f"- **Device:** {where}",
        f"- **Software:** Python {env.get('python')}, torch {packages.get('torch')}, diffusers {packages.get('diffusers')}, "
        f"transformers {packages.get('transformers')}, numpy {packages.get('numpy')}, onnxruntime {packages.get('onnxruntime')}",
        f"- **Commit:** `{commit}` ({source.get('from', 'unknown')}), **date (UTC):** {summary['date_utc']}",
        f"- **Command:** `{summary['command']}`",
        "",
        "| step | result | seconds | cap s | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for step in summary["steps"]:
        result = "passed" if step["passed"] else "FAILED"
        lines.append(f"| {step['name']} | {result} | {step['seconds']:.1f} | {step['cap_s']} | {step['note']} |")
    tests = next((s.get("tests") for s in summary["steps"] if s["name"] == "pytest"), None) or []
    if tests:
        lines += ["", "## GPU tests", "", "| test | outcome | seconds |", "| --- | --- | --- |"]
        lines += [f"| `{t['test']}` | {t['outcome']} | {t['seconds']:.1f} |" for t in tests]
    kit = summary.get("kit")
    if kit and kit.get("kept_from_machine"):
        lines += ["", "## Versions kept from the machine (not the pins)", "", "| package | ran | pin | why |",
                  "| --- | --- | --- | --- |"]
        for row in kit["kept_from_machine"]:
            ran = packages.get(row["package"]) or row.get("target") or "?"
            lines.append(f"| {row['package']} | {ran} | {row.get('pin')} | {row['why']} |")
    lines += ["", "Benchmark tables: the `pipeline-*.md` and `http-*.md` files beside this one."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check_report.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stamp = commands.add_parser("stamp", help="write KITDIR/SOURCE.json (kit-build time, needs git)")
    stamp.add_argument("kit_dir", type=Path)
    source = commands.add_parser("source", help="which commit this tree is; writes --json, prints shell assignments")
    source.add_argument("kit_dir", type=Path)
    source.add_argument("--json", type=Path, required=True)
    env = commands.add_parser("environment", help="versions, device, driver and CUDA")
    env.add_argument("--mode", choices=["gpu", "cpu"], required=True)
    env.add_argument("--json", type=Path, required=True)
    glb = commands.add_parser("glb", help="check a GLB: structural, plus the Khronos validator where node exists")
    glb.add_argument("path", type=Path)
    glb.add_argument("--kit", type=Path, default=REPO / ".gpukit")
    glb.add_argument("--json", type=Path, required=True)
    glb.add_argument("--require-khronos", action="store_true", help="fail unless the Khronos validator ran (installs it with npm if needed)")
    summary = commands.add_parser("summary", help="write OUTDIR/summary.json and summary.md from the steps' leftovers")
    summary.add_argument("work", type=Path)
    summary.add_argument("out", type=Path)
    summary.add_argument("--mode", choices=["gpu", "cpu"], required=True)
    summary.add_argument("--command", dest="command_line", required=True)
    args = parser.parse_args(argv)

    if args.command == "stamp":
        stamp_doc = write_source_stamp(args.kit_dir)
        print(f"source stamp: commit {stamp_doc['commit'][:10]}, {len(stamp_doc['files'])} tracked files")
        return 0
    if args.command == "source":
        state = source_state(args.kit_dir)
        args.json.write_text(json.dumps(state, indent=2) + "\n")
        differing = state.get("differing_files") or []
        print(f"# source: commit {state.get('commit')} from {state['from']}"
              + (f"; {len(differing)} file(s) differ from it: {', '.join(differing[:5])}" if differing else ""),
              file=sys.stderr)
        if state["from"] == "source stamp" and state.get("commit"):
            print(f"LIFT3D_GIT_COMMIT={state['commit']}")
            print(f"LIFT3D_GIT_BRANCH={state.get('branch') or ''}")
            print(f"LIFT3D_GIT_DIRTY={'1' if state.get('dirty') else '0'}")
        return 0
    if args.command == "environment":
        document = environment(args.mode)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        device = document["device"]
        print(f"python {document['python']}  torch CUDA build {document['torch_cuda_build']}  "
              f"CUDA available {document['cuda_available']}")
        print(f"device: {device.get('name')}  driver {device.get('driver')}  CUDA (driver) {device.get('cuda_driver')}  "
              f"cudnn {device.get('cudnn')}")
        print("  ".join(f"{name} {version}" for name, version in document["packages"].items()))
        return 0 if args.mode == "cpu" or document["cuda_available"] else 1
    if args.command == "glb":
        report = glb_check_bytes(args.path.read_bytes(), args.kit, require_khronos=args.require_khronos)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: report[k] for k in ("ok", "validator")} | {"structural": report["structural"]["problems"],
                                                                            "khronos": report["khronos"]}, indent=1))
        return 0 if report["ok"] else 1
    document = build_summary(args.work, args.out, args.mode, args.command_line)
    (args.out / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary_markdown(document))
    print(summary_markdown(document))
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
