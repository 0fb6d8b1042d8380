"""The storage room's guards: one UID rule for paths and rows, and a receive file that stops
keeping a data set once it is over its limit (the rest is dropped, the file deleted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.storage import IncomingFile, UnsafeUIDError, normalise_uid


def test_uid_loses_its_padding_and_nothing_else() -> None:
    assert normalise_uid("1.2.840.10008.1.2.1\x00") == "1.2.840.10008.1.2.1"
    assert normalise_uid("1.2.3 ") == "1.2.3"  # a space pad: every reader drops it too


@pytest.mark.parametrize("bad", ["1.2.3\n", "1.2.3\n\x00", "1.2.3\t", " 1.2.3", "1.2.\x003", "1." + "2" * 63])
def test_uid_with_other_whitespace_or_too_long_is_refused(bad: str) -> None:
    with pytest.raises(UnsafeUIDError):
        normalise_uid(bad, "StudyInstanceUID")


def test_incoming_file_over_max_bytes_is_deleted_and_the_rest_dropped(tmp_path: Path) -> None:
    f = IncomingFile(str(tmp_path), b"M" * 10, early_writeback=False, max_bytes=100)
    f.write(memoryview(b"x" * 60))
    assert f.refused is None and f.path.stat().st_size == 70
    f.write(memoryview(b"x" * 60))  # 120 bytes of data set: over the limit
    assert f.refused is not None and "DICOMNODE_MAX_DATASET_BYTES" in f.refused
    assert not f.path.exists()
    f.write(memoryview(b"x" * 1000))  # the rest of the data set is read and dropped
    assert f.received == 10 + 1120 and list(tmp_path.iterdir()) == []
