"""Worker benchmark: CPU time per study by stage, for full-size single-image studies.

    .venv/bin/python bench/worker_cpu.py                     # 8 studies of 2048 x 2048, SQLite
    .venv/bin/python bench/worker_cpu.py --decode inprocess  # decoding in this process
    .venv/bin/python bench/worker_cpu.py --database-url postgresql+psycopg://postgres@127.0.0.1/test

Runs the real :meth:`worker.pipeline.Pipeline.analyse_study` on phantom DX studies stored as the
SCP stores them, delivering to a pynetdicom Storage SCP on loopback, and charges the CPU time of
the calling thread (``time.thread_time``) to the stage whose function is running; a stage nested
in another (the render inside the SC build, SQL inside delivery) is charged to the inner one
only. onnxruntime and the SCU's association run threads of their own, so the "inference" and
"delivery" rows show this thread's share, and their wall time is printed beside them.

``--decode child`` (the default, as the worker's default settings) decodes in the memory-capped
child process (:class:`dicomnode.model.decode.Decoder`): the "decode+preprocess" row is then this
process's side of the round trip: the calling thread, plus the CPU clocks of the executor's two
threads that pickle the call into the pipe and read and unpickle the tensor from it. The heatmap
SC is drawn, built and encoded in the child too (``dicomnode.results.sc.heatmap_sc_file``), called
from a thread of its own while the analysing thread builds the SR: the "heatmap SC thread" row is
that thread's CPU (with a child, its side of the call; in-process, the whole drawing, building and
encoding). The child's own CPU is the "decoding child" row under the table, asked of the child
between studies. ``--decode inprocess`` (``DICOMNODE_DECODE_MEMORY_BYTES=0``) runs the same
functions in the calling thread.

The target (issue 16) is the worker's CPU per study without inference and delivery; it is printed
under the table with the number of SQL transactions each study commits. The model is the tiny
test graph at the production input size (224) unless ``--model`` names an exported one: the
model's own cost is ``bench/inference.py``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_model

import worker.pipeline as pipeline_module  # noqa: E402
from dicomnode.config import Destination, Settings  # noqa: E402
from dicomnode.delivery import rounds  # noqa: E402
from dicomnode.logconfig import configure_logging  # noqa: E402
from dicomnode.model import PneumoniaModel, PreprocessConfig  # noqa: E402
from dicomnode.storage import instance_path, write_atomic  # noqa: E402
from dicomnode.store.db import Store  # noqa: E402
from dicomnode.store.models import StudyState  # noqa: E402
from dicomnode.store.records import InstanceRecord, record_instance, set_study_state  # noqa: E402
from dicomnode.testing.pacs import Receiver  # noqa: E402
from dicomnode.testing.phantoms import write_phantom_studies  # noqa: E402

STAGES = (
    "decode+preprocess",
    "inference",
    "SR build",
    "heatmap SC thread",
    "write",
    "SQL",
    "delivery",
    "other",
)
#: not part of the per-study CPU target: the model, and delivery's network exchange
EXCLUDED = ("inference", "delivery")
TARGET_MS = 100.0


class StageClock:
    """CPU (this thread) and wall seconds per stage; nested stages charged to the innermost."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._mark = (0.0, 0.0)

    def _charge(self) -> None:
        cpu, wall = time.thread_time(), time.perf_counter()
        stage = self._stack[-1] if self._stack else "other"
        self.cpu[stage] += cpu - self._mark[0]
        self.wall[stage] += wall - self._mark[1]
        self._mark = (cpu, wall)

    def start(self) -> None:
        self._stack.clear()
        self._mark = (time.thread_time(), time.perf_counter())

    def stop(self) -> None:
        self._charge()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def wrap(self, owner: Any, attribute: str, name: str, helpers: Callable[[], float] = lambda: 0.0) -> None:
        """Charge calls of ``owner.attribute`` to stage ``name`` from now on, with the CPU that
        ``helpers`` (seconds so far of other threads working for the call) adds meanwhile."""
        fn: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            before = helpers()
            try:
                with self.stage(name):
                    return fn(*args, **kwargs)
            finally:
                self.cpu[name] += helpers() - before

        setattr(owner, attribute, timed)


