from __future__ import annotations

from dicomnode.receive.tracker import StudyTracker


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


def test_thread_sleeps_until_the_quietest_study_is_due() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock)
    assert t.seconds_to_next_due() == 5.0  # nothing pending: a new study is due in a full period
    t.touch("1.2.3")
    clock.t = 2.0
    t.touch("1.2.4")
    clock.t = 3.0
    assert t.seconds_to_next_due() == 2.0  # 1.2.3, touched at 0
    t.touch("1.2.3")  # a late instance: now 1.2.4 is next
    assert t.seconds_to_next_due() == 4.0
    clock.t = 8.0
    assert t.seconds_to_next_due() == 0.0 and t.due() == ["1.2.3", "1.2.4"]

