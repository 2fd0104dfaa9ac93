#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsearch_project.settings")
    from simsearch_project.startup import configure_blas, pause_collector

    configure_blas()  # before numpy loads (simsearch_project/startup.py)
    pause_collector()  # until set-up is done (simsearch_project/startup.py)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
