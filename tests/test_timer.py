"""Unit tests of gateway/timer.py on Twisted's task.Clock (no reactor)."""

from __future__ import annotations

from twisted.internet.task import Clock

from gateway.timer import MovableTimer


def test_an_armed_step_fires_once_at_its_time():
    """arm(5): nothing at 4.9 s, the action at 5 s, and not again."""
    clock, fired = Clock(), []
    timer = MovableTimer(clock)
    timer.arm(5, lambda: fired.append(clock.seconds()))
    clock.advance(4.9)
    assert fired == [] and timer.armed
    clock.advance(0.1)
    assert fired == [5.0] and not timer.armed
    clock.advance(100)
    assert fired == [5.0]


def test_re_arming_moves_the_one_call():
    """Each step re-arms the same DelayedCall (later: reset; sooner: replaced), one at a time."""
    clock, fired = Clock(), []
    timer = MovableTimer(clock)
    timer.arm(5, lambda: fired.append("first"))
    clock.advance(3)
    timer.arm(5, lambda: fired.append("second"))  # later than the first's deadline
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4)
    assert fired == []
    timer.arm(0.5, lambda: fired.append("sooner"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.5)
    assert fired == ["sooner"]


def test_a_disarmed_timer_does_nothing_when_its_call_comes():
    """disarm keeps the call for the next arm; its expiry with nothing armed is no action."""
    clock, fired = Clock(), []
    timer = MovableTimer(clock)
    timer.arm(5, lambda: fired.append("x"))
    timer.disarm()
    clock.advance(10)
    assert fired == [] and not timer.armed


def test_stop_leaves_no_call_behind():
    """stop (the connection is gone) cancels the call itself."""
    clock = Clock()
    timer = MovableTimer(clock)
    timer.arm(5, lambda: None)
    timer.stop()
    assert clock.getDelayedCalls() == [] and not timer.armed
