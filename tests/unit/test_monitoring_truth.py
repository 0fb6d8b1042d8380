"""Import of radiologists' reads from CSV (dicomnode.ops.groundtruth) into a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.ops.groundtruth import GroundTruthError, import_ground_truth, parse_truth_csv
from dicomnode.store.db import Store
from dicomnode.store.models import GroundTruth, Study


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'truth.sqlite3'}")
    with s.session() as sess:
        sess.add_all(
            [
                Study(study_uid="1.2.3.1", accession_number="ACC1"),
                Study(study_uid="1.2.3.2", accession_number="ACC2"),
                Study(study_uid="1.2.3.3", accession_number="DUP"),
                Study(study_uid="1.2.3.4", accession_number="DUP"),
            ]
        )
    yield s
    s.dispose()


def _csv(tmp_path: Path, text: str, name: str = "reads.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_are_imported_by_study_uid_or_accession_and_reimport_updates(
    store: Store, tmp_path: Path
) -> None:
    path = _csv(
        tmp_path,
        "study_uid,accession_number,label,reader,read_at\n"
        "1.2.3.1,,1,dr-a,2026-01-31T10:12:00Z\n"
        ",ACC2,0,dr-b,2026-01-31\n"
        "9.9.9,,1,dr-a,\n",
    )
    report = import_ground_truth(store, path)
    assert (report.rows, report.imported, report.updated) == (3, 2, 0)
    assert report.unmatched == ["reads.csv:4 study_uid=9.9.9"]
    with store.session() as s:
        rows = {(g.study.study_uid, g.label, g.reader) for g in s.scalars(select(GroundTruth))}
        first = s.scalar(select(GroundTruth).join(Study).where(Study.study_uid == "1.2.3.1"))
        assert first is not None and first.source == "reads.csv:2" and first.read_at is not None
        read_at = first.read_at.replace(tzinfo=first.read_at.tzinfo or timezone.utc)
        assert read_at == datetime(2026, 1, 31, 10, 12, tzinfo=timezone.utc)
    assert rows == {("1.2.3.1", True, "dr-a"), ("1.2.3.2", False, "dr-b")}

    # the same reads again, one label corrected: updated, not duplicated
    path.write_text(
        "study_uid;accession_number;label;reader;read_at\n"
        "1.2.3.1;;0;dr-a;2026-01-31T10:12:00Z\n"
        ";ACC2;0;dr-b;2026-01-31\n"
    )
    again = import_ground_truth(store, path)
    assert (again.imported, again.updated, again.unchanged) == (0, 1, 1)
    with store.session() as s:
        assert s.query(GroundTruth).count() == 2


def test_bad_lines_are_named_and_nothing_is_imported(store: Store, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "study_uid,label,reader,read_at\n"
        "1.2.3.1,1,dr-a,2026-01-31\n"
        "1.2.3.2,maybe,dr-a,2026-01-31\n"
        "\n"
        "1.2.3.2,1,dr-a,yesterday\n"
        "not-a-uid,1,dr-a,\n"
        ",1,dr-a,\n"
        "1.2.3.2,1\n",
    )
    with pytest.raises(GroundTruthError) as err:
        import_ground_truth(store, path)
    msg = str(err.value)
    assert "5 bad line(s), nothing imported" in msg
    assert f"{path} line 3: label 'maybe' is not 0 or 1" in msg
    assert f"{path} line 5: read_at 'yesterday' is not an ISO 8601 date" in msg
    assert f"{path} line 6: study_uid 'not-a-uid' is not a DICOM UID" in msg
    assert f"{path} line 7: no study_uid or accession_number" in msg
    assert f"{path} line 8: 2 fields, the header has 4" in msg
    with store.session() as s:
        assert s.query(GroundTruth).count() == 0


def test_header_must_name_label_and_a_study_key(tmp_path: Path) -> None:
    with pytest.raises(GroundTruthError, match="line 1: unknown column 'diagnosis'"):
        parse_truth_csv(_csv(tmp_path, "study_uid,diagnosis\n1.2,1\n"))
    with pytest.raises(GroundTruthError, match="needs a label column and a study_uid or accession_number"):
        parse_truth_csv(_csv(tmp_path, "reader,label\ndr-a,1\n"))
    with pytest.raises(GroundTruthError, match="empty"):
        parse_truth_csv(_csv(tmp_path, ""))


def test_an_accession_number_shared_by_two_studies_is_an_error(store: Store, tmp_path: Path) -> None:
    path = _csv(tmp_path, "accession_number,label\nDUP,1\n")
    with pytest.raises(GroundTruthError, match=r"line 2: accession_number 'DUP' matches 2 studies"):
        import_ground_truth(store, path)


def test_dry_run_matches_but_imports_nothing(store: Store, tmp_path: Path) -> None:
    report = import_ground_truth(store, _csv(tmp_path, "study_uid,label\n1.2.3.1,1\n"), dry_run=True)
    assert report.imported == 1
    with store.session() as s:
        assert s.query(GroundTruth).count() == 0
