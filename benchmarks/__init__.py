"""Performance measurements (README, Performance): each module prints its table and asserts nothing."""

from simsearch_project.startup import configure_blas

configure_blas()  # as manage.py and the WSGI module do, before numpy loads
