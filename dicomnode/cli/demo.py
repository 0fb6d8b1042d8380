"""The embedded demo: one process runs the node, a receiving PACS and a sending modality.

It builds the demo model if missing (training package, CPU, about a minute), starts the node with
SQLite and in-process execution, pushes synthetic chest radiograph studies over DICOM, waits for
the SR + SC to arrive at the local PACS, and prints a table. Then it sends one real chest
radiograph (NEMA WG04 ``RG1``, from the ``pydicom-data`` package) and prints what the demo model
says about it, with the warning that a model trained on phantoms says nothing about a real image.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.results import SRSummary, read_sr, reading_order
from dicomnode.results.reading_order import WorklistEntry
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import PhantomStudy, write_phantom_studies
from worker.runners import make_runner

#: The same synthetic patients every run (a set the demo model separates clearly); each run sends
#: them as new studies, so re-running the demo never re-opens the last run's studies.
DEMO_SEED = 16


#: The real radiograph sent after the phantoms: NEMA WG04 RG1 uncompressed, a Philips CR chest PA
#: (1955 x 1841, 15-bit MONOCHROME1) that the ``pydicom-data`` package installs.
REAL_RADIOGRAPH = "RG1_UNCR.dcm"
#: How to train a model on published real radiographs (docs/models.md, "Trained on real radiographs").
TRAIN_ON_REAL_DATA = ".venv/bin/python bench/real_data.py --results bench-results/real-data"


def _new_uids(path: Path, study_uid: str, series: dict[str, str]) -> None:
    """Put the file at ``path`` in study ``study_uid`` with fresh Series/SOP Instance UIDs, in place
    (``series`` maps old series UIDs to new ones across the files of one study)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


def _as_new_study(st: PhantomStudy) -> PhantomStudy:
    """Give a phantom study fresh Study/Series/SOP Instance UIDs, in place on disk."""
    study_uid = generate_uid()
    series: dict[str, str] = {}
    for path in st.paths:
        _new_uids(path, study_uid, series)
    return replace(st, study_uid=study_uid)


def real_radiograph(folder: Path) -> Path | None:
    """A copy of :data:`REAL_RADIOGRAPH` in ``folder`` as a new study, or None (and a line saying
    how to install it) where ``pydicom-data`` is not installed: nothing is downloaded."""
    try:
        from pydicom.data import get_testdata_file

        source = get_testdata_file(REAL_RADIOGRAPH, download=False)
    except (ImportError, ValueError):
        source = None
    if not isinstance(source, str):
        print(
            f"\nNo real radiograph to send: the pydicom-data package is not installed "
            f"(`{sys.executable} -m pip install pydicom-data`). Going on without it."
        )
        return None
    path = folder / REAL_RADIOGRAPH
    shutil.copyfile(source, path)
    _new_uids(path, generate_uid(), {})
    return path


@dataclass(frozen=True)
class DemoRow:
    study_uid: str
    truth_positive: bool
    score: float | None
    priority: str | None
    seconds_to_result: float | None


def _push(paths: list[Path], port: int, node_ae: str) -> None:
    """Send ``paths`` to the node as the modality would; raise if one is refused."""
    res = push_files(paths, "127.0.0.1", port, called_ae=node_ae, calling_ae="MODALITY")
    bad = [r for r in res if r.status != 0]
    if bad:
        raise RuntimeError(f"push refused: {bad}")


