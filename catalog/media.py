"""`/media/` with local storage: the files a client may download, and nothing else.

The media folder also holds every index build's files (`metadata.json` lists the whole catalog;
`faiss_index.bin`, `embeddings.pt`), which are for the servers only. The rule: never anything under
SIMSEARCH_INDEX_PREFIX; otherwise catalog pictures and previews (`images/`, `thumbnails/`, the keys
the server generates), anomaly results (SIMSEARCH_RESULT_PREFIX, under unguessable folder names)
and any other object an Image row points at (a registered query image); everything else is 404."""

from __future__ import annotations

import errno
import posixpath

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.static import serve

from catalog.selectors import image_names_referenced
from catalog.storage import resolved_name

PUBLIC_PREFIXES = ("images", "thumbnails")


def media_name_is_public(name: str) -> bool:
    """Whether the normalised storage name `name` may be served under /media/."""
    if name in ("", ".") or name == ".." or name.startswith("../"):
        return False
    index_prefix = settings.SIMSEARCH_INDEX_PREFIX.strip("/")
    if index_prefix and (name == index_prefix or name.startswith(index_prefix + "/")):
        return False
    if name.split("/", 1)[0] in PUBLIC_PREFIXES:
        return True
    # Anomaly results (heatmap, overlay, raw map) sit under a random folder name that only the
    # client who asked was given: the link is the permission, as a presigned S3 URL is.
    result_prefix = settings.SIMSEARCH_RESULT_PREFIX.strip("/")
    if result_prefix and name.startswith(result_prefix + "/") and name.count("/") >= 2:
        return True
    return bool(image_names_referenced(names=[name]))


def serve_media(request: HttpRequest, path: str) -> HttpResponse:
    # The same normalisation `serve` applies, so that `images/../index-builds/...` is judged as
    # the file it would open.
    name = posixpath.normpath(path).lstrip("/")
    try:
        # Judged as named and as the file it opens: a link must not lead to index files or out.
        if not (media_name_is_public(name) and media_name_is_public(resolved_name(name))):
            raise Http404("No such file.")
        return serve(request, name, document_root=settings.MEDIA_ROOT)
    except FileNotFoundError:
        raise Http404("No such file.") from None
    except OSError as exc:  # a name longer than the file system allows, a path through a file
        if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
            raise Http404("No such file.") from None
        raise
