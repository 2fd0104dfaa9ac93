from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from search_api.apis import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("catalog.urls")),
    path("api/", include("search_api.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema"),
        name="swagger-ui",
    ),
]

if settings.SIMSEARCH_STORAGE == "local":
    # Local storage has no server of its own; S3 deployments hand out presigned links instead.
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", lambda request, path: serve(request, path, settings.MEDIA_ROOT)),
    ]

handler400 = "simsearch_project.api.bad_request"
handler403 = "simsearch_project.api.permission_denied"
handler404 = "simsearch_project.api.page_not_found"
handler500 = "simsearch_project.api.server_error"
