from django.apps import AppConfig

from simsearch_project.startup import resume_collector


class StartupConfig(AppConfig):
    """Listed last in INSTALLED_APPS: its ready() runs after every other app's, admin's
    autodiscovery (which imports torch and the index code) included."""

    name = "simsearch_project"
    label = "simsearch_startup"
    verbose_name = "simsearch start-up"

    def ready(self) -> None:
        resume_collector()
