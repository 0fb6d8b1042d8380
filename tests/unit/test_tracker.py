from __future__ import annotations

from dicomnode.tracker import StudyTracker


class FakeClock:
    """Time under test control (the tracker's clock is injected; nothing else is faked)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_study_is_complete_only_after_the_quiet_period() -> None:
    clock = FakeClock()
    done: list[str] = []
    t = StudyTracker(5.0, done.append, clock=clock)
    t.touch("1.2.3")
    clock.t = 4.9
    assert t.due() == []
    t.touch("1.2.3")  # a late instance restarts the quiet period
    clock.t = 9.8
    assert t.due() == []
    clock.t = 9.9
    assert t.due() == ["1.2.3"]
    assert t.due() == []  # handed on once


def test_flush_hands_on_pending_studies() -> None:
    done: list[str] = []
    t = StudyTracker(3600, done.append)
    t.touch("1.2.3")
    t.touch("1.2.4")
    t.flush()
    assert sorted(done) == ["1.2.3", "1.2.4"] and t.pending() == []


def test_background_thread_emits_after_quiet_period() -> None:
    import threading

    got = threading.Event()
    t = StudyTracker(0.05, lambda uid: got.set())
    t.start()
    try:
        t.touch("1.2.3")
        assert got.wait(5)
    finally:
        t.stop()
