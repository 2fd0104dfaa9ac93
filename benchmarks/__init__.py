"""Performance measurements (README, Performance): each module prints its table and asserts nothing."""

from simsearch_project.startup import quiet_idle_blas_threads

quiet_idle_blas_threads()  # as manage.py and the WSGI module do, before numpy loads
