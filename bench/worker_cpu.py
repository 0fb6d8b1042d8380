"""Worker benchmark: CPU time per study by stage, for full-size single-image studies.

    .venv/bin/python bench/worker_cpu.py                     # 8 studies of 2048 x 2048, SQLite
    .venv/bin/python bench/worker_cpu.py --database-url postgresql+psycopg://postgres@127.0.0.1/test

Runs the real :meth:`worker.pipeline.Pipeline.analyse_study` on phantom DX studies stored as the
SCP stores them, delivering to a pynetdicom Storage SCP on loopback, and charges the CPU time of
the calling thread (``time.thread_time``) to the stage whose function is running; a stage nested
in another (the render inside the SC build, SQL inside delivery) is charged to the inner one
only. Decoding runs in the calling process (``decode_memory_bytes=0``) so that its CPU time is
counted here; the worker's default decodes the same way in a child process. onnxruntime and the
SCU's association run threads of their own, so the "inference" and "delivery" rows show this
thread's share, and their wall time is printed beside them.

The target (issue 16) is the worker's CPU per study without inference and delivery; it is printed
under the table with the number of SQL transactions each study commits. The model is the tiny
test graph at the production input size (224) unless ``--model`` names an exported one: the
model's own cost is ``bench/inference.py``'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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
from dicomnode.results import sc as sc_module  # noqa: E402
from dicomnode.storage import instance_path, write_atomic  # noqa: E402
from dicomnode.store.db import Store  # noqa: E402
from dicomnode.store.models import StudyState  # noqa: E402
from dicomnode.store.records import InstanceRecord, record_instance, set_study_state  # noqa: E402
from dicomnode.testing.pacs import Receiver  # noqa: E402
from dicomnode.testing.phantoms import write_phantom_studies  # noqa: E402

STAGES = (
    "decode+preprocess",
    "inference",
    "render",
    "SR build",
    "SC build",
    "encode+write",
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

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Charge calls of ``owner.attribute`` to stage ``name`` from now on."""
        fn: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)

        setattr(owner, attribute, timed)


def _instrument(clock: StageClock, pipeline: pipeline_module.Pipeline) -> None:
    clock.wrap(pipeline, "_read_header", "decode+preprocess")
    for attribute in ("tensor", "display"):
        clock.wrap(pipeline.decoder, attribute, "decode+preprocess")
    clock.wrap(pipeline.model, "predict", "inference")
    clock.wrap(sc_module, "render_heatmap", "render")
    clock.wrap(pipeline_module, "build_sr", "SR build")
    clock.wrap(pipeline_module, "changed_keywords", "SR build")
    clock.wrap(pipeline_module, "build_heatmap_sc", "SC build")
    for attribute in ("_encode", "write_atomic"):
        clock.wrap(pipeline_module, attribute, "encode+write")
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
    args = ap.parse_args()
    configure_logging("warning")

    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-worker-") as tmp:
        root = Path(tmp)
        studies = write_phantom_studies(root / "in", args.studies + 1, seed=16, size=args.size)
        with Receiver(root / "pacs", ae_title="BENCHPACS") as pacs:
            settings = Settings(
                storage_dir=root / "node",
                model=_model(root, args.model),
                decode_memory_bytes=0,
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
            for i, uid in enumerate(uids):
                clock.cpu.clear()
                clock.wall.clear()
                commits = 0
                cpu0 = time.process_time()
                clock.start()
                outcome = pipeline.analyse_study(uid)
                clock.stop()
                if outcome.state is not StudyState.DELIVERED:
                    raise SystemExit(f"study {i} ended {outcome.state}: {outcome.reason}")
                if i == 0:  # warm-up: imports, first-use caches
                    continue
                per_study.append(dict(clock.cpu))
                per_study_wall.append(dict(clock.wall))
                totals.append(time.process_time() - cpu0)
                transactions.append(commits)
            pipeline.close()
            store.dispose()

    def median(rows: list[dict[str, float]], stage: str) -> float:
        return statistics.median(r.get(stage, 0.0) for r in rows) * 1000

    print(
        f"\nworker: {len(per_study)} single-image studies of {args.size} x {args.size} "
        f"(+1 warm-up), {'SQLite' if args.database_url is None else args.database_url.split(':')[0]}"
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
    print(f"SQL transactions committed per study: {statistics.median(transactions):g}")


if __name__ == "__main__":
    main()
