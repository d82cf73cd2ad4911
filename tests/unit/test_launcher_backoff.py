"""The launcher's restart back-off (the restart itself: tests/e2e/test_launcher.py)."""

from __future__ import annotations

from tokenfan.launcher import RESTART_BACKOFF_MAX_S, RESTART_STABLE_S, _exit_text, _Restarts


def test_a_child_that_keeps_dying_waits_longer_each_time_up_to_a_cap():
    r = _Restarts(started_at=0.0)
    delays = []
    for i in range(10):
        delays.append(r.died(now=float(i)))
        r.started_at = float(i)
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == delays[-1] == RESTART_BACKOFF_MAX_S
    assert r.due_at == 9.0 + RESTART_BACKOFF_MAX_S


def test_a_child_that_ran_long_enough_starts_again_at_once():
    r = _Restarts(started_at=0.0, deaths=5)
    assert r.died(now=RESTART_STABLE_S) == 0.5 and r.deaths == 1


def test_exit_texts():
    assert _exit_text(-9) == "was killed by SIGKILL"
    assert _exit_text(3) == "exited with code 3"
