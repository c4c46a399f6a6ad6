"""``parley bench``: an open-loop load generator for Parley and for the peers in ``bench/``.

It creates rooms, opens one WebSocket per simulated user, and sends chat messages on a
fixed timetable: message *i* is due at ``start + i / rate`` whatever happened to the ones
before it, and every latency is measured from that *scheduled* time. A server that falls
behind therefore shows its queueing delay in the numbers instead of silently slowing the
generator down (no coordinated omission).

Each message's content is JSON ``{"t": scheduled_monotonic, "n": number, "c": sender_index,
"p": padding}``: the receiver needs nothing but the frame to compute its latency, and
``time.monotonic`` is shared by all processes of one host.

Measured, from full log-bucket histograms:

- *delivery latency*: scheduled send → receipt at each member other than the sender;
- *ack latency*: scheduled send → the sender's own echo (for Parley, the ``chat_message``
  carrying its ``local_id``, sent only after the commit);
- *broadcast latency*: scheduled send → receipt by the last member of the room;
- *send lag*: scheduled → actual send; with the generator's own CPU share it shows
  whether the generator kept up.

Wire dialects (``--protocol``): ``parley`` (the real protocol, rooms made with
``POST /api/conversations``), ``raw`` and ``channels`` (the same JSON frames plus a
``{"action": "join", "room": …}`` frame answered by ``{"type": "joined"}``), and
``socketio`` (Engine.IO 4 / Socket.IO 5 over a WebSocket, ``join`` with an ack).

The package, one module per concern: ``histogram`` (latency histograms), ``wsclient``
(the minimal RFC 6455 client), ``dialects`` (each system's frames and handshake),
``runner`` (configuration, the run and its result) and ``cli`` (options and output).
"""

from __future__ import annotations

from parley.bench.cli import main

__all__ = ["main"]
