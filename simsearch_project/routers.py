from rest_framework import routers


class OptionalSlashRouter(routers.DefaultRouter):
    """Routes that answer with and without the trailing slash (clients of the old service
    call `/api/search/similarity`); POSTs must not be redirected."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"
