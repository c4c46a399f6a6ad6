"""Reconnect delays: the seed's min(base·2^n, cap) plus jitter."""

from __future__ import annotations

import pytest

from parley.client.backoff import Backoff


def test_seed_formula_without_jitter() -> None:
    b = Backoff(base=1.0, cap=30.0, jitter=0.0)
    assert [b.delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_jitter_adds_up_to_its_share() -> None:
    assert Backoff(1.0, 30.0, 0.25, rand=lambda: 0.0).delay(3) == 8.0
    assert Backoff(1.0, 30.0, 0.25, rand=lambda: 0.999).delay(3) == pytest.approx(9.998)
    assert Backoff(1.0, 30.0, 0.25, rand=lambda: 0.5).delay(10) == pytest.approx(33.75)


def test_real_jitter_spreads_clients() -> None:
    b = Backoff(1.0, 30.0, 0.5)
    delays = {b.delay(2) for _ in range(50)}
    assert len(delays) > 1
    assert all(4.0 <= d < 6.0 for d in delays)


def test_huge_attempts_stay_at_the_cap() -> None:
    assert Backoff(1.0, 30.0, 0.0).delay(10_000) == 30.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Backoff(base=-1)
    with pytest.raises(ValueError):
        Backoff().delay(-1)