def _instrument(clock: StageClock, pipeline: pipeline_module.Pipeline) -> None:
    clock.wrap(pipeline, "_read_header", "decode+preprocess")
    for attribute in ("tensor", "display"):
        clock.wrap(pipeline.decoder, attribute, "decode+preprocess", lambda: _round_trip_cpu(pipeline))
    clock.wrap(pipeline.model, "predict", "inference")
    clock.wrap(pipeline.sr_templates, "build", "SR build")  # its encode included
    clock.wrap(pipeline_module, "build_sr", "SR build")
    clock.wrap(pipeline_module, "changed_keywords", "SR build")
    for attribute in ("write_atomic",):
        clock.wrap(pipeline_module, attribute, "write")
    for attribute in (
        "start_analysis",
        "update_analysis",
        "set_study_state",
        "study_instances",
        "latest_analysis",
        "study_state",
        "predecessor_srs",
        "end_analysis",
    ):
        if hasattr(pipeline_module, attribute):  # the names of today's module and of earlier ones
            clock.wrap(pipeline_module, attribute, "SQL")
    clock.wrap(pipeline_module, "deliver_results", "delivery")
    for attribute in (
        "record_delivery_attempt",
        "update_analysis",
        "set_study_state",
        "set_delivery_due",
        "end_round",
        "delivered_objects",
        "attempts_made",
        "first_attempt_at",
        "uncommitted_objects",
    ):
        if hasattr(rounds, attribute):
            clock.wrap(rounds, attribute, "SQL")


