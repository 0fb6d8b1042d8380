"""Pixel bombs against the real pipeline and its decoding process (issue 13 item 3).

A header claiming 65535 x 65535 is refused from the header; an image the header allows but that
needs more memory than DICOMNODE_DECODE_MEMORY_BYTES fails in the decoding child, the study is
failed with a reason naming the setting, and the next study is analysed by a fresh child; a
decoder that crashes or hangs costs its child, never the worker or the node. Sent over DICOM to an
embedded node (the analysis runs on a thread of the node process), the node keeps serving and its
memory does not grow by what the bomb decodes to.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.model import PneumoniaModel, PreprocessConfig, preprocess
from dicomnode.model.decode import DecodeFailed, DecodeLimits, Decoder, _ping
from dicomnode.node import Node
from dicomnode.results.render import MAX_SIDE
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.hostile import claimed_size_pixel_bomb, deflate_bomb_bytes, rle_pixel_bomb
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import make_phantom
from tests.support import LoggedProcess, echo_ok, store_complete_study, wait_until
from tests.tiny_model import tiny_card, write_tiny_model
from worker.pipeline import Pipeline
from worker.runners import make_runner

pytestmark = pytest.mark.process  # each pipeline here decodes in a child process

MiB = 1 << 20


def _pipeline(tmp_path: Path, **changes: object) -> Pipeline:
    settings = Settings(storage_dir=tmp_path / "node", model=tmp_path / "tiny.onnx").with_overrides(**changes)
    if not settings.model_path.exists():
        write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    return Pipeline(settings, Store(settings.effective_database_url), PneumoniaModel(settings.model_path))


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def _vm_hwm() -> int:
    """Peak resident memory of this process so far, bytes (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_a_decode_over_the_memory_cap_fails_the_study_and_the_next_study_succeeds(tmp_path: Path) -> None:
    p = _pipeline(tmp_path, decode_memory_bytes=256 * MiB)
    try:
        # 6000 x 6000: under DICOMNODE_MAX_IMAGE_PIXELS, but ~900 MiB to preprocess (x1600 its size)
        bomb_uid = store_complete_study(p, rle_pixel_bomb(6000, 6000))
        hwm = _vm_hwm()

        outcome = p.analyse_study(bomb_uid)

        assert outcome.state is StudyState.FAILED
        assert study_state(p.store, bomb_uid) is StudyState.FAILED
        assert outcome.reason is not None
        assert "image too large to decode within 256 MiB (DICOMNODE_DECODE_MEMORY_BYTES)" in outcome.reason
        analysis = latest_analysis(p.store, bomb_uid)
        assert analysis is not None and analysis.error == outcome.reason and analysis.finished_at
        assert _vm_hwm() - hwm < 100 * MiB  # the worker never held the decoded image

        good = make_phantom(np.random.default_rng(4), True, size=256)
        good_uid = store_complete_study(p, good)
        after = p.analyse_study(good_uid)
        assert after.score is not None and after.state is not StudyState.FAILED
        expected, _ = p.model.predict(preprocess(good, p.model.preprocess_config)[None])
        assert after.score == pytest.approx(float(expected[0]), abs=1e-6)
    finally:
        p.close()


def test_a_decoder_that_aborts_on_a_65535_squared_header_costs_only_its_child(tmp_path: Path) -> None:
    # no header check: the RLE decoder sizes its output from Rows x Columns (4 GiB), its allocation
    # fails under the cap, and pylibjpeg-rle aborts the process (today's main: the worker or node)
    p = _pipeline(tmp_path, max_image_pixels=0, decode_memory_bytes=256 * MiB)
    try:
        bomb_uid = store_complete_study(p, claimed_size_pixel_bomb())
        outcome = p.analyse_study(bomb_uid)
        assert outcome.state is StudyState.FAILED and outcome.reason is not None
        # SIGABRT from pylibjpeg-rle; a decoder that raises MemoryError instead is reported as such
        assert re.search(r"killed by SIGABRT while decoding|within 256 MiB", outcome.reason), outcome.reason
        good_uid = store_complete_study(p, make_phantom(np.random.default_rng(5), False, size=256))
        assert p.analyse_study(good_uid).score is not None
    finally:
        p.close()


def _crash(path: str) -> pydicom.Dataset:
    os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder bug on hostile input does
    raise AssertionError("unreachable")


def _hang(path: str) -> pydicom.Dataset:
    time.sleep(60)
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("reader", "limits", "message"),
    [
        # the forkserver reports the signal, or, when the child's pipe closes before its status
        # is read, status 255 (multiprocessing's "unknown"): either way the child alone is gone
        (_crash, DecodeLimits(), r"(killed by SIGSEGV|exited with status 255) while decoding"),
        (_hang, DecodeLimits(timeout_seconds=1.0), r"longer than 1 s \(DICOMNODE_DECODE_TIMEOUT_SECONDS\)"),
    ],
    ids=["crash", "hang"],
)
def test_a_decoder_that_crashes_or_hangs_costs_its_child_only(
    tmp_path: Path, reader: object, limits: DecodeLimits, message: str
) -> None:
    path = _write(make_phantom(np.random.default_rng(2), False, size=128), tmp_path / "x.dcm")
    config = PreprocessConfig(size=64)
    bad = Decoder(limits, reader=reader)  # type: ignore[arg-type]
    good = Decoder(limits)
    try:
        first = bad._call(_ping)
        with pytest.raises(DecodeFailed, match=message):
            bad.tensor(path, config, MAX_SIDE)
        assert bad._call(_ping) != first  # a fresh child took over
        assert np.array_equal(good.tensor(path, config, MAX_SIDE), preprocess(pydicom.dcmread(path), config))
    finally:
        bad.close()
        good.close()


