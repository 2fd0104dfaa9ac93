import os

from simsearch_project.startup import configure_blas, pause_collector

configure_blas()  # before numpy loads
pause_collector()  # until set-up is done (simsearch_project/startup.py)

from django.core.wsgi import get_wsgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsearch_project.settings")
application = get_wsgi_application()
