"""Urgent-finding notifications: a real HTTP receiver on loopback, a real node, real studies.

The node runs the tiny model (tests/tiny_model.py, built in milliseconds and deterministic): with
its card's threshold 0.5 the phantoms of seed 21 score both above it (urgent) and below (routine).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from hl7apy.parser import parse_message
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.hook import EVENT
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Notification, Study
from dicomnode.store.notifications import study_notifications
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.support import free_port, wait_until
from tests.tiny_model import tiny_card, write_tiny_model

TOKEN = "Bearer test-token"


class HookReceiver:
    """An HTTP server that answers POSTs with the statuses queued in ``answers`` (then 200) and
    keeps each request's body and Authorization header."""

    def __init__(self, answers: list[int], port: int = 0) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[dict, str | None]] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    receiver.raw.append(body)
                    receiver.requests.append((json.loads(body), self.headers.get("Authorization")))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/urgent?site=test"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def hook() -> Iterator[HookReceiver]:
    r = HookReceiver([500, 500])
    yield r
    r.close()


def _priorities(store: Store) -> dict[str, str | None]:
    with store.session() as s:
        rows = s.execute(
            select(Study.study_uid, Analysis.priority).join(Analysis, Analysis.study_id == Study.id)
        )
        return {uid: p for uid, p in rows}


def _events(store: Store, kind: str, study_uid: str) -> list[dict]:
    with store.session() as s:
        return [
            dict(d or {})
            for d in s.scalars(select(Event.detail).where(Event.kind == kind, Event.study_uid == study_uid))
        ]


def test_urgent_study_is_posted_after_two_http_500s_and_a_routine_one_never(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
    hook: HookReceiver,
) -> None:
    settings = make_settings(
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        urgent_hook_urls=(hook.url,),
        urgent_hook_auth_header=f"Authorization: {TOKEN}",
        reconcile_interval_seconds=0.2,
    )
    node = node_factory(settings)
    studies = write_phantom_studies(tmp_path / "in", 6, seed=21, positive_fraction=0.5)
    for st in studies:
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
    # the first analysis starts the decoding child: on a loaded machine, a minute or more
    assert len(pacs.wait_for(2 * len(studies), timeout=300)) == 2 * len(studies)
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(lambda: len(_priorities(store)) == len(studies), 30, "every analysis recorded")
        priorities = _priorities(store)
        urgent = {uid for uid, p in priorities.items() if p == "urgent"}
        routine = {uid for uid, p in priorities.items() if p == "routine"}
        assert urgent and routine, (
            f"seed 21 should give both priorities with the tiny model, got {priorities}"
        )

        def delivered() -> bool:
            rows = [n for uid in urgent for n in study_notifications(store, uid)]
            return len(rows) == len(urgent) and all(n.state == "delivered" for n in rows)

        wait_until(delivered, 30, "every urgent notification delivered")
        posted = {body["study_instance_uid"] for body, _ in hook.requests}
        assert posted == urgent  # never a routine study
        # the hook answers its first two POSTs 500, whichever notifications they carry (studies
        # analysed in one batch post at nearly the same time): two retries in all, each attempt an
        # event, every notification ending with its 200
        rows = [n for uid in urgent for n in study_notifications(store, uid)]
        assert sum(n.attempts for n in rows) == len(urgent) + 2
        retried = [n for n in rows if n.attempts > 1]
        assert retried and all(n.last_error and "HTTP 500" in n.last_error for n in retried)
        statuses = []
        for uid in urgent:
            attempts = _events(store, "notification.attempt", uid)
            codes = [e["http_status"] for e in attempts]
            assert codes[-1] == 200 and set(codes[:-1]) <= {500}, (uid, codes)
            assert all(
                e["target"].endswith("/hooks/urgent") and "site=test" not in e["target"] for e in attempts
            )
            assert len(_events(store, "notification.delivered", uid)) == 1
            statuses += codes
        assert sorted(statuses) == [200] * len(urgent) + [500, 500]
        for uid in routine:
            assert study_notifications(store, uid) == []

        body, auth = hook.requests[-1]
        assert auth == TOKEN
        assert body["event"] == EVENT and body["priority"] == "urgent"
        assert body["node_ae_title"] == settings.ae_title
        assert body["score"] >= body["threshold"] and body["model_version"]
        assert body["analysed_at"].endswith("Z") and body["sr_sop_instance_uid"]
        assert isinstance(body["notification_id"], int)
        # no patient name or ID in any body
        for st in studies:
            for raw in hook.raw:
                assert st.patient_id.encode() not in raw
                assert b"PHANTOM^" not in raw
    finally:
        store.dispose()


