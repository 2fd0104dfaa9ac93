import os

from simsearch_project.startup import configure_blas

configure_blas()  # before numpy loads (simsearch_project/startup.py)

from django.core.asgi import get_asgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "simsearch_project.settings")
application = get_asgi_application()
