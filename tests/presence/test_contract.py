"""The ``Presence`` contract (``parley.presence.base``), run against every backend, plus
what only Redis can show: several nodes, a node that dies, and Redis outages.

Time is a manual clock (``conftest.Clock``); "nothing was announced" is shown with a
sentinel user whose change is announced after the moment in question."""

from __future__ import annotations

import asyncio
import inspect

from parley.presence.base import Change
from parley.presence.redis import RedisPresence

from .conftest import GRACE, Clock, Node, NodeFactory, RedisProcess


async def sentinel(node: Node, name: str) -> None:
    """Connect ``name`` and wait for its online change: every change due before it has
    been reported by then."""
    node.presence.connected(name)
    await node.settle()
    await node.wait_for(name, "online")


def of(node: Node, user: str) -> list[tuple[str, float]]:
    return [(c.status, c.last_seen) for c in node.changes if c.user_id == user]


# -- every backend -------------------------------------------------------------------------


async def test_counting_is_a_plain_call(make_node: NodeFactory) -> None:
    node = await make_node()
    assert not inspect.iscoroutinefunction(node.presence.connected)
    assert not inspect.iscoroutinefunction(node.presence.disconnected)
    for _ in range(1000):
        node.presence.connected("alice")
    for _ in range(1000):
        node.presence.disconnected("alice")
    await node.settle()


async def test_first_connection_announces_online_once(make_node: NodeFactory, clock: Clock) -> None:
    node = await make_node()
    node.presence.connected("alice")
    node.presence.connected("alice")
    await node.settle()
    assert await node.presence.online(["alice", "bob"]) == {"alice"}
    await sentinel(node, "zed")
    assert of(node, "alice") == [("online", clock.now)]


async def test_offline_after_the_grace_period(make_node: NodeFactory, clock: Clock) -> None:
    node = await make_node()
    node.presence.connected("alice")
    await node.settle()
    clock.advance(60)
    node.presence.disconnected("alice")
    await node.settle()
    closed_at = clock.now
    assert await node.presence.online(["alice"]) == set()
    clock.advance(GRACE - 1)
    await node.sweep()
    state = (await node.presence.states(["alice"]))["alice"]
    assert state.status == "online"  # still within the grace period
    await sentinel(node, "zed")
    assert [s for s, _ in of(node, "alice")] == ["online"]
    clock.advance(1)
    await node.sweep()
    change = await node.wait_for("alice", "offline")
    assert change.last_seen == closed_at  # when the last connection closed
    state = (await node.presence.states(["alice"]))["alice"]
    assert (state.status, state.last_seen) == ("offline", closed_at)


async def test_reconnect_within_grace_announces_nothing(
    make_node: NodeFactory, clock: Clock
) -> None:
    node = await make_node()
    node.presence.connected("alice")
    await node.settle()
    clock.advance(30)
    node.presence.disconnected("alice")
    await node.settle()
    clock.advance(GRACE / 2)
    node.presence.connected("alice")
    await node.settle()
    clock.advance(GRACE * 3)
    await node.sweep()
    await sentinel(node, "zed")
    assert [s for s, _ in of(node, "alice")] == ["online"]
    assert await node.presence.online(["alice"]) == {"alice"}


async def test_flapping_changes_at_most_once_per_grace_period(
    make_node: NodeFactory, clock: Clock
) -> None:
    """A connection that drops for a bit longer than the grace period, again and again:
    without the bound that is two changes per cycle."""
    node = await make_node()
    start = clock.now
    times: list[float] = []
    for _ in range(30):
        node.presence.connected("alice")
        await node.settle()
        clock.advance(0.5)
        node.presence.disconnected("alice")
        await node.settle()
        for _ in range(3):  # the sweeps a node would run meanwhile
            clock.advance(GRACE * 0.4)
            await node.sweep()
    elapsed = clock.now - start
    times = [c.last_seen for c in node.changes if c.user_id == "alice" and c.status == "online"]
    changes = [c for c in node.changes if c.user_id == "alice"]
    assert len(changes) <= elapsed / GRACE + 1
    # ...and the status still follows the user: more than one cycle was announced.
    assert len(times) > 1 and changes[-1].status in ("online", "offline")
    clock.advance(GRACE * 2)
    await node.sweep()
    clock.advance(GRACE * 2)
    await node.sweep()
    assert (await node.presence.states(["alice"]))["alice"].status == "offline"


async def test_change_held_back_by_the_bound_is_announced_later(
    make_node: NodeFactory, clock: Clock
) -> None:
    node = await make_node()
    node.presence.connected("alice")
    await node.settle()
    node.presence.disconnected("alice")
    await node.settle()
    clock.advance(GRACE)
    await node.sweep()
    await node.wait_for("alice", "offline")
    offline_at = clock.now
    clock.advance(1)
    node.presence.connected("alice")  # back 1 s after being announced offline
    await node.settle()
    await sentinel(node, "zed")
    assert [s for s, _ in of(node, "alice")] == ["online", "offline"]
    clock.advance(GRACE - 1)
    await node.sweep()
    assert of(node, "alice")[1:] == [
        ("offline", offline_at - GRACE),
        ("online", offline_at + GRACE),
    ]


