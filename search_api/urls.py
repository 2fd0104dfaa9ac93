from django.urls import re_path

from search_api import apis

# Every path also answers without its trailing slash (clients of the old service omit it).
urlpatterns = [
    re_path(r"^search/similarity/?$", apis.SimilaritySearchApi.as_view(), name="search-similarity"),
    re_path(r"^anomaly/detect/?$", apis.AnomalyDetectApi.as_view(), name="anomaly-detect"),
    re_path(r"^index/rebuild/?$", apis.IndexRebuildApi.as_view(), name="index-rebuild"),
    re_path(r"^index/builds/?$", apis.IndexBuildListApi.as_view(), name="index-build-list"),
    re_path(r"^index/builds/(?P<pk>[0-9]+)/?$", apis.IndexBuildDetailApi.as_view(), name="index-build-detail"),
    re_path(
        r"^index/builds/(?P<pk>[0-9]+)/activate/?$", apis.IndexBuildActivateApi.as_view(), name="index-build-activate"
    ),
    re_path(r"^index/status/?$", apis.IndexStatusApi.as_view(), name="index-status"),
    re_path(r"^worker/image/register/?$", apis.WorkerImageRegisterApi.as_view(), name="worker-image-register"),
]
