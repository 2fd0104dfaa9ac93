"""Settings for the test suite: production settings (DEBUG off) with test-only defaults."""

import os
import uuid
from pathlib import Path

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("DJANGO_SECURE_COOKIES", "false")
# A queue of its own, so a qcluster started by a test never takes work from (or gives work to)
# a demo or production cluster on the same broker.
os.environ.setdefault("SIMSEARCH_QUEUE_NAME", f"simsearch-test-{uuid.uuid4().hex[:8]}")
# Real open_clip code with the tiny shipped architecture and random weights; never the hub.
os.environ.setdefault("SIMSEARCH_MODEL", "simsearch-tiny")
os.environ.setdefault("SIMSEARCH_PRETRAINED", "untrained")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The anomaly features at a small input size: the same code, a quarter of the work per photo.
os.environ.setdefault("SIMSEARCH_ANOMALY_INPUT_SIZE", "128")
os.environ.setdefault("SIMSEARCH_DATA_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