def test_hook_down_for_the_whole_window_is_recorded_failed_and_dicom_delivery_goes_on(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    settings = make_settings(
        model=write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.0)),  # every study urgent
        urgent_hook_urls=(nobody,),
        urgent_hook_window_seconds=1.0,
        reconcile_interval_seconds=0.2,
    )
    node = node_factory(settings)
    st = write_phantom_studies(tmp_path / "in", 1, seed=21)[0]
    assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
    assert len(pacs.wait_for(2, timeout=300)) == 2  # the results went out all the same
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(lambda: _priorities(store).get(st.study_uid) is not None, 30, "the analysis")
        assert _priorities(store)[st.study_uid] == "urgent"

        def failed() -> bool:
            rows = study_notifications(store, st.study_uid)
            return len(rows) == 1 and rows[0].state == "failed"

        wait_until(failed, 30, "the notification recorded failed")
        (n,) = study_notifications(store, st.study_uid)
        assert n.attempts >= 2 and n.delivered_at is None and n.failed_at is not None
        assert n.last_error and "refused" in n.last_error.lower()
        assert "DICOMNODE_URGENT_HOOK_WINDOW_SECONDS" in n.last_error
        assert len(_events(store, "notification.attempt", st.study_uid)) == n.attempts
        (gave_up,) = _events(store, "notification.failed", st.study_uid)
        assert gave_up["attempt"] == n.attempts
        with store.session() as s:
            assert s.scalar(select(Study.state).where(Study.study_uid == st.study_uid)) == "delivered"
            assert s.scalar(select(Notification.url)) == nobody
    finally:
        store.dispose()


def test_a_restarted_node_sends_the_notification_its_predecessor_could_not(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    port = free_port()
    settings = make_settings(
        model=write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.0)),  # every study urgent
        urgent_hook_urls=(f"http://127.0.0.1:{port}/hook",),
        reconcile_interval_seconds=0.2,
        delivery_backoff_seconds=1.0,
    )
    first = node_factory(settings)
    st = write_phantom_studies(tmp_path / "in", 1, seed=23)[0]
    assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", first.port))
    assert len(pacs.wait_for(2, timeout=300)) == 2
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: [n.attempts for n in study_notifications(store, st.study_uid)] >= [1], 30, "an attempt"
        )
        first.stop()  # nobody listened: the notification is pending when the node goes
        (n,) = study_notifications(store, st.study_uid)
        assert n.state == "pending" and n.delivered_at is None
        hook = HookReceiver([], port=port)
        try:
            node_factory(settings)  # same storage and database: the reconciler finds it due
            wait_until(
                lambda: study_notifications(store, st.study_uid)[0].state == "delivered",
                30,
                "sent after the restart",
            )
            assert [body["study_instance_uid"] for body, _ in hook.requests] == [st.study_uid]
        finally:
            hook.close()
    finally:
        store.dispose()


class MllpReceiver:
    """A RIS on loopback taking HL7 over MLLP: it acknowledges with the codes queued in
    ``answers`` (then AA) and keeps each message."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.messages: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"mllp://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                text = data.split(b"\x1c\x0d")[0].lstrip(b"\x0b").decode()
                self.messages.append(text)
                control = parse_message(text, find_groups=False).msh.msh_10.value
                code = self.answers.pop(0) if self.answers else "AA"
                ack = f"MSH|^~\\&|RIS||DICOMNODE||20261205||ACK^R01^ACK|A{len(self.messages)}|P|2.5\rMSA|{code}|{control}|test\r"
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_mllp_url_gets_an_hl7_oru_r01_without_patient_identity_retried_after_an_ae(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    ris = MllpReceiver(["AE"])
    try:
        settings = make_settings(
            model=write_tiny_model(tmp_path / "tiny.onnx", tiny_card(threshold=0.0)),  # every study urgent
            urgent_hook_urls=(ris.url,),
            reconcile_interval_seconds=0.2,
        )
        node = node_factory(settings)
        st = write_phantom_studies(tmp_path / "in", 1, seed=22)[0]
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
        assert len(pacs.wait_for(2, timeout=300)) == 2
        store = Store(settings.effective_database_url, run_migrations=False)
        try:

            def delivered() -> bool:
                rows = study_notifications(store, st.study_uid)
                return len(rows) == 1 and rows[0].state == "delivered"

            wait_until(delivered, 30, "the HL7 notification acknowledged")
            (n,) = study_notifications(store, st.study_uid)
            assert n.attempts == 2 and n.last_error == "HL7 AE: test"  # AE, then AA
        finally:
            store.dispose()
        assert len(ris.messages) == 2
        msg = parse_message(ris.messages[-1])
        assert msg.msh.msh_9.value == "ORU^R01^ORU_R01" and msg.msh.msh_10.value == f"DN{n.id}"
        assert msg.msh.msh_4.value == settings.ae_title
        assert "PID" not in [s.name for s in msg.children] and "\rPID|" not in ris.messages[-1]
        order = msg.oru_r01_patient_result.oru_r01_order_observation
        assert order.obr.obr_3.value == pydicom.dcmread(st.paths[0]).AccessionNumber
        values = {o.obx.obx_3.obx_3_1.value: o.obx.obx_5.value for o in order.oru_r01_observation}
        assert values["STUDY-UID"] == st.study_uid and values["AI-PRIORITY"] == "urgent"
        assert 0.0 <= float(values["AI-SCORE"]) <= 1.0
        for raw in ris.messages:
            assert st.patient_id not in raw and "PHANTOM^" not in raw
    finally:
        ris.close()
