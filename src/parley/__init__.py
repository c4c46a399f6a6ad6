"""Parley: a self-hosted real-time chat backend.

Every message arrives, once, in order, fast. See ``docs/protocol.md`` for the wire
protocol and ``README.md`` for the two commands (serve, test).

``parley`` is shared by two distributions: this one (the server) and ``parley-client``
(``parley.client``, the Python SDK, and ``parley.codes``, the protocol's vocabulary), which
the server depends on. ``extend_path`` lets them live in different directories, as they
do in a checkout installed with ``pip install -e``.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
