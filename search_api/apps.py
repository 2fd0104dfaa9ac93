from django.apps import AppConfig


class SearchApiConfig(AppConfig):
    name = "search_api"
    verbose_name = "Search API"

    def ready(self) -> None:
        # Only wiring: revoked credentials leave the outage cache of the token authentication.
        from simsearch_project import credential_cache

        credential_cache.connect_signals()