def run_demo(
    settings: Settings, *, studies: int = 6, seed: int = DEMO_SEED, timeout: float = 180
) -> list[DemoRow]:
    """Run the demo end to end and return one row per study (also printed)."""
    from training.demo import ensure_demo_model

    model_path = settings.model_path
    if not model_path.exists():
        print(f"Building the demo model at {model_path} (first run only; trains on synthetic phantoms)...")
    ensure_demo_model(model_path)

    pacs_dir = settings.storage_dir / "demo-pacs"
    with Receiver(pacs_dir, ae_title="DEMOPACS") as pacs:
        node_settings = settings.with_overrides(
            port=settings.port,
            destinations=(Destination("DEMOPACS", "127.0.0.1", pacs.port),),
        )
        node = Node(node_settings, make_runner).start()
        try:
            print(
                f"Node {node_settings.ae_title} listening on port {node.port}; results go to "
                f"DEMOPACS@127.0.0.1:{pacs.port}; quiet period {node_settings.quiet_seconds:g} s"
            )
            with tempfile.TemporaryDirectory(prefix="dicomnode-demo-") as tmp:
                phantoms = [
                    _as_new_study(st)
                    for st in write_phantom_studies(Path(tmp), studies, seed=seed, positive_fraction=0.5)
                ]
                sent_at: dict[str, float] = {}
                for st in phantoms:
                    _push(st.paths, node.port, node_settings.ae_title)
                    sent_at[st.study_uid] = time.time()
                print(
                    f"Pushed {len(phantoms)} studies ({sum(len(s.paths) for s in phantoms)} instances); waiting for results..."
                )
                received = pacs.wait_for(2 * len(phantoms), timeout)
                real = real_radiograph(Path(tmp))
                if real is not None:
                    real_study = str(pydicom.dcmread(real, stop_before_pixels=True).StudyInstanceUID)
                    _push([real], node.port, node_settings.ae_title)
                    sent_at[real_study] = time.time()
                    print(
                        f"Pushed a real chest radiograph ({REAL_RADIOGRAPH}, pydicom-data); waiting for its result..."
                    )
                    received = pacs.wait_for(2 * len(phantoms) + 2, timeout)
        finally:
            node.stop()

    srs = {}
    for r in received:
        if r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88."):
            srs[r.study_uid] = (read_sr(r.path), r.at)
    rows = []
    for st in phantoms:
        got = srs.get(st.study_uid)
        summary, at = got if got else (None, None)
        rows.append(
            DemoRow(
                st.study_uid,
                st.positive,
                summary.probability if summary else None,
                summary.priority.value if summary else None,
                (at - sent_at[st.study_uid]) if at else None,
            )
        )
    _print_table(rows, node_settings.quiet_seconds)
    now = datetime.now(timezone.utc)
    order = reading_order(
        [
            WorklistEntry(
                study_uid=r.study_uid,
                priority=srs[r.study_uid][0].priority,
                probability=r.score,
                arrived_at=datetime.fromtimestamp(sent_at[r.study_uid], timezone.utc),
            )
            for r in rows
            if r.study_uid in srs
        ],
        now=now,
        max_wait=timedelta(hours=1),
    )
    print("\nReading order from the SRs received at the PACS (urgent first):")
    for i, item in enumerate(order, 1):
        e = item.entry
        print(f"  {i}. ...{e.study_uid[-16:]}  {e.priority.value:<8} p={e.probability:.3f}")
    if real is not None:
        summary, at = srs.get(real_study, (None, 0.0))
        _print_real(summary, at - sent_at[real_study], bundled=settings.model is None)
    return rows


def _print_real(summary: SRSummary | None, seconds: float, *, bundled: bool) -> None:
    """What the model said about the real radiograph; for the bundled demo model, that it means
    nothing and how to train one on real radiographs."""
    print(
        f"\nA real chest radiograph: NEMA WG04 {REAL_RADIOGRAPH} (Philips CR, chest PA, 1955 x 1841, 15-bit)"
    )
    if summary is None:
        print("  no result in time: see the node's log above")
    else:
        print(
            f"  {summary.model_name} {summary.model_version}: score {summary.probability:.3f}, "
            f"{summary.priority.value}; result at the PACS {seconds:.2f} s after sending"
        )
    if not bundled:
        return
    print(
        "  The demo model is trained on synthetic phantoms only: its score on a real radiograph means nothing.\n"
        "  To train a model on published real chest radiographs (Kermany et al. 2018) in one command:\n"
        f"    {TRAIN_ON_REAL_DATA}\n"
        "  docs/models.md says what it reaches and how to check a model on your own data."
    )


def _print_table(rows: list[DemoRow], quiet: float) -> None:
    print()
    print(f"{'study (last 16 of UID)':<24} {'truth':<10} {'score':>7} {'priority':<9} {'time-to-result':>15}")
    print("-" * 70)
    for r in rows:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        ttr = f"{r.seconds_to_result:.2f} s" if r.seconds_to_result is not None else "MISSING"
        print(
            f"...{r.study_uid[-16:]:<21} {'pneumonia' if r.truth_positive else 'normal':<10} {score:>7} "
            f"{r.priority or '-':<9} {ttr:>15}"
        )
    pos = [r.score for r in rows if r.truth_positive and r.score is not None]
    neg = [r.score for r in rows if not r.truth_positive and r.score is not None]
    missing = sum(r.score is None for r in rows)
    print("-" * 70)
    print(
        "time-to-result = last instance sent -> SR stored at the PACS (a study is complete when its "
        f"association is released, else after the {quiet:g} s quiet period)"
    )
    if pos and neg:
        sep = "yes" if min(pos) > max(neg) else "NO"
        print(
            f"positives above negatives: {sep} (lowest positive {min(pos):.3f}, highest negative {max(neg):.3f})"
        )
    if missing:
        print(f"{missing} studies got no result in time: see the node's log above")
