"""Schemathesis against `lift3d serve --weights tiny`: the OpenAPI document and the live server agree.

Every check (`--checks all`), a fixed seed, bounded examples, and the stateful phase, which
follows the document's links from a submitted job to its status, events, files and erasure.
One setting is ours: valid-looking data may still be refused as 415/422 on POST /v1/jobs,
because "the bytes are a decodable image" is not something a schema can state (the
generated multipart `image` is random bytes).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lifecycle import API_KEY, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "415", "422", "429"]
"""


def test_schemathesis_finds_no_mismatch(tmp_path: Path, u2netp_weights_dir: Path) -> None:
    env = {"LIFT3D_QUEUE_SIZE": "2", "LIFT3D_JOB_DEADLINE_SECONDS": "30"}
    server = ServerProcess(tmp_path / "data", engine="tiny", env=env, weights_dir=u2netp_weights_dir).start()
    try:
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
            "run", f"{server.base_url}/schema/openapi.json",
            "--checks", "all",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", "15",
            "--seed", "18",
            "--workers", "1",
            "--request-timeout", "20",
            "--generation-database", "none",
            "--header", f"Authorization: Bearer {API_KEY}",
        ]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=800)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report + "\n" + server.log_tail(2000)
        print(report)
        # It really ran: every phase, the stateful one included, and enough cases to mean something.
        for phase in ("Coverage", "Fuzzing", "Stateful"):
            assert f"✅ {phase}" in run.stdout, report
        generated = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
        assert generated and int(generated.group(1)) >= 200 and generated.group(1) == generated.group(2), report
    finally:
        server.stop()
