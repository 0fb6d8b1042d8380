from __future__ import annotations

import pytest

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


# -- completion on association release ----------------------------------------------------------


def test_released_study_is_complete_after_the_grace_not_the_quiet_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=7)
    t.touch("1.2.3", association=7)
    clock.t = 1.0
    assert t.release(7) == ["1.2.3"]
    assert t.seconds_to_next_due() == pytest.approx(0.2)
    clock.t = 1.19
    assert t.due() == []
    clock.t = 1.2
    assert t.due() == ["1.2.3"]
    assert t.due() == [] and t.pending() == []


def test_instance_within_the_grace_falls_back_to_the_quiet_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=7)
    t.release(7)
    clock.t = 0.1
    t.touch("1.2.3", association=8)  # the sender goes on over a new association
    clock.t = 0.5
    assert t.due() == []
    assert t.release(8) == []  # two associations sent it: released or not, the quiet period holds
    clock.t = 5.09
    assert t.due() == []
    clock.t = 5.1
    assert t.due() == ["1.2.3"]


def test_study_sent_over_two_live_associations_waits_out_the_quiet_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=1)
    t.touch("1.2.4", association=1)
    t.touch("1.2.3", association=2)
    assert t.release(1) == ["1.2.4"]  # only the study association 1 sent alone
    assert t.release(2) == []
    clock.t = 0.2
    assert t.due() == ["1.2.4"]
    clock.t = 5.0
    assert t.due() == ["1.2.3"]


def test_aborted_association_keeps_the_quiet_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=1)
    t.forget(1)  # aborted or dropped: no early completion, now or by a later release
    assert t.release(1) == []
    clock.t = 4.9
    assert t.due() == []
    clock.t = 5.0
    assert t.due() == ["1.2.3"]


def test_arrival_not_over_a_known_association_keeps_the_quiet_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3")  # the re-scan or the reconciler re-arming it
    t.touch("1.2.3", association=1)
    assert t.release(1) == []
    t.touch("1.2.4", association=2)
    t.touch("1.2.4")
    assert t.release(2) == []


def test_grace_zero_turns_completion_on_release_off() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.0)
    t.touch("1.2.3", association=1)
    assert t.release(1) == []
    clock.t = 4.9
    assert t.due() == []
    clock.t = 5.0
    assert t.due() == ["1.2.3"]


def test_studies_remembered_per_association_are_capped() -> None:
    clock = FakeClock()
    t = StudyTracker(
        5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2, max_studies_per_association=3
    )
    uids = [f"1.2.{i}" for i in range(10)]
    for uid in uids:
        t.touch(uid, association=1)
    assert len(t._sent_by[1]) == 3  # what is held for the association stays at the cap
    early = t.release(1)
    assert early == sorted(uids[:3])  # the first three complete early; the rest wait
    clock.t = 0.2
    assert sorted(t.due()) == sorted(uids[:3])
    clock.t = 5.0
    assert sorted(t.due()) == sorted(uids[3:])


def test_association_whose_end_is_never_told_holds_nothing_once_its_studies_are_done() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=1)
    clock.t = 5.0
    assert t.due() == ["1.2.3"]
    assert t._sent_by == {} and t._sender == {}


def test_late_instance_after_early_completion_opens_a_new_pending_period() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=1)
    t.release(1)
    clock.t = 0.2
    assert t.due() == ["1.2.3"]
    clock.t = 1.0
    t.touch("1.2.3", association=2)  # the late instance, on an association of its own
    assert t.release(2) == ["1.2.3"]  # sent alone by association 2 since it was handed on
    clock.t = 1.2
    assert t.due() == ["1.2.3"]


def test_background_thread_wakes_for_a_release() -> None:
    import threading

    got = threading.Event()
    t = StudyTracker(3600, lambda uid: got.set(), release_grace_seconds=0.01)
    t.start()
    try:
        t.touch("1.2.3", association=1)
        assert not got.wait(0.2)  # asleep for the quiet period of an hour
        t.release(1)
        assert got.wait(5)  # cannot pass without the release waking it
    finally:
        t.stop()


def test_grace_runs_from_the_release_not_from_when_its_rows_committed() -> None:
    clock = FakeClock()
    t = StudyTracker(5.0, lambda uid: None, clock=clock, release_grace_seconds=0.2)
    t.touch("1.2.3", association=1)
    clock.t = 0.15  # the release came at 0.1; its last rows committed since
    assert t.release(1, released_at=0.1) == ["1.2.3"]
    clock.t = 0.29
    assert t.due() == []
    clock.t = 0.31
    assert t.due() == ["1.2.3"]
