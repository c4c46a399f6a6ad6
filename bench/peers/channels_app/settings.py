"""Minimal Django settings for the Channels peer: no database, no auth, in-memory layer."""

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "channels_app.urls"
ASGI_APPLICATION = "channels_app.asgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
# The layer the Channels tutorial uses for a single process. Its defaults (capacity 100
# messages per channel, expiry 60 s) are kept: group_send drops what a full channel
# cannot take, and the generator counts those as lost deliveries.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