def test_a_child_killed_while_idle_is_replaced_for_the_next_decode(tmp_path: Path) -> None:
    path = _write(make_phantom(np.random.default_rng(2), False, size=128), tmp_path / "x.dcm")
    config = PreprocessConfig(size=64)
    decoder = Decoder(DecodeLimits())
    try:
        pid = decoder._call(_ping)
        os.kill(pid, signal.SIGKILL)  # the system's OOM killer, an operator
        # the pool notices (its manager thread watches the child) before the next decode comes
        wait_until(lambda: bool(getattr(decoder._executor, "_broken", False)), 10, "the pool to notice")
        assert np.array_equal(
            decoder.tensor(path, config, MAX_SIDE), preprocess(pydicom.dcmread(path), config)
        )
    finally:
        decoder.close()


def test_the_child_gives_the_same_tensor_and_display_as_this_process(tmp_path: Path) -> None:
    path = _write(make_phantom(np.random.default_rng(9), True, size=1200), tmp_path / "x.dcm")
    config = PreprocessConfig()
    child, here = Decoder(DecodeLimits()), Decoder(DecodeLimits(memory_bytes=0))
    try:
        assert np.array_equal(child.tensor(path, config, MAX_SIDE), here.tensor(path, config, MAX_SIDE))
        a, b = child.display(path, config, MAX_SIDE), here.display(path, config, MAX_SIDE)
        assert a.source_shape == b.source_shape == (1200, 1200)
        assert a.pixels.shape == (MAX_SIDE, MAX_SIDE) and np.array_equal(a.pixels, b.pixels)
    finally:
        child.close()


def test_a_deflated_instance_is_read_in_the_child_and_a_deflate_bomb_refused(tmp_path: Path) -> None:
    p = _pipeline(tmp_path, max_inflated_bytes=64 * MiB)
    try:
        ds = make_phantom(np.random.default_rng(6), True, size=256)
        plain_score = None
        study_uid = store_complete_study(p, ds)
        plain_score = p.analyse_study(study_uid).score

        deflated = make_phantom(np.random.default_rng(6), True, size=256)
        deflated.StudyInstanceUID = pydicom.uid.generate_uid()
        deflated.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        deflated_uid = store_complete_study(p, deflated)
        assert p.analyse_study(deflated_uid).score == pytest.approx(plain_score, abs=1e-6)

        # 1 GiB inflated from ~1 MiB: over DICOMNODE_MAX_INFLATED_BYTES, refused before inflating
        bomb_path = tmp_path / "bomb.dcm"
        bomb_path.write_bytes(
            _file_preamble(deflate_bomb_bytes(1 << 30)),
        )
        hwm = _vm_hwm()
        with pytest.raises(Exception, match="DICOMNODE_MAX_INFLATED_BYTES"):
            p.decoder.header(bomb_path)
        assert _vm_hwm() - hwm < 100 * MiB
    finally:
        p.close()


