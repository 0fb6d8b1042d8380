"""A send on a reused association keeps its answer (dicomnode.delivery.checkpoint).

pynetdicom pauses an association's own thread (the reactor) before each send and trusts a flag
the reactor left from its previous pause. The interleaving that loses an answer is forced here on
real loopback associations to a pynetdicom Storage SCP by delaying the two threads where the
scheduler can delay them: the reactor just after its checkpoint lets it go (it then polls the
DIMSE queue as a running reactor does), the sending thread before it reads its answer. With
pynetdicom's plain event that loses the second send's answer; with ours no send loses one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom.association import Association

from dicomnode.config import Destination
from dicomnode.delivery.checkpoint import ReactorCheckpoint
from dicomnode.delivery.pool import close_association
from dicomnode.delivery.sender import _associate
from tests.integration.test_delivery_pool import CALLING, CountingPACS

#: the reactor's delay after its checkpoint releases it, while pynetdicom's flag still says paused
REACTOR_LATE = 0.005
#: the sending thread's delay before it reads its answer: the reactor, polling, gets there first
SENDER_LATE = 0.1


def _object() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _delay_threads(assoc: Association) -> None:
    """Delay ``assoc``'s reactor after each release from its checkpoint (then let it poll the
    DIMSE queue for up to 50 ms, as it would while running) and the sender before it reads."""
    checkpoint = assoc._reactor_checkpoint
    wait = checkpoint.wait

    def late_wait(timeout: float | None = None) -> bool:
        released = wait(timeout)
        time.sleep(REACTOR_LATE)
        return released

    checkpoint.wait = late_wait  # type: ignore[method-assign]
    get_msg = assoc.dimse.get_msg

    def late_get_msg(block: bool = False) -> tuple[object, object]:
        if threading.current_thread() is assoc and not block:
            until = time.monotonic() + 0.05
            while assoc.dimse.msg_queue.empty() and time.monotonic() < until:
                time.sleep(0.0005)
        elif block:
            time.sleep(SENDER_LATE)
        return get_msg(block)

    assoc.dimse.get_msg = late_get_msg  # type: ignore[method-assign]


def _associate_to(pacs: CountingPACS) -> Association:
    dest = Destination("PACS", "127.0.0.1", pacs.port)
    assoc = _associate(
        dest, CALLING, [str(SecondaryCaptureImageStorage)], timeout=1, connect_timeout=5, deadline=10
    )
    assert isinstance(assoc, Association), assoc
    return assoc


@pytest.fixture
def pacs(tmp_path: Path) -> CountingPACS:
    pacs = CountingPACS(tmp_path / "pacs").start()
    yield pacs  # type: ignore[misc]
    pacs.stop()


def test_every_association_gets_the_pause_that_holds(pacs: CountingPACS) -> None:
    assoc = _associate_to(pacs)
    try:
        assert type(assoc._reactor_checkpoint) is ReactorCheckpoint
    finally:
        close_association(assoc)


def test_with_pynetdicom_s_event_the_second_send_loses_its_answer(pacs: CountingPACS) -> None:
    """The interleaving is real: pynetdicom's own event loses the answer (the reactor logs
    "Received unexpected C-STORE service message") and the send aborts after its timeout."""
    assoc = _associate_to(pacs)
    plain = threading.Event()
    plain.set()
    assoc._reactor_checkpoint = plain
    _delay_threads(assoc)
    try:
        first = assoc.send_c_store(_object())
        second = assoc.send_c_store(_object())
        assert first.Status == 0x0000
        assert "Status" not in second  # no answer: pynetdicom aborted the association
        assert not assoc.is_established
        assert len(pacs.wait_for(2, timeout=5)) == 2  # the PACS stored it and answered
    finally:
        close_association(assoc)


def test_with_ours_every_send_on_the_association_gets_its_answer(pacs: CountingPACS) -> None:
    assoc = _associate_to(pacs)
    _delay_threads(assoc)
    try:
        statuses = [assoc.send_c_store(_object()).get("Status") for _ in range(6)]
        assert statuses == [0x0000] * 6
        assert assoc.is_established
        assert pacs.accepted == 1
    finally:
        close_association(assoc)
