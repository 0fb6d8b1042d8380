"""Listing commands into a closed pipe, and read-only commands on a PostgreSQL database that was
never migrated (issue 18.3).

``dicomnode results | head`` must end quietly: the reader of the pipe went away, so the command
stops with 141 (128 + SIGPIPE, as ``cat`` does) and prints no BrokenPipeError. The pipe here is
closed before the command writes, so the write fails every time, not only when the output
outgrows the pipe buffer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from dicomnode.cli import main
from tests.conftest import REPO

DICOMNODE = [sys.executable, "-m", "dicomnode"]


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update({f"DICOMNODE_{k.upper()}": v for k, v in settings.items()})
    return env


@pytest.mark.parametrize(
    "argv",
    [["results"], ["audit", "events"], ["audit", "--format", "csv"], ["worklist", "--format", "json"]],
    ids=lambda a: " ".join(a),
)
def test_listing_into_a_closed_pipe_ends_quietly_with_141(argv: list[str], tmp_path: Path) -> None:
    assert main(["migrate", "--storage-dir", str(tmp_path / "data")]) == 0
    proc = subprocess.Popen(
        [*DICOMNODE, *argv, "--storage-dir", str(tmp_path / "data")],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has already read what it wanted
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""  # no BrokenPipeError, no "Exception ignored"


def test_read_only_command_on_an_unmigrated_postgresql_database_creates_nothing(
    pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("DICOMNODE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DICOMNODE_DATABASE_URL", pg_url)
    for argv in (["results"], ["audit", "summary"], ["reanalyse", "--state", "failed"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no database at postgresql+psycopg://postgres@127.0.0.1:5432/dicomnode_test_" in err
        assert "(no dicomnode schema there); run `dicomnode serve` first or set" in err
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []  # nothing migrated
    finally:
        engine.dispose()
    # once migrated, the same command answers
    assert main(["migrate"]) == 0
    assert main(["audit", "summary"]) == 0


def test_read_only_command_on_an_unreachable_database_says_check_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import free_port

    url = f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/nothere"
    monkeypatch.setenv("DICOMNODE_DATABASE_URL", url)
    assert main(["results"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the database at postgresql+psycopg://postgres:***@127.0.0.1:" in err
    assert "check DICOMNODE_DATABASE_URL and that the database server runs" in err
    assert "secret" not in err and "Traceback" not in err
