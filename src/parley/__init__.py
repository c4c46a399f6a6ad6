"""Parley: a self-hosted real-time chat backend.

Every message arrives, once, in order, fast. See ``docs/protocol.md`` for the wire
protocol and ``README.md`` for the two commands (serve, test).
"""

__version__ = "0.1.0"