async def test_states_and_online_for_many_users(make_node: NodeFactory, clock: Clock) -> None:
    node = await make_node()
    users = [f"u{i}" for i in range(500)]
    for user in users[::2]:
        node.presence.connected(user)
    await node.settle()
    assert await node.presence.online([*users, "nobody", "u0"]) == set(users[::2])
    states = await node.presence.states(["u0", "u1", "émile"])
    assert states["u0"].status == "online" and states["u0"].last_seen == clock.now
    assert states["u1"].status == "offline" and states["u1"].last_seen is None
    assert states["émile"].status == "offline"
    assert await node.presence.online([]) == set()


async def test_more_disconnects_than_connects_do_not_go_negative(make_node: NodeFactory) -> None:
    node = await make_node()
    node.presence.disconnected("alice")
    node.presence.connected("alice")
    await node.settle()
    assert await node.presence.online(["alice"]) == {"alice"}


# -- Redis only: several nodes, a dead node, an outage ---------------------------------


async def test_online_on_any_node(make_redis_node: NodeFactory, clock: Clock) -> None:
    a, b = await make_redis_node(), await make_redis_node()
    a.presence.connected("alice")
    b.presence.connected("alice")
    b.presence.connected("bob")
    await a.settle()
    await b.settle()
    assert await a.presence.online(["alice", "bob", "carol"]) == {"alice", "bob"}
    # Each change is reported once, by one node.
    alice = [c for n in (a, b) for c in n.changes if c.user_id == "alice"]
    assert [c.status for c in alice] == ["online"]
    # Alice's connection on node a closes; she is still on node b.
    clock.advance(1)
    a.presence.disconnected("alice")
    await a.settle()
    clock.advance(GRACE * 1.2)
    await a.sweep()
    await b.sweep()
    await sentinel(a, "zed")
    assert [c.status for n in (a, b) for c in n.changes if c.user_id == "alice"] == ["online"]
    assert await b.presence.online(["alice"]) == {"alice"}


async def test_grace_is_cluster_wide(make_redis_node: NodeFactory, clock: Clock) -> None:
    """Leaving one node and joining another within the grace period announces nothing."""
    a, b = await make_redis_node(), await make_redis_node()
    a.presence.connected("alice")
    await a.settle()
    clock.advance(5)
    a.presence.disconnected("alice")
    await a.settle()
    clock.advance(2)
    b.presence.connected("alice")
    await b.settle()
    clock.advance(GRACE)
    await a.sweep()
    await b.sweep()
    await sentinel(b, "zed")
    assert [c.status for n in (a, b) for c in n.changes if c.user_id == "alice"] == ["online"]


async def test_dead_node_users_go_offline(make_redis_node: NodeFactory, clock: Clock) -> None:
    survivor = await make_redis_node()
    doomed = await make_redis_node()
    assert isinstance(doomed.presence, RedisPresence)
    doomed.presence.connected("alice")
    doomed.presence.connected("bob")
    survivor.presence.connected("bob")  # bob is on both nodes
    await doomed.settle()
    await survivor.settle()
    last_beat = clock.now
    # SIGKILL, as far as Redis can tell: the node stops without a word.
    task = doomed.presence._task
    assert task is not None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    clock.advance(10)  # heartbeat not expired yet (15 s)
    await survivor.sweep()
    assert await survivor.presence.online(["alice", "bob"]) == {"alice", "bob"}
    clock.advance(6)
    survivor.presence.connected("keepalive")  # the survivor beats on its next round
    await survivor.sweep()
    change = await survivor.wait_for("alice", "offline")
    # The grace period counts from the dead node's last heartbeat, already over.
    assert change.last_seen == last_beat
    assert await survivor.presence.online(["alice", "bob"]) == {"bob"}
    bob = [c.status for n in (survivor, doomed) for c in n.changes if c.user_id == "bob"]
    assert bob == ["online"]  # and never offline


async def test_outage_keeps_local_counts_and_reannounces(
    make_redis_node: NodeFactory, own_redis: RedisProcess
) -> None:
    """Redis goes away and comes back empty: the node counts its connections again and
    announces what changed, without crashing meanwhile."""
    own_redis.start()
    node = await make_redis_node(url=own_redis.url)
    node.presence.connected("alice")
    await node.settle()
    await node.wait_for("alice", "online")
    own_redis.kill()
    node.presence.connected("bob")  # during the outage
    node.presence.disconnected("alice")
    node.presence.connected("carol")
    assert await node.presence.online(["alice", "bob", "carol"]) == {"bob", "carol"}
    states = await node.presence.states(["bob", "alice"])
    assert states["bob"].status == "online"
    await node.settle()  # returns while Redis is away
    own_redis.start()
    await node.wait_for("bob", "online", within=20)
    await node.wait_for("carol", "online", within=20)
    assert node.presence.healthy
    assert await node.presence.online(["alice", "bob", "carol"]) == {"bob", "carol"}


def test_change_is_a_value() -> None:
    assert Change("a", "online", 1.0) == Change("a", "online", 1.0)
