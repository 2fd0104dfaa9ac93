from django.apps import AppConfig


class SearchApiConfig(AppConfig):
    name = "search_api"
    verbose_name = "Search API"
