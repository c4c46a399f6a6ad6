"""``parley.presence.base.step``: the presence rule itself, with no backend."""

from __future__ import annotations

from parley.presence.base import Change, Record, State, state_of, step

G = 10.0


def test_first_connection_is_announced_at_once() -> None:
    s = step("a", Record(), 1, 100.0, G)
    assert s.change == Change("a", "online", 100.0)
    assert s.record.connections == 1 and s.due is None


def test_last_connection_closing_waits_for_the_grace_period() -> None:
    online = step("a", Record(), 1, 100.0, G).record
    s = step("a", online, -1, 130.0, G)
    assert s.change is None and s.due == 140.0
    assert s.record.gone_at == 130.0 and s.record.last_seen == 130.0
    early = step("a", s.record, 0, 139.9, G)
    assert early.change is None and early.due == 140.0
    late = step("a", s.record, 0, 140.0, G)
    assert late.change == Change("a", "offline", 130.0) and late.due is None
    assert state_of(late.record, 200.0) == State("offline", 130.0)


def test_coming_back_soon_after_offline_is_announced_when_the_period_ends() -> None:
    rec = step("a", Record(), 1, 0.0, G).record
    rec = step("a", rec, -1, 50.0, G).record
    gone = step("a", rec, 0, 60.0, G)
    assert gone.change is not None and gone.change.status == "offline"
    back = step("a", gone.record, 1, 63.0, G)
    assert back.change is None and back.due == 70.0
    assert step("a", back.record, 0, 70.0, G).change == Change("a", "online", 70.0)
    # Gone again before the period ended: nothing to announce at all.
    again = step("a", back.record, -1, 65.0, G)
    assert again.change is None and again.due is None
    assert step("a", again.record, 0, 90.0, G).change is None


def test_a_dead_node_backdates_the_close() -> None:
    rec = step("a", Record(), 2, 0.0, G).record
    s = step("a", rec, -2, 30.0, G, gone_at=15.0)
    assert s.change == Change("a", "offline", 15.0)
    # ...but never into the future.
    t = step("a", rec, -2, 30.0, G, gone_at=99.0)
    assert t.change is None and t.record.gone_at == 30.0


def test_counts_never_go_negative() -> None:
    assert step("a", Record(), -3, 0.0, G).record == Record()
