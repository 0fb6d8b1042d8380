"""``dicomnode import-truth`` and ``dicomnode monitor`` (drift, performance, report) on a small
store, on real SQLite and the real PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from dicomnode.cli import main
from dicomnode.model.histogram import score_histogram
from dicomnode.ops.drift import Baseline, psi
from dicomnode.ops.groundtruth import import_ground_truth
from dicomnode.ops.monitor import monitor
from dicomnode.ops.report import write_report
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Study

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=timezone.utc)
THRESHOLD = 0.5
BASELINE = Baseline((30, 20, 10, 5, 5, 5, 5, 5, 5, 10), "validation")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.dispose()


def _scores() -> dict[int, float]:
    """40 studies over 4 days; scores spread over every bin, a few exactly on bin edges."""
    rng = np.random.default_rng(3)
    scores = {i: float(np.round(rng.random(), 3)) for i in range(40)}
    scores.update({0: 0.0, 1: 0.1, 2: 0.5, 3: 1.0})
    return scores


def _fill(store: Store) -> dict[int, float]:
    scores = _scores()
    with store.session() as s:
        for i, score in scores.items():
            at = T0 + timedelta(days=i % 4, minutes=i)
            st = Study(
                study_uid=f"1.3.{i}", accession_number=f"A{i}", first_received_at=at, last_received_at=at
            )
            s.add(st)
            s.flush()
            s.add(
                Analysis(
                    study_id=st.id,
                    model_name="m",
                    model_version="2.0",
                    score=score,
                    threshold=THRESHOLD,
                    finding_present=score >= THRESHOLD,
                    started_at=at,
                    finished_at=at + timedelta(seconds=5),
                )
            )
    return scores


def _reads_csv(tmp_path: Path, scores: dict[int, float]) -> tuple[Path, tuple[int, int, int, int]]:
    """Reads of the first 20 studies: the reader disagrees with the model on every 4th; returns
    the expected (tp, fp, tn, fn)."""
    lines = ["study_uid,label,reader,read_at"]
    tp = fp = tn = fn = 0
    for i in range(20):
        model = scores[i] >= THRESHOLD
        label = (not model) if i % 4 == 0 else model
        lines.append(f"1.3.{i},{int(label)},dr-x,2026-02-10T10:00:00")
        tp += model and label
        fp += model and not label
        tn += not model and not label
        fn += not model and label
    # an earlier read that the later one overrides, and a read of a study we never saw
    lines.append("1.3.5,1,dr-y,2026-02-09")
    lines.append("1.3.999,1,dr-x,2026-02-10")
    path = tmp_path / "reads.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, (tp, fp, tn, fn)


def test_drift_per_version_and_day_and_performance_against_reads(store: Store, tmp_path: Path) -> None:
    scores = _fill(store)
    path, (tp, fp, tn, fn) = _reads_csv(tmp_path, scores)
    report = import_ground_truth(store, path)
    assert (report.imported, len(report.unmatched)) == (21, 1)

    result = monitor(store, {"2.0": BASELINE})
    (row,) = result.drift
    window_counts = score_histogram(np.array(list(scores.values())))["counts"]
    assert result.counts["2.0"].tolist() == window_counts  # SQL binning == training's binning
    assert row.analyses == 40
    assert row.psi == pytest.approx(psi(BASELINE.counts, window_counts), abs=1e-4)
    assert row.positive_rate == pytest.approx(sum(v >= THRESHOLD for v in scores.values()) / 40, abs=1e-4)
    assert [d.day for d in result.daily] == ["2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"]
    assert sum(d.analyses for d in result.daily) == 40 and all(d.psi is not None for d in result.daily)

    (perf,) = result.performance
    assert (perf.tp, perf.fp, perf.tn, perf.fn) == (tp, fp, tn, fn)
    assert perf.studies == 20 and perf.threshold == THRESHOLD
    assert perf.sensitivity_low <= perf.sensitivity <= perf.sensitivity_high

    # a window of one day, and no baseline for the version
    one_day = monitor(store, {}, T0 + timedelta(days=1), T0 + timedelta(days=2))
    assert one_day.drift[0].analyses == 10 and one_day.drift[0].psi is None
    assert one_day.drift[0].band == "no baseline"


def test_report_writes_markdown_html_and_well_formed_svg(store: Store, tmp_path: Path) -> None:
    scores = _fill(store)
    import_ground_truth(store, _reads_csv(tmp_path, scores)[0])
    out = tmp_path / "report"
    html_path = write_report(monitor(store, {"2.0": BASELINE}), out)
    svgs = sorted(p.name for p in out.glob("*.svg"))
    assert svgs == ["confusion_2.0.svg", "psi_2.0.svg", "scores_2.0.svg"]
    for name in svgs:
        root = ET.fromstring((out / name).read_text())
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    md = (out / "report.md").read_text()
    for name in svgs:
        assert f"]({name})" in md
    assert "| model_version |" in md and "sensitivity" in md
    page = html_path.read_text()
    assert page.count("<svg") == 3 and "<table>" in page and "2.0" in page


def test_import_truth_and_monitor_commands(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = _fill(store)
    path, _ = _reads_csv(tmp_path, scores)
    monkeypatch.setenv("DICOMNODE_DATABASE_URL", store.url)
    monkeypatch.setenv("DICOMNODE_STORAGE_DIR", str(tmp_path / "node"))  # no model file there

    assert main(["import-truth", str(path)]) == 0
    out = capsys.readouterr().out
    assert "22 reads: imported 21" in out and "not received: reads.csv:23 study_uid=1.3.999" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("study_uid,label\n1.3.1,2\n")
    assert main(["import-truth", str(bad)]) == 2
    assert f"{bad} line 2: label '2' is not 0 or 1" in capsys.readouterr().err

    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"edges": [i / 10 for i in range(11)], "counts": list(BASELINE.counts)}))
    report = tmp_path / "r"
    args = ["monitor", "--baseline", str(baseline), "--since", "2026-02-01", "--until", "2026-02-04"]
    assert main([*args, "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "score drift" in printed and "2.0" in printed and "sensitivity" in printed
    assert (report / "report.html").is_file() and (report / "report.md").is_file()

    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["drift"][0]["analyses"] == 40 and len(doc["daily_psi"]) == 4
    assert doc["performance"][0]["studies"] == 20