def _file_preamble(data_set: bytes) -> bytes:
    """A Part 10 file of a deflated data set: preamble, DICM and file meta, then ``data_set``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue() + data_set


@pytest.mark.parametrize(
    ("changes", "state", "reason"),
    [
        # the 6000 x 6000 bomb (36 megapixels) and the 65535 x 65535 one refused from their headers
        ({"max_image_pixels": 20_000_000}, StudyState.NOT_APPLICABLE, "DICOMNODE_MAX_IMAGE_PIXELS"),
        # the 6000 x 6000 bomb decoded in the child, which runs out of its 256 MiB
        ({"decode_memory_bytes": 256 * MiB}, StudyState.FAILED, "DICOMNODE_DECODE_MEMORY_BYTES"),
    ],
    ids=["header", "memory"],
)
def test_pixel_bombs_sent_to_the_embedded_node_leave_it_serving(
    tmp_path: Path, changes: dict[str, object], state: StudyState, reason: str
) -> None:
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.5,
        model=tmp_path / "tiny.onnx",
        fsync=False,
    ).with_overrides(**changes)
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    with Receiver(tmp_path / "pacs", ae_title="TESTPACS") as pacs:
        settings = settings.with_overrides(destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),))
        node = Node(settings, make_runner).start()
        try:
            bombs = [rle_pixel_bomb(6000, 6000)]
            if state is StudyState.NOT_APPLICABLE:
                bombs.append(claimed_size_pixel_bomb())
            paths = [_write(ds, tmp_path / f"bomb{i}.dcm") for i, ds in enumerate(bombs)]
            hwm = _vm_hwm()
            results = push_files(paths, "127.0.0.1", node.port, calling_ae="MODALITY")
            assert [r.status for r in results] == [0x0000] * len(bombs)

            store = Store(settings.effective_database_url, run_migrations=False)
            try:
                done = {StudyState.NOT_APPLICABLE, StudyState.FAILED, StudyState.DELIVERED}
                for ds in bombs:
                    wait_until(lambda ds=ds: study_state(store, ds.StudyInstanceUID) in done, 60, "analysis")
                    assert study_state(store, ds.StudyInstanceUID) is state
                    a = latest_analysis(store, ds.StudyInstanceUID)
                    assert a is not None and a.error is not None
                    assert "image too large to decode" in a.error and reason in a.error
            finally:
                store.dispose()
            assert echo_ok(node.port)  # the node is alive and answers
            # decoded in the node's own process, the 6000 x 6000 bomb takes it to ~900 MiB more
            assert _vm_hwm() - hwm < 150 * MiB, "the node's memory grew by a decode"
        finally:
            node.stop()


def test_a_pixel_bomb_in_a_prefork_celery_worker_fails_the_study_and_the_worker_goes_on(
    tmp_path: Path, pg_url: str, celery_queue: str, processes: Callable[..., LoggedProcess]
) -> None:
    from dicomnode.store.db import migrate
    from tests.conftest import REDIS_URL, settings_env

    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.5,
        model=tmp_path / "tiny.onnx",
        fsync=False,
        broker_url=REDIS_URL,
        queue=celery_queue,
        database_url=pg_url,
        decode_memory_bytes=256 * MiB,
    )
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    migrate(settings.effective_database_url)
    # prefork, as `dicomnode worker` runs by default: the task runs in a pool process whose own
    # death (acks_late, reject_on_worker_lost) would hand the study to the next worker
    log_path = tmp_path / "worker.log"
    worker = processes(
        [sys.executable, "-m", "dicomnode", "worker", "--pool", "prefork", "--hostname", "bomb@%h"],
        settings_env(settings),
        log_path,
    )
    worker.wait_ready(lambda: b"ready." in log_path.read_bytes(), 60, "celery worker")
    node = Node(settings, make_runner).start()
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        bomb = rle_pixel_bomb(6000, 6000)
        good = make_phantom(np.random.default_rng(12), True, size=256)
        for ds in (bomb, good):
            path = _write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
            assert [r.status for r in push_files([path], "127.0.0.1", node.port, calling_ae="MODALITY")] == [
                0
            ]
        finished = {StudyState.FAILED, StudyState.NOT_APPLICABLE, StudyState.ANALYSED, StudyState.DELIVERED}
        for ds in (bomb, good):
            wait_until(lambda ds=ds: study_state(store, ds.StudyInstanceUID) in finished, 90, "analysis")
        assert study_state(store, bomb.StudyInstanceUID) is StudyState.FAILED
        a = latest_analysis(store, bomb.StudyInstanceUID)
        assert a is not None and a.error is not None
        assert "image too large to decode within 256 MiB (DICOMNODE_DECODE_MEMORY_BYTES)" in a.error
        assert study_state(store, good.StudyInstanceUID) is not StudyState.FAILED
        good_analysis = latest_analysis(store, good.StudyInstanceUID)
        assert good_analysis is not None and good_analysis.score is not None
        assert worker.alive()
        log = worker.log()
        assert "WorkerLostError" not in log and "exited with signal" not in log.lower()
    finally:
        store.dispose()
        node.stop()
