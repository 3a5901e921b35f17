from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nemotron_core.utils.atomic import atomic_directory, atomic_write_json, atomic_write_text


def test_directory_appears_whole(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not final.exists()  # nothing visible before the block ends
    assert (final / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(final):
            pass
    with atomic_directory(final, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_overwrite_keeps_the_old_directory(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError
    assert (final / "old.txt").read_text() == "old"


def test_killed_process_leaves_no_output(tmp_path):
    final = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import os, signal, time
        from nemotron_core.utils.atomic import atomic_directory
        with atomic_directory({str(final)!r}) as tmp:
            (tmp / "part").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()
    # only a hidden temporary sibling may remain
    assert all(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())


def test_atomic_write_json_is_deterministic(tmp_path):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    first = p.read_bytes()
    atomic_write_json(p, {"a": [1, 2], "b": 1})
    assert p.read_bytes() == first == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads(first) == {"a": [1, 2], "b": 1}
    atomic_write_text(tmp_path / "sub" / "t.txt", "hi")
    assert (tmp_path / "sub" / "t.txt").read_text() == "hi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "sub"]
