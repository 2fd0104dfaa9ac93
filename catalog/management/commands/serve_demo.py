from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the web server and a django-q2 qcluster beside it until Ctrl-C (used by `make demo`)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args: Any, host: str, port: str, **options: Any) -> None:
        base = f"http://{host}:{port}"
        # Stop the same way on SIGTERM as on Ctrl-C, so the qcluster never outlives the demo; and
        # honour SIGINT even when started in the background by a shell that ignores it there.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _check_port_free(host, int(port))
        # The qcluster gets its own process group, so that it is told to stop exactly once, by us:
        # django-q2 can hang half-stopped when a second signal (the terminal's Ctrl-C to the whole
        # group, then our SIGTERM) arrives while it handles the first.
        qcluster = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "qcluster"], start_new_session=True
        )
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "simsearch demo is starting (Ctrl-C stops the web server and the task queue).",
                    f"  Admin:    {base}/admin/   (user admin, password admin)",
                    f"  API:      {base}/api/",
                    f"  API docs: {base}/api/docs/",
                    f"  Data:     {settings.DATA_DIR}",
                    "",
                ]
            )
        )
        try:
            call_command("runserver", f"{host}:{port}", use_reloader=False)
        except KeyboardInterrupt:
            pass
        finally:
            # A second Ctrl-C must not abandon the queue process half-way through stopping it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if qcluster.poll() is None:
                qcluster.terminate()
                try:
                    qcluster.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    # Still busy (a long build): end the whole cluster; the stale-build check marks
                    # an interrupted build failed.
                    os.killpg(qcluster.pid, signal.SIGKILL)
                    qcluster.wait()
            self.stdout.write("Stopped the web server and the task queue.")


def _check_port_free(host: str, port: int) -> None:
    """runserver exits the process outright when its port is taken, which would leave the
    qcluster running: find out before starting it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"Cannot serve on {host}:{port} ({exc.strerror}); try `make demo PORT={port + 1}`."
            ) from exc
