"""Record every file a block of code opens for writing (the "nothing on disk" promise)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest


class WriteAudit:
    """Records every file opened for writing while active (sys audit hooks can't be removed: gate them)."""

    active: list[str] | None = None
    installed = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active is None or event != "open":
            return
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if writing:
            cls.active.append(str(path))

    @classmethod
    def start(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True
        cls.active = []

    @classmethod
    def stop(cls) -> list[str]:
        written, cls.active = cls.active or [], None
        return written


def isolate_temp_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Point the temp dir and the working dir at empty folders, so leftovers can be seen."""
    temp_dir, work_dir = tmp_path / "tmp", tmp_path / "cwd"
    temp_dir.mkdir()
    work_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    monkeypatch.setenv("TMPDIR", str(temp_dir))
    monkeypatch.chdir(work_dir)
    assert Path(tempfile.gettempdir()) == temp_dir
    return temp_dir, work_dir
