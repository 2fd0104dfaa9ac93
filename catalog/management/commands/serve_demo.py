from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import unicodedata
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext
from rest_framework.authtoken.models import Token

from catalog.management.commands.create_demo_admin import PASSWORD, USERNAME
from indexing.admin import UNTRAINED_WARNING


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
        self.stdout.write(demo_banner(base))
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


def demo_banner(base: str) -> str:
    """The last thing `make demo` prints before the server's own log: everything a first user
    needs (the token and the weights warning were printed far up, before the index builds). In the
    language of DJANGO_LANGUAGE_CODE, like the pages a first user then opens; labels keep their
    column, whatever their width in that language."""
    token = Token.objects.filter(user__username=USERNAME).values_list("key", flat=True).first()
    rows = [
        (gettext("Start"), f"{base}/"),
        (
            gettext("Admin"),
            f"{base}/admin/   "
            + gettext("(user %(username)s, password %(password)s)") % {"username": USERNAME, "password": PASSWORD},
        ),
        ("API", f"{base}/api/"),
        (gettext("API docs"), f"{base}/api/docs/"),
        (
            gettext("API token"),
            f"Authorization: Token {token}" if token else gettext("none (run create_demo_admin)"),
        ),
        (gettext("Data"), str(settings.DATA_DIR)),
    ]
    # The literal, not indexing.embedder.UNTRAINED: importing the embedder loads torch into the
    # web server's parent process. demo_weights' own banner scrolled away during the builds.
    if settings.SIMSEARCH_PRETRAINED == "untrained":
        rows.append(
            (
                gettext("WARNING"),
                gettext("%(model)s runs on %(warning)s.")
                % {"model": settings.SIMSEARCH_MODEL, "warning": gettext(UNTRAINED_WARNING)},
            )
        )
        rows.append(("", gettext("Real weights: see the README section on model weights, then `make demo` again.")))
    width = max(_display_width(label) for label, _ in rows) + 1
    lines = [
        "",
        gettext("simsearch demo is starting (Ctrl-C stops the web server and the task queue)."),
        *(f"  {label}{':' if label else ' '}{' ' * (width - _display_width(label))}{value}" for label, value in rows),
    ]
    return "\n".join([*lines, ""])


def _display_width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1 for char in text)


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
