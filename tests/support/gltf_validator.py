"""Run the Khronos glTF Validator (npm ``gltf-validator``) on GLB bytes, for tests.

The validator is installed with npm on first use into ``.cache/node/`` inside the
repository (gitignored), at a pinned version, and reused afterwards. Where Node or
npm is absent the calling test is skipped with the reason; every other failure
(npm cannot install, the validator crashes) fails loudly, because a silently
skipped validation is a validation that never happens.

Usage from any test::

    from tests.support.gltf_validator import assert_valid_glb, validate_glb

    assert_valid_glb(glb_bytes)            # 0 errors, or AssertionError listing them
    report = validate_glb(glb_bytes)       # the validator's full JSON report (a dict)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from tests.support.paths import REPO

VALIDATOR_VERSION = "2.0.0-dev.3.10"
NODE_CACHE = Path(os.environ.get("LIFT3D_NODE_CACHE", REPO / ".cache" / "node")).resolve()
INSTALL_DIR = NODE_CACHE / f"gltf-validator-{VALIDATOR_VERSION}"

# Reads one GLB from stdin and prints the validator's report as JSON on stdout.
_RUNNER_JS = """\
const validator = require('gltf-validator');
const chunks = [];
process.stdin.on('data', (chunk) => chunks.push(chunk));
process.stdin.on('end', () => {
  const bytes = new Uint8Array(Buffer.concat(chunks));
  validator.validateBytes(bytes, { uri: 'model.glb', format: 'glb', maxIssues: 200 })
    .then((report) => { process.stdout.write(JSON.stringify(report)); })
    .catch((error) => { process.stderr.write(String(error)); process.exit(2); });
});
"""

SEVERITY_NAMES = {0: "error", 1: "warning", 2: "info", 3: "hint"}


def _node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Khronos glTF Validator needs Node.js and npm, absent on this machine")
    return node, npm


def ensure_validator() -> Path:
    """Install the pinned validator once (safe when several test processes race); return its folder."""
    _, npm = _node_tools()
    runner = INSTALL_DIR / "validate.js"
    if runner.exists():
        return INSTALL_DIR
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(NODE_CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runner.exists():
            return INSTALL_DIR
        staging = Path(tempfile.mkdtemp(prefix="gltf-validator-", dir=NODE_CACHE))
        try:
            subprocess.run(
                [npm, "install", "--prefix", str(staging), f"gltf-validator@{VALIDATOR_VERSION}",
                 "--no-audit", "--no-fund", "--no-save", "--loglevel=error"],
                check=True, capture_output=True, text=True, timeout=300,
            )
        except subprocess.CalledProcessError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"npm could not install gltf-validator@{VALIDATOR_VERSION}: {error.stderr}") from error
        (staging / "validate.js").write_text(_RUNNER_JS)
        shutil.rmtree(INSTALL_DIR, ignore_errors=True)
        staging.rename(INSTALL_DIR)
    return INSTALL_DIR


def validate_glb(data: bytes) -> dict[str, Any]:
    """The validator's report for ``data`` (see the ``issues`` key: numErrors, numWarnings, messages)."""
    node, _ = _node_tools()
    folder = ensure_validator()
    completed = subprocess.run(
        [node, str(folder / "validate.js")], input=data, cwd=folder, capture_output=True, timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"gltf-validator failed to run: {completed.stderr.decode(errors='replace')}")
    return json.loads(completed.stdout)


def format_issues(report: dict[str, Any], max_severity: int = 1) -> str:
    """One line per issue at or above ``max_severity`` (0 errors, 1 warnings, 2 infos, 3 hints)."""
    lines = []
    for message in report.get("issues", {}).get("messages", []):
        if message["severity"] <= max_severity:
            where = message.get("pointer") or message.get("offset", "")
            lines.append(f"{SEVERITY_NAMES[message['severity']]} {message['code']} at {where}: {message['message']}")
    return "\n".join(lines)


def assert_valid_glb(data: bytes, *, max_warnings: int | None = None) -> dict[str, Any]:
    """Fail unless the GLB has 0 validator errors (and at most ``max_warnings`` warnings when given)."""
    report = validate_glb(data)
    issues = report["issues"]
    if issues["numErrors"] != 0:
        raise AssertionError(f"glTF Validator found {issues['numErrors']} error(s):\n{format_issues(report, 0)}")
    if max_warnings is not None and issues["numWarnings"] > max_warnings:
        raise AssertionError(
            f"glTF Validator found {issues['numWarnings']} warning(s) (at most {max_warnings}):\n"
            f"{format_issues(report, 1)}"
        )
    return report
