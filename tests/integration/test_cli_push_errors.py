"""`dicomnode push` to a peer that says no (issue 18.3): one line naming the cause and the fix, no
traceback, exit status 1; a usage mistake exits 2.

The peers are real pynetdicom Storage SCPs on loopback: one that accepts only a listed calling AE,
one that checks the called AE, one that answers every C-STORE with 0xA700, and a port where
nothing listens. The CLI runs in-process (:func:`dicomnode.cli.main`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from dicomnode.cli import main
from dicomnode.testing.phantoms import write_phantom_studies
from tests.support import free_port


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A folder with one phantom study (Part 10 files)."""
    write_phantom_studies(tmp_path / "in", 1, seed=5, positive_fraction=1.0)
    return tmp_path / "in"


def _scp(**options: Any) -> Iterator[int]:
    """Start a Storage SCP with AE attributes ``options`` (and ``status``: what C-STORE answers)."""
    status = options.pop("status", 0x0000)
    ae = AE(ae_title="PEER")
    ae.supported_contexts = AllStoragePresentationContexts
    for name, value in options.items():
        setattr(ae, name, value)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: status)]
    )
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


@pytest.fixture
def picky_peer() -> Iterator[int]:
    yield from _scp(require_calling_aet=["MODALITY1"])


@pytest.fixture
def strict_called_ae_peer() -> Iterator[int]:
    yield from _scp(require_called_aet=True)


@pytest.fixture
def full_peer() -> Iterator[int]:
    yield from _scp(status=0xA700)


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_push_refused_for_our_calling_ae_says_which_ae_to_allow(
    study: Path, picky_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", str(study), "--port", str(picky_peer), "--called-ae", "PEER"]) == 1
    assert _one_line(capsys.readouterr().err) == (
        f"dicomnode push: PEER@127.0.0.1:{picky_peer} refused the association: Calling AE title not "
        "recognised (Rejected Permanent, Source: Service User); allow our calling AE 'DICOMNODE-SCU' there "
        "(DICOMNODE_ALLOWED_CALLING_AES on a dicomnode), or send with an allowed --calling-ae"
    )
    # and with the allowed calling AE the same push goes through
    args = ["push", str(study), "--port", str(picky_peer), "--called-ae", "PEER", "--calling-ae", "MODALITY1"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("stored")


def test_push_refused_for_the_called_ae_says_to_fix_called_ae(
    study: Path, strict_called_ae_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["push", str(study), "--port", str(strict_called_ae_peer), "--called-ae", "WRONG"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "refused the association: Called AE title not recognised" in line
    assert line.endswith("set --called-ae to the peer's AE title (DICOMNODE_AE_TITLE on a dicomnode)")


def test_push_to_a_port_nobody_listens_on_says_so(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["push", str(study), "--port", str(port)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"dicomnode push: cannot connect to DICOMNODE@127.0.0.1:{port} (")
    assert "Connection refused" in line and line.endswith("check --host and --port")


def test_push_with_failure_statuses_names_each_status_and_exits_1(
    study: Path, full_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(p for p in study.rglob("*") if p.is_file())
    assert main(["push", str(study), "--port", str(full_peer)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:-1] == [f"{f}: 0xA700 Failure: Refused: Out of Resources" for f in files]
    assert lines[-1] == f"0/{len(files)} stored"
    assert _one_line(captured.err) == (
        f"dicomnode push: {len(files)} of {len(files)} files not stored by DICOMNODE@127.0.0.1:{full_peer} "
        "(statuses above); its log says why"
    )


def test_push_skips_files_that_are_not_dicom_and_sends_the_rest(
    study: Path, picky_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    (study / "README.txt").write_text("not an image\n")
    args = ["push", str(study), "--port", str(picky_peer), "--called-ae", "PEER", "--calling-ae", "MODALITY1"]
    assert main(args) == 1  # one of the files given was not stored
    captured = capsys.readouterr()
    assert f"{study / 'README.txt'}: skipped, not a DICOM Part 10 file" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("what", "needle"),
    [("missing", "no such file or folder"), ("text", "no DICOM files to send in")],
)
def test_push_of_nothing_sendable_is_a_usage_error(
    what: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    if what == "text":
        path.write_text("hello\n")
    assert main(["push", str(path), "--port", str(free_port())]) == 2
    assert needle in capsys.readouterr().err
