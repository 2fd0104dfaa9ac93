"""gunicorn settings for the web service (README, "Running in production"):

    gunicorn -c python:simsearch_project.gunicorn_conf simsearch_project.wsgi:application --bind 127.0.0.1:8000

Flags on the command line (and GUNICORN_CMD_ARGS) override these."""

from __future__ import annotations

import os
import threading

# Threads, so that the queries that reach one process at the same time are embedded in one forward
# pass (indexing/batcher.py, SIMSEARCH_QUERY_BATCH_SIZE). Each thread decodes its own request; only
# the batcher's thread runs the model, with SIMSEARCH_TORCH_THREADS cores: keep
# workers x SIMSEARCH_TORCH_THREADS <= cores, whatever the number of threads.
worker_class = "gthread"
threads = 8
# gunicorn's own variable for the process count, as without a config file.
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)
timeout = 120
# Never preload: each worker loads torch and the model itself, after the fork (torch and fork do not mix).
preload_app = False


def post_worker_init(worker: object) -> None:
    """In each worker, once the app is loaded: load the model and the active indexes in the
    background (search_api.search.warm_up), not in the first search after a restart."""
    from search_api.search import warm_up

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
