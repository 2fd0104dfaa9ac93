from csp.decorators import csp_update
from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.i18n import JavaScriptCatalog
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from catalog.media import serve_media
from search_api.apis import healthz, readyz
from search_api.console import search_console
from simsearch_project.views import home

urlpatterns = [
    path("", home, name="home"),
    # The staff search console lives in the admin (its login, its look) before the admin's own URLs.
    path("admin/search/", admin.site.admin_view(search_console), name="search-console"),
    path("admin/", admin.site.urls),
    # The admin's language switch posts to i18n/setlang/; pages' scripts read their words from
    # jsi18n/ (a script file of this origin, so it runs under the Content-Security-Policy).
    path("i18n/", include("django.conf.urls.i18n")),
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    path("api/", include("catalog.urls")),
    path("api/", include("search_api.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up code as a script file, not an inline <script>, so the
    # docs run under the Content-Security-Policy (script-src 'self') like every other page.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    # The package's ReDoc page links Google Fonts; ours is the same page without them (offline).
    # ReDoc runs its search in a worker it makes from a blob: URL (which only script already
    # running on the page can create), so that page alone may start one.
    path(
        "api/redoc/",
        csp_update({"worker-src": ["'self'", "blob:"]})(
            SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html")
        ),
        name="redoc",
    ),
]

if settings.SIMSEARCH_STORAGE == "local":
    # Local storage has no server of its own; S3 deployments hand out presigned links instead.
    # Only pictures are served: never index files (see catalog.media).
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", serve_media, name="media"),
    ]

handler400 = "simsearch_project.api.bad_request"
handler403 = "simsearch_project.api.permission_denied"
handler404 = "simsearch_project.api.page_not_found"
handler500 = "simsearch_project.api.server_error"
