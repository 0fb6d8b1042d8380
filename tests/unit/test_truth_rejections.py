"""A sloppy ground-truth CSV is refused, naming the lines, and nothing is imported: two labels for
one read, a study UID with non-ASCII digits, a read dated in the future."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

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
            ]
        )
    yield s
    s.dispose()


def _csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "reads.csv"
    p.write_text(text, encoding="utf-8")
    return p


def _reads(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(GroundTruth)) or 0)


def test_two_labels_for_the_same_read_are_refused_naming_both_lines(store: Store, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "study_uid,accession_number,label,reader,read_at\n"
        "1.2.3.1,,1,dr-a,2026-01-31\n"
        "1.2.3.2,,0,dr-a,2026-01-31\n"
        "1.2.3.1,,0,dr-a,2026-01-31\n",
    )
    with pytest.raises(
        GroundTruthError, match=r"lines 2 and 4: .*study_uid 1\.2\.3\.1.*label 1 on line 2 and 0"
    ):
        import_ground_truth(store, path)
    assert _reads(store) == 0


def test_the_same_study_by_uid_and_by_accession_number_with_two_labels_is_a_conflict(
    store: Store, tmp_path: Path
) -> None:
    path = _csv(tmp_path, "study_uid,accession_number,label\n1.2.3.1,,1\n,ACC1,0\n")
    with pytest.raises(GroundTruthError, match="lines 2 and 3"):
        import_ground_truth(store, path)
    assert _reads(store) == 0


def test_two_readers_disagreeing_are_two_reads_not_a_conflict(store: Store, tmp_path: Path) -> None:
    path = _csv(tmp_path, "study_uid,label,reader\n1.2.3.1,1,dr-a\n1.2.3.1,0,dr-b\n1.2.3.1,1,dr-a\n")
    report = import_ground_truth(store, path)
    assert (report.imported, report.unchanged) == (2, 1)


def test_a_study_uid_with_non_ascii_digits_is_refused(tmp_path: Path) -> None:
    # U+0661 ARABIC-INDIC DIGIT ONE and U+FF12 FULLWIDTH DIGIT TWO: str.isdigit() accepts both
    path = _csv(tmp_path, "study_uid,label\n1.2.\u0661,1\n1.\uff12.3,0\n1.2.3,1\n")
    with pytest.raises(GroundTruthError) as err:
        parse_truth_csv(path)
    message = str(err.value)
    assert "2 bad line(s)" in message and "line 2: study_uid" in message and "line 3: study_uid" in message
    assert "ASCII digits and dots" in message


def test_a_read_dated_in_the_future_is_refused(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    path = _csv(
        tmp_path,
        "study_uid,label,read_at\n"
        "1.2.3.1,1,2999-01-31\n"
        "1.2.3.2,0,2026-03-02T11:00:00Z\n"  # within a day: another time zone's clock, accepted
        "1.2.3.3,0,2026-03-03\n",
    )
    with pytest.raises(GroundTruthError) as err:
        parse_truth_csv(path, now=now)
    message = str(err.value)
    assert "2 bad line(s)" in message
    assert "line 2: read_at '2999-01-31' is in the future" in message
    assert "line 4: read_at '2026-03-03' is in the future" in message


def test_a_read_dated_in_year_2999_is_refused_on_import(store: Store, tmp_path: Path) -> None:
    path = _csv(tmp_path, "study_uid,label,read_at\n1.2.3.1,1,2999-01-31\n")
    with pytest.raises(GroundTruthError, match="in the future"):
        import_ground_truth(store, path)
    assert _reads(store) == 0


def test_a_read_time_past_year_9999_in_utc_is_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    path = _csv(tmp_path, "study_uid,label,read_at\n1.2.3.1,1,9999-12-31T23:30:00-01:00\n")
    with pytest.raises(
        GroundTruthError, match="line 2: read_at '9999-12-31T23:30:00-01:00' is not an ISO 8601"
    ):
        parse_truth_csv(path)