def _receive(settings: Settings, store: Store, paths: list[Path]) -> str:
    """Store the study's files as the SCP does (file in place, row in SQL), mark it complete."""
    import pydicom

    study_uid = ""
    for src in paths:
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        path = instance_path(settings.instances_dir, study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        write_atomic(path, src.read_bytes())
        record_instance(
            store,
            InstanceRecord(
                study_uid=study_uid,
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                modality=str(ds.Modality),
                path=str(path),
                size_bytes=path.stat().st_size,
                sha256=None,
                calling_ae="MODALITY",
            ),
        )
    set_study_state(store, study_uid, StudyState.COMPLETE, "bench")
    return study_uid


def _threads_cpu(threads: Iterable[threading.Thread | None]) -> float:
    """CPU seconds so far of the live ``threads`` (None and ended ones count 0)."""
    seconds = 0.0
    for thread in threads:
        if thread is not None and thread.ident is not None and thread.is_alive():
            with contextlib.suppress(OSError):  # ended meanwhile
                seconds += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return seconds


def _round_trip_cpu(pipeline: pipeline_module.Pipeline) -> float:
    """CPU seconds so far of the decoder's executor threads: the feeder that pickles calls into
    the pipe and the manager that reads and unpickles the results (0 without a child)."""
    executor = pipeline.decoder._executor
    if executor is None:
        return 0.0
    call_queue = getattr(executor, "_call_queue", None)
    return _threads_cpu(
        (getattr(executor, "_executor_manager_thread", None), getattr(call_queue, "_thread", None))
    )


def _heatmap_thread_cpu(pipeline: pipeline_module.Pipeline) -> float:
    """CPU seconds so far of the thread that has the heatmap SC made while the analysing thread
    builds the SR (in the decoding child: this side of the call; in-process: all of it)."""
    executor = pipeline._heatmaps
    return _threads_cpu(getattr(executor, "_threads", ()) if executor is not None else ())


def _child_cpu(pipeline: pipeline_module.Pipeline) -> float:
    """CPU seconds the decoding child has used so far (0 when decoding runs in this process);
    asked of the child itself, outside the timed study."""
    if not pipeline.decoder.isolated:
        return 0.0
    seconds: float = pipeline.decoder._call(time.process_time)
    return seconds


def _model(root: Path, model: Path | None) -> Path:
    if model is not None:
        return model
    from tests.tiny_model import tiny_card, write_tiny_model

    card = dataclasses.replace(tiny_card(), preprocess=PreprocessConfig().to_dict())
    return write_tiny_model(root / "tiny-224.onnx", card)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=8, help="timed studies (after one warm-up study)")
    ap.add_argument("--size", type=int, default=2048, help="phantom Rows = Columns")
    ap.add_argument("--model", type=Path, default=None, help="exported ONNX model (default: tiny graph)")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    ap.add_argument(
        "--decode",
        choices=("child", "inprocess"),
        default="child",
        help="decode in the memory-capped child process (default, as production) or in this one",
    )
    args = ap.parse_args()
    configure_logging("warning")

    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-worker-") as tmp:
        root = Path(tmp)
        studies = write_phantom_studies(root / "in", args.studies + 1, seed=16, size=args.size)
        with Receiver(root / "pacs", ae_title="BENCHPACS") as pacs:
            settings = Settings(
                storage_dir=root / "node",
                model=_model(root, args.model),
                decode_memory_bytes=0 if args.decode == "inprocess" else Settings().decode_memory_bytes,
                database_url=args.database_url or "",
                destinations=(Destination("BENCHPACS", "127.0.0.1", pacs.port),),
            )
            store = Store(settings.effective_database_url)
            pipeline = pipeline_module.Pipeline(settings, store, PneumoniaModel(settings.model_path))
            uids = [_receive(settings, store, list(s.paths)) for s in studies]
            commits = 0

            def count(_conn: Any) -> None:
                nonlocal commits
                commits += 1

            event.listen(store.engine, "commit", count)
            clock = StageClock()
            _instrument(clock, pipeline)
            per_study: list[dict[str, float]] = []
            per_study_wall: list[dict[str, float]] = []
            totals: list[float] = []
            transactions: list[int] = []
            child_cpu: list[float] = []
            for i, uid in enumerate(uids):
                clock.cpu.clear()
                clock.wall.clear()
                commits = 0
                child0 = _child_cpu(pipeline)
                heatmap0 = _heatmap_thread_cpu(pipeline)
                cpu0 = time.process_time()
                clock.start()
                outcome = pipeline.analyse_study(uid)
                clock.stop()
                cpu1 = time.process_time()
                clock.cpu["heatmap SC thread"] = _heatmap_thread_cpu(pipeline) - heatmap0
                child1 = _child_cpu(pipeline)
                if outcome.state is not StudyState.DELIVERED:
                    raise SystemExit(f"study {i} ended {outcome.state}: {outcome.reason}")
                if i == 0:  # warm-up: imports, first-use caches
                    continue
                per_study.append(dict(clock.cpu))
                per_study_wall.append(dict(clock.wall))
                totals.append(cpu1 - cpu0)
                transactions.append(commits)
                child_cpu.append(child1 - child0)
            pipeline.close()
            store.dispose()

    def median(rows: list[dict[str, float]], stage: str) -> float:
        return statistics.median(r.get(stage, 0.0) for r in rows) * 1000

    print(
        f"\nworker: {len(per_study)} single-image studies of {args.size} x {args.size} "
        f"(+1 warm-up), {'SQLite' if args.database_url is None else args.database_url.split(':')[0]}, "
        f"decoding {'in the child process' if args.decode == 'child' else 'in this process'}"
    )
    print(f"{'stage':<20} {'CPU ms':>9} {'wall ms':>9}")
    print("-" * 40)
    for stage in STAGES:
        print(f"{stage:<20} {median(per_study, stage):>9.1f} {median(per_study_wall, stage):>9.1f}")
    counted = [sum(v for k, v in r.items() if k not in EXCLUDED) * 1000 for r in per_study]
    print("-" * 40)
    print(f"{'all stages':<20} {statistics.median(sum(r.values()) for r in per_study) * 1000:>9.1f}")
    print(
        f"{'without ' + ' and '.join(EXCLUDED):<20} {statistics.median(counted):>9.1f}"
        f"   target {TARGET_MS:.0f} ms: {statistics.median(counted) / TARGET_MS:.2f} x "
        f"(min {min(counted):.1f}, max {max(counted):.1f})"
    )
    print(f"process CPU per study, all threads: {statistics.median(totals) * 1000:.1f} ms (median)")
    if args.decode == "child":
        child_ms = statistics.median(child_cpu) * 1000
        print(
            f"{'decoding child':<20} {child_ms:>9.1f}   its own CPU per study, not in the rows above; "
            f"with it: {statistics.median(counted) + child_ms:.1f} ms"
        )
    print(f"SQL transactions committed per study: {statistics.median(transactions):g}")


if __name__ == "__main__":
    main()
