"""Small helpers shared by the network tests: free ports, waiting, C-ECHO, stopping subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomnode.config import Settings

if TYPE_CHECKING:
    import pydicom

    from dicomnode.store.db import Store
    from dicomnode.store.models import Analysis
    from worker.pipeline import Pipeline


def stop_process(proc: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoggedProcess:
    """A subprocess with its output (stdout and stderr) in a log file: the one way the tests start
    the node, Celery workers, Flower and Orthanc as processes."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path, *, append: bool = False
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab" if append else "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """True while it runs; fails the test with the end of its log once it has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[:4]} exited {self.proc.returncode}: {self.log()[-3000:]}")
        return True

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; raise with the end of the log if the process exits first or
        ``timeout`` seconds pass (the process is stopped then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what}: exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{what}: not ready after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, grace: float = 30) -> int:
        """SIGTERM (SIGKILL after ``grace`` s); returns the exit status. Safe to call twice."""
        stop_process(self.proc, grace)
        if not self._log.closed:
            self._log.close()
        return int(self.proc.returncode)


def write_settings_toml(path: Path, settings: Settings) -> Path:
    """``settings`` as a TOML settings file (``[dicomnode]`` table) for ``dicomnode --config``:
    the values :meth:`Settings.to_env` gives, so the file loads back to the same settings."""
    prefix = len("DICOMNODE_")
    values = {k[prefix:].lower(): v for k, v in settings.to_env().items()}
    lines = [f"{k} = " + json.dumps(v) for k, v in values.items()]  # a JSON string is a TOML string
    path.write_text("[dicomnode]\n" + "\n".join(lines) + "\n")
    return path


def artefacts_dir() -> Path:
    """Where a test leaves a table for people to read: ``$DICOMNODE_TEST_ARTEFACTS``, default
    tests/artefacts/ (created)."""
    d = Path(os.environ.get("DICOMNODE_TEST_ARTEFACTS") or Path(__file__).resolve().parent / "artefacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on loopback ``port`` now."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(pred: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.1) -> None:
    """Poll ``pred`` until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def echo_ok(
    port: int, *, called_ae: str = "DICOMNODE", calling_ae: str = "ECHOSCU", timeout: float = 5
) -> bool:
    """True if a C-ECHO to the node on ``port`` gets Success (the node still serves)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0x0000)
    finally:
        if assoc.is_established:
            assoc.release()


def fingerprint_of(store: Any, sop_instance_uid: str, timeout: float = 15) -> str:
    """The SHA-256 the node recorded for an instance, once its fingerprint thread has taken it
    (after a quiet second following the last C-STORE)."""
    from dicomnode.store.queries import instance_by_sop_uid

    def taken() -> bool:
        row = instance_by_sop_uid(store, sop_instance_uid)
        return row is not None and row.sha256 is not None

    wait_until(taken, timeout, f"the fingerprint of {sop_instance_uid}")
    row = instance_by_sop_uid(store, sop_instance_uid)
    assert row is not None and row.sha256 is not None
    return str(row.sha256)


def run_cli(*argv: str) -> tuple[int, str]:
    """``dicomnode ARGV`` in this process: its exit status and what it printed to stdout."""
    import io
    from contextlib import redirect_stdout

    from dicomnode.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def analyses_of(store: Store, study_uid: str) -> list[Analysis]:
    """Every analysis of a study, oldest first."""
    from sqlalchemy import select

    from dicomnode.store.models import Analysis, Study

    with store.session() as s:
        return list(
            s.scalars(select(Analysis).join(Study).where(Study.study_uid == study_uid).order_by(Analysis.id))
        )


def store_received(
    store: Store,
    instances_dir: Path,
    ds: pydicom.Dataset,
    data: bytes,
    *,
    accession_number: str | None = None,
) -> Path:
    """Keep ``data`` (the Part 10 bytes of ``ds``) where the SCP would and record its row as the
    SCP does (calling AE MODALITY); the file's path."""
    from dicomnode.storage import instance_path, write_atomic
    from dicomnode.store.records import InstanceRecord, record_instance

    path = instance_path(instances_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    write_atomic(path, data)
    record_instance(
        store,
        InstanceRecord(
            study_uid=ds.StudyInstanceUID,
            series_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
            modality=ds.Modality,
            path=str(path),
            size_bytes=path.stat().st_size,
            sha256=None,
            calling_ae="MODALITY",
            accession_number=accession_number,
        ),
    )
    return path


def store_complete_study(p: Pipeline, *datasets: pydicom.Dataset) -> str:
    """Store ``datasets`` as the SCP would (file in place, row in SQL), mark their study complete
    and return its Study Instance UID: a study ready for :meth:`Pipeline.analyse_study`."""
    import io

    from dicomnode.store.models import StudyState
    from dicomnode.store.records import set_study_state

    for ds in datasets:
        encoded = io.BytesIO()
        ds.save_as(encoded, enforce_file_format=True)
        store_received(p.store, p.settings.instances_dir, ds, encoded.getvalue())
    study_uid = str(datasets[0].StudyInstanceUID)
    set_study_state(p.store, study_uid, StudyState.COMPLETE, "test")
    return study_uid
