"""The same fan-out job on Django Channels: daphne, in-memory channel layer, group_send.

Run from ``bench/peers``::

    daphne -b 127.0.0.1 -p 8003 channels_app.asgi:application
"""
