"""Kept-open delivery associations (dicomnode.delivery.pool): one per destination, reused.

Against real SCPs on loopback: a pynetdicom Storage SCP that counts the associations it accepts
(and can end them, or drop the next C-STORE), and DCMTK's storescp for a peer killed and
restarted. Results go out as the files they were read from, never encoded again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, evt

from dicomnode.config import Destination, Settings, parse_destinations
from dicomnode.delivery.pool import POOL
from dicomnode.delivery.push import push_files
from dicomnode.delivery.sender import abort_all, send_once
from dicomnode.model.card import ModelCard
from dicomnode.model.preprocess import PreprocessConfig
from dicomnode.net.contexts import add_storage_contexts
from dicomnode.node import Node
from dicomnode.results import Finding, build_heatmap_sc, build_sr, result_uids
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import make_phantom, write_phantom_studies
from tests.integration.test_receive_access import _self_signed
from tests.support import LoggedProcess, free_port, wait_until
from tests.tiny_model import write_tiny_model

CALLING = "DICOMNODE"


class CountingPACS(Receiver):
    """The test PACS, counting the associations it accepted and the ones that ended; it can end
    them itself, drop the association at the next C-STORE, and listen on TLS."""

    def __init__(self, out_dir: Path, *, port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(out_dir, ae_title="PACS", port=port)
        self.ssl_context = ssl_context
        self.accepted = 0
        self.ended = 0
        self.drop_next_store = False

    def start(self) -> CountingPACS:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        add_storage_contexts(ae)
        self._server = ae.start_server(
            (self.host, self._port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[
                (evt.EVT_C_STORE, self._store_or_drop),
                (evt.EVT_ACCEPTED, self._count_accepted),
                (evt.EVT_RELEASED, self._count_ended),
                (evt.EVT_ABORTED, self._count_ended),
            ],
        )
        return self

    def _store_or_drop(self, event: evt.Event) -> int:
        if self.drop_next_store:
            self.drop_next_store = False
            event.assoc.abort()
            return 0xA700
        return self._on_store(event)

    def _count_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self.accepted += 1

    def _count_ended(self, event: evt.Event) -> None:
        with self._lock:
            self.ended += 1

    def open_now(self) -> int:
        return len(self._server.active_associations)

    def end_all(self, how: str) -> None:
        """Abort, or release from our side, every association open now."""
        for assoc in self._server.active_associations:
            if how == "abort":
                assoc.abort()
            else:  # the requestor's reactor answers from its own thread: don't wait here
                threading.Thread(target=assoc.release, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            for assoc in self._server.active_associations:
                assoc.abort()
        super().stop()


@pytest.fixture(autouse=True)
def _empty_pool() -> Iterator[None]:
    POOL.close()
    yield
    POOL.close()


@pytest.fixture
def counting_pacs(tmp_path: Path) -> Iterator[CountingPACS]:
    pacs = CountingPACS(tmp_path / "pacs").start()
    yield pacs
    pacs.stop()


_CARD = ModelCard(
    name="pneumonia-test",
    version="1.0",
    threshold=0.5,
    device_uid=pydicom.uid.generate_uid(entropy_srcs=["pool-test"]),
    preprocess=PreprocessConfig(size=64).to_dict(),
)


def _results(tmp_path: Path, seed: int) -> list[Dataset]:
    """A study's SR and heatmap SC, written as the pipeline writes them and read back (as a
    scheduled round reads them)."""
    source = make_phantom(np.random.default_rng(seed), True, size=64)
    uids = result_uids(str(source.StudyInstanceUID), _CARD.version)
    finding = Finding(0.8, _CARD.threshold)
    out = []
    for ds in (
        build_sr([source], finding, _CARD, uids=uids),
        build_heatmap_sc(source, np.full((8, 8), 0.5, np.float32), finding, _CARD, uids=uids),
    ):
        path = tmp_path / "results" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        out.append(pydicom.dcmread(path))
    return out


def _send(datasets: list[Dataset], dest: Destination, keep_open: float, **kw: float) -> list[bool]:
    return [r.success for r in send_once(datasets, dest, calling_ae=CALLING, keep_open=keep_open, **kw)]


def _dest(pacs: Receiver) -> Destination:
    return Destination("PACS", "127.0.0.1", pacs.port)


def test_studies_share_one_kept_open_association_and_go_as_their_files(
    tmp_path: Path, counting_pacs: CountingPACS
) -> None:
    studies = [_results(tmp_path, seed) for seed in range(4)]
    # a change in memory that the file does not have: what arrives shows which was sent
    studies[0][0].SeriesDescription = "CHANGED IN MEMORY ONLY"
    for study in studies:
        assert _send(study, _dest(counting_pacs), keep_open=30) == [True, True]
    received = counting_pacs.wait_for(8, 10)
    assert sorted(r.sop_instance_uid for r in received) == sorted(
        str(ds.SOPInstanceUID) for study in studies for ds in study
    )
    assert counting_pacs.accepted == 1 and counting_pacs.open_now() == 1
    sr = next(r for r in received if r.sop_instance_uid == str(studies[0][0].SOPInstanceUID))
    assert pydicom.dcmread(sr.path).SeriesDescription != "CHANGED IN MEMORY ONLY"


def test_idle_association_is_released_after_the_setting(tmp_path: Path, counting_pacs: CountingPACS) -> None:
    study = _results(tmp_path, 1)
    assert _send(study, _dest(counting_pacs), keep_open=1) == [True, True]
    assert counting_pacs.open_now() == 1 and counting_pacs.ended == 0  # kept open
    wait_until(
        lambda: counting_pacs.ended == 1 and counting_pacs.open_now() == 0,
        10,
        "the idle association released",
    )
    assert len(POOL) == 0
    assert _send(_results(tmp_path, 2), _dest(counting_pacs), keep_open=1) == [True, True]
    assert counting_pacs.accepted == 2  # a new one after the release


def test_setting_zero_opens_and_releases_an_association_per_round(
    tmp_path: Path, counting_pacs: CountingPACS
) -> None:
    for seed in range(3):
        assert _send(_results(tmp_path, seed), _dest(counting_pacs), keep_open=0) == [True, True]
        wait_until(lambda: counting_pacs.open_now() == 0, 5, "the round's association released")
    assert counting_pacs.accepted == 3 and len(POOL) == 0


@pytest.mark.parametrize("how", ["abort", "release"])
def test_peer_ending_the_association_between_studies_loses_nothing(
    tmp_path: Path, counting_pacs: CountingPACS, how: str
) -> None:
    dest = _dest(counting_pacs)
    assert _send(_results(tmp_path, 1), dest, keep_open=30) == [True, True]
    counting_pacs.end_all(how)
    wait_until(lambda: counting_pacs.ended == 1, 10, f"the PACS's {how} of the idle association")
    second = _results(tmp_path, 2)
    results = send_once(second, dest, calling_ae=CALLING, keep_open=30)
    assert [(r.success, r.attempt) for r in results] == [(True, 1), (True, 1)], results
    assert len(counting_pacs.wait_for(4, 10)) == 4 and counting_pacs.accepted == 2


def test_association_dropped_at_reuse_is_sent_again_on_a_fresh_one(
    tmp_path: Path, counting_pacs: CountingPACS
) -> None:
    dest = _dest(counting_pacs)
    assert _send(_results(tmp_path, 1), dest, keep_open=30) == [True, True]
    counting_pacs.drop_next_store = True  # alive at check-out, gone at the first C-STORE
    second = _results(tmp_path, 2)
    results = send_once(second, dest, calling_ae=CALLING, keep_open=30)
    assert [(r.success, r.status, r.attempt) for r in results] == [(True, 0, 1), (True, 0, 1)], results
    assert len(counting_pacs.wait_for(4, 10)) == 4 and counting_pacs.accepted == 2
    # without a kept association the same drop is the attempt's failure, retried by the policy
    counting_pacs.drop_next_store = True
    third = _results(tmp_path, 3)
    assert not any(_send(third, dest, keep_open=0))


def test_object_of_a_class_the_kept_association_lacks_gets_a_fresh_one(
    tmp_path: Path, counting_pacs: CountingPACS
) -> None:
    dest = _dest(counting_pacs)
    assert _send(_results(tmp_path, 1), dest, keep_open=30) == [True, True]
    image = write_phantom_studies(tmp_path / "dx", 1, seed=5, size=64)[0].paths[0]
    assert _send([pydicom.dcmread(image)], dest, keep_open=30) == [True]  # DX: not asked for
    assert counting_pacs.accepted == 2
    assert _send(_results(tmp_path, 2), dest, keep_open=30) == [True, True]  # the newer one, kept
    assert counting_pacs.accepted == 2 and len(counting_pacs.wait_for(5, 10)) == 5


def test_reused_association_keeps_the_attempt_deadline(tmp_path: Path) -> None:
    slow = threading.Event()

    class SlowPACS(CountingPACS):
        def _on_store(self, event: evt.Event) -> int:
            if slow.is_set():
                time.sleep(3)
            return super()._on_store(event)

    pacs = SlowPACS(tmp_path / "pacs").start()
    try:
        assert _send(_results(tmp_path, 1), _dest(pacs), keep_open=30) == [True, True]
        slow.set()
        t0 = time.monotonic()
        results = send_once(_results(tmp_path, 2), _dest(pacs), calling_ae=CALLING, keep_open=30, deadline=1)
        assert time.monotonic() - t0 < 2.5
        assert not any(r.success for r in results)
        assert all("attempt deadline of 1 s passed" in (r.error or "") for r in results), results
        assert len(POOL) == 0  # the aborted association is not kept
    finally:
        slow.clear()
        pacs.stop()


def test_abort_all_releases_kept_associations(tmp_path: Path, counting_pacs: CountingPACS) -> None:
    assert _send(_results(tmp_path, 1), _dest(counting_pacs), keep_open=300) == [True, True]
    assert abort_all() == 1
    wait_until(lambda: counting_pacs.ended == 1, 5, "the kept association released at shutdown")
    assert len(POOL) == 0


def test_forked_child_never_uses_its_parents_association(tmp_path: Path, counting_pacs: CountingPACS) -> None:
    dest = _dest(counting_pacs)
    assert _send(_results(tmp_path, 1), dest, keep_open=30) == [True, True]
    child_study = _results(tmp_path, 2)
    pid = os.fork()
    if pid == 0:  # the child: an empty pool, its own association; never returns to pytest
        code = 1
        try:
            code = 0 if len(POOL) == 0 and _send(child_study, dest, keep_open=0) == [True, True] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counting_pacs.accepted == 2  # the child's own
    assert _send(_results(tmp_path, 3), dest, keep_open=30) == [True, True]  # the parent's, still good
    assert counting_pacs.accepted == 2 and len(counting_pacs.wait_for(6, 10)) == 6


def test_tls_destination_reuses_its_association(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    pacs = CountingPACS(tmp_path / "pacs", ssl_context=server).start()
    try:
        (dest,) = parse_destinations(f"PACS@127.0.0.1:{pacs.port}?ca={cert}&name=localhost")
        for seed in range(3):
            assert _send(_results(tmp_path, seed), dest, keep_open=30) == [True, True]
        assert pacs.accepted == 1 and len(pacs.wait_for(6, 10)) == 6
    finally:
        pacs.stop()


def _storescp(port: int, out: Path, log: Path) -> LoggedProcess:
    binary = shutil.which("storescp")
    if binary is None:
        pytest.skip("DCMTK storescp not installed")
    out.mkdir(exist_ok=True)
    proc = LoggedProcess(
        [binary, "-aet", "PACS", "-od", str(out), str(port)], {"PATH": "/usr/bin:/bin"}, log, cwd=out
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    proc.wait_ready(listening, 20, "storescp")
    return proc


@pytest.mark.process
def test_peer_killed_and_restarted_on_the_same_port_gets_the_next_study(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "storescp"
    dest = Destination("PACS", "127.0.0.1", port)
    proc = _storescp(port, out, tmp_path / "storescp-1.log")
    try:
        assert _send(_results(tmp_path, 1), dest, keep_open=30) == [True, True]
        os.kill(proc.proc.pid, signal.SIGKILL)  # no A-ABORT, no release: the connection just closes
        proc.proc.wait(10)
    finally:
        proc.stop()
    proc = _storescp(port, out, tmp_path / "storescp-2.log")
    try:
        assert _send(_results(tmp_path, 2), dest, keep_open=30) == [True, True]
    finally:
        proc.stop()
    assert len(list(out.iterdir())) == 4


def test_node_delivers_its_studies_over_one_association(
    tmp_path: Path, counting_pacs: CountingPACS, node_factory: Callable[[Settings], Node]
) -> None:
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.3,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        destinations=(_dest(counting_pacs),),
        delivery_attempts=2,
        delivery_backoff_seconds=0.2,
        delivery_idle_release_seconds=30,
        fsync=False,
    )
    node = node_factory(settings)
    studies = write_phantom_studies(tmp_path / "in", 3, seed=7, size=64)
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        for study in studies:  # one after another, as a modality sends them
            assert {r.status for r in push_files(study.paths, "127.0.0.1", node.port)} == {0}
            wait_until(
                lambda s=study: study_state(store, s.study_uid) is StudyState.DELIVERED,  # type: ignore[misc]
                60,
                "study delivered",
            )
    finally:
        store.dispose()
    assert len(counting_pacs.wait_for(6, 10)) == 6
    assert counting_pacs.accepted == 1
