"""Settings, read from the environment (see the configuration table in README.md)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from indexing.weights import is_checkpoint_path, is_sha256_hex
from simsearch_project.startup import configure_blas

# The entry points (manage.py, WSGI, ASGI, benchmarks) do this before anything loads numpy; here
# it reaches processes that start elsewhere (pytest, a script calling django.setup()) before the
# apps load FAISS. The operator's own values win.
configure_blas()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name)
    if not value:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}.")


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}.") from None


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random value "
            "(or set DJANGO_DEBUG=true for local development only)."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"

ALLOWED_HOSTS = [h.strip() for h in env_str("DJANGO_ALLOWED_HOSTS").split(",") if h.strip()]
if DEBUG and not ALLOWED_HOSTS:
    ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env_str("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o.strip()]

DATA_DIR = Path(env_str("SIMSEARCH_DATA_DIR") or BASE_DIR / "var").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    "django_q",
    "catalog",
    "indexing",
    "search_api",
    # Last: turns the garbage collector back on once set-up is done (simsearch_project/startup.py).
    "simsearch_project.apps.StartupConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outside WhiteNoise (static files need no policy), around everything else, 413s included.
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions and before CommonMiddleware, as Django requires: every later middleware and view
    # speaks the language of the switch's cookie, else of Accept-Language, else LANGUAGE_CODE.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication (the cap depends on who is signed in) and still before anything reads
    # the body: CSRF reads POST in process_view, which runs after every middleware's __call__.
    "simsearch_project.middleware.request_body_size_limit",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "simsearch_project.urls"
WSGI_APPLICATION = "simsearch_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3"}}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The task queue and the web server write concurrently: WAL plus a busy timeout avoid
    # "database is locked"; IMMEDIATE takes the write lock up front.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file-backed test database, so that processes started by a test (qcluster, gunicorn)
    # see the rows the test wrote.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Storage ------------------------------------------------------------------------------
SIMSEARCH_STORAGE = env_str("SIMSEARCH_STORAGE", "local").lower()
MEDIA_URL = "/media/"
MEDIA_ROOT = DATA_DIR / "media"
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_STORAGE_BACKEND = "whitenoise.storage.CompressedStaticFilesStorage"

if SIMSEARCH_STORAGE == "local":
    # Location and URL follow MEDIA_ROOT / MEDIA_URL.
    DEFAULT_STORAGE = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
elif SIMSEARCH_STORAGE == "s3":
    missing = [
        name
        for name in (
            "AWS_STORAGE_BUCKET_NAME",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        )
        if not env_str(name)
    ]
    if missing:
        raise ImproperlyConfigured(f"SIMSEARCH_STORAGE=s3 needs {', '.join(missing)}.")
    DEFAULT_STORAGE = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
            "access_key": env_str("AWS_ACCESS_KEY_ID"),
            "secret_key": env_str("AWS_SECRET_ACCESS_KEY"),
            "region_name": env_str("AWS_S3_REGION_NAME", "us-east-1"),
            "addressing_style": "path",
            "signature_version": "s3v4",
            # Objects stay private; clients get presigned links that expire.
            "default_acl": None,
            "querystring_auth": True,
            "querystring_expire": env_int("SIMSEARCH_S3_URL_EXPIRE_SECONDS", 3600),
            "file_overwrite": False,
            # Optional key prefix inside the bucket (several deployments can share one bucket).
            "location": env_str("AWS_LOCATION"),
        },
    }
else:
    raise ImproperlyConfigured(f"SIMSEARCH_STORAGE must be 'local' or 's3', not {SIMSEARCH_STORAGE!r}.")

STORAGES = {
    "default": DEFAULT_STORAGE,
    "staticfiles": {"BACKEND": STATICFILES_STORAGE_BACKEND},
}
# Serve static files from the app packages too, so `make demo` works without collectstatic.
WHITENOISE_USE_FINDERS = True

# --- Uploads ------------------------------------------------------------------------------
SIMSEARCH_MAX_UPLOAD_BYTES = env_int("SIMSEARCH_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
SIMSEARCH_MAX_IMAGE_PIXELS = env_int("SIMSEARCH_MAX_IMAGE_PIXELS", 60_000_000)
# Longest side / shortest side. Strips beyond it are refused: no camera photo of a part looks like
# that, and stretching one to the model's input is where the memory would go.
SIMSEARCH_MAX_ASPECT_RATIO = float(env_str("SIMSEARCH_MAX_ASPECT_RATIO", "400"))
SIMSEARCH_BULK_UPLOAD_MAX_FILES = env_int("SIMSEARCH_BULK_UPLOAD_MAX_FILES", 500)
DATA_UPLOAD_MAX_NUMBER_FILES = SIMSEARCH_BULK_UPLOAD_MAX_FILES
# Uploads above this size spool to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- Embeddings and indexes ---------------------------------------------------------------
SIMSEARCH_MODEL = env_str("SIMSEARCH_MODEL", "ViT-B-32")
SIMSEARCH_PRETRAINED = env_str("SIMSEARCH_PRETRAINED", "laion2b_s34b_b79k")
# When set, the checkpoint file must have this sha256 (checked at load; `manage.py fetch_weights` prints it).
SIMSEARCH_PRETRAINED_SHA256 = env_str("SIMSEARCH_PRETRAINED_SHA256", "").lower()
if SIMSEARCH_PRETRAINED_SHA256:
    if not is_sha256_hex(SIMSEARCH_PRETRAINED_SHA256):
        raise ImproperlyConfigured(
            f"SIMSEARCH_PRETRAINED_SHA256 must be the 64 hex digits that `sha256sum <checkpoint>` prints, "
            f"not {SIMSEARCH_PRETRAINED_SHA256!r}."
        )
    if not is_checkpoint_path(SIMSEARCH_PRETRAINED):
        raise ImproperlyConfigured(
            f"SIMSEARCH_PRETRAINED_SHA256 is set, but SIMSEARCH_PRETRAINED={SIMSEARCH_PRETRAINED!r} is not a "
            f"checkpoint file (an open_clip tag or 'untrained'), so there is no file to check. Set "
            f"SIMSEARCH_PRETRAINED to the checkpoint's path (`manage.py fetch_weights` prints both settings), "
            f"or unset SIMSEARCH_PRETRAINED_SHA256."
        )
SIMSEARCH_DEVICE = env_str("SIMSEARCH_DEVICE", "auto")  # auto | cpu | cuda
# torch threads per process; 0 = torch's default (all cores). Keep workers x threads <= cores.
SIMSEARCH_TORCH_THREADS = env_int("SIMSEARCH_TORCH_THREADS", 0)
SIMSEARCH_EMBED_BATCH_SIZE = env_int("SIMSEARCH_EMBED_BATCH_SIZE", 32)
# Query photos that concurrent requests of one serving process embed in one forward pass
# (indexing/batcher.py), and how long the first of them waits for the others; 0 or 1 = off.
SIMSEARCH_QUERY_BATCH_SIZE = env_int("SIMSEARCH_QUERY_BATCH_SIZE", 8)
if not 0 <= SIMSEARCH_QUERY_BATCH_SIZE <= 256:
    raise ImproperlyConfigured(
        f"SIMSEARCH_QUERY_BATCH_SIZE must be between 0 and 256 (0 or 1: no batching), not {SIMSEARCH_QUERY_BATCH_SIZE}."
    )
try:
    SIMSEARCH_QUERY_BATCH_WAIT_MS = float(env_str("SIMSEARCH_QUERY_BATCH_WAIT_MS") or "20")
except ValueError:
    raise ImproperlyConfigured("SIMSEARCH_QUERY_BATCH_WAIT_MS must be a number of milliseconds such as 20.") from None
if not 0 <= SIMSEARCH_QUERY_BATCH_WAIT_MS <= 1000:
    raise ImproperlyConfigured(
        f"SIMSEARCH_QUERY_BATCH_WAIT_MS must be between 0 and 1000 milliseconds, not {SIMSEARCH_QUERY_BATCH_WAIT_MS}."
    )
SIMSEARCH_INDEX_PREFIX = env_str("SIMSEARCH_INDEX_PREFIX", "index-builds")
# Ready builds kept for rollback besides the active one, per image type and engine; older ones
# (rows and files) are removed after each successful build and by `manage.py prune_index_builds`.
SIMSEARCH_KEEP_BUILDS = env_int("SIMSEARCH_KEEP_BUILDS", 5)
SIMSEARCH_INDEX_CACHE_DIR = DATA_DIR / "index_cache"
# A running build whose worker has not reported progress for this long is marked failed.
SIMSEARCH_BUILD_STALE_SECONDS = env_int("SIMSEARCH_BUILD_STALE_SECONDS", 600)
# Images to embed per chunk of a queued build; every qcluster worker on the broker may take a
# chunk (more hosts, faster rebuilds). 0: the build's own task embeds everything.
SIMSEARCH_BUILD_CHUNK_SIZE = env_int("SIMSEARCH_BUILD_CHUNK_SIZE", 512)
if SIMSEARCH_BUILD_CHUNK_SIZE < 0:
    raise ImproperlyConfigured("SIMSEARCH_BUILD_CHUNK_SIZE must be 0 (off) or a number of images.")
# How often a serving process checks for a newly activated build.
SIMSEARCH_INDEX_POLL_SECONDS = float(env_str("SIMSEARCH_INDEX_POLL_SECONDS", "2"))
SIMSEARCH_REBUILD_ON_STARTUP = env_bool("SIMSEARCH_REBUILD_ON_STARTUP", False)
# A build's index is exact (flat) up to this many vectors and approximate (IVF) above it, with
# recall@10 against exact search measured on the build's own vectors and raised to the target by
# reading more lists (README, Sizing). Read when a build is made.
SIMSEARCH_EXACT_INDEX_MAX = env_int("SIMSEARCH_EXACT_INDEX_MAX", 100_000)
try:
    SIMSEARCH_INDEX_RECALL_TARGET = float(env_str("SIMSEARCH_INDEX_RECALL_TARGET") or "0.95")
except ValueError:
    raise ImproperlyConfigured("SIMSEARCH_INDEX_RECALL_TARGET must be a number such as 0.95.") from None
if not 0 < SIMSEARCH_INDEX_RECALL_TARGET <= 1:
    raise ImproperlyConfigured(
        f"SIMSEARCH_INDEX_RECALL_TARGET must be above 0 and at most 1, not {SIMSEARCH_INDEX_RECALL_TARGET}."
    )
# Catalog adaptation (indexing/adaptation.py) when a rebuild does not say: off | on.
SIMSEARCH_ADAPT = env_str("SIMSEARCH_ADAPT", "off").lower()
if SIMSEARCH_ADAPT not in ("off", "on"):
    raise ImproperlyConfigured(f"SIMSEARCH_ADAPT must be off or on, not {SIMSEARCH_ADAPT!r}.")
USE_INDEX_V2 = env_bool("USE_INDEX_V2", True)
INDEX_DIR_V1 = env_str("INDEX_DIR_V1")
# Calibrated "no match": the share of right answers a type's threshold must reach in the build's
# own leave-one-out matches (indexing/calibration.py). Read when a build is made.
try:
    SIMSEARCH_MATCH_PRECISION = float(env_str("SIMSEARCH_MATCH_PRECISION") or "0.9")
except ValueError:
    raise ImproperlyConfigured("SIMSEARCH_MATCH_PRECISION must be a number such as 0.9.") from None
if not 0.5 <= SIMSEARCH_MATCH_PRECISION <= 1:
    raise ImproperlyConfigured(f"SIMSEARCH_MATCH_PRECISION must be between 0.5 and 1, not {SIMSEARCH_MATCH_PRECISION}.")

# --- Search API ---------------------------------------------------------------------------
SIMSEARCH_SEARCH_THROTTLE = env_str("SIMSEARCH_SEARCH_THROTTLE", "600/minute")
SIMSEARCH_TEMP_IMAGE_TTL_SECONDS = env_int("SIMSEARCH_TEMP_IMAGE_TTL_SECONDS", 24 * 3600)
# Search history rows older than this are deleted by a daily schedule.
# Anomaly check (PatchCore-style, a torchvision ResNet's patch features): a product needs this
# many normal images for a model; the feature weights are "untrained" (random, flagged) or the
# path of a torchvision state_dict; results (heatmap, overlay, raw map) expire after the TTL.
SIMSEARCH_ANOMALY_MIN_NORMALS = max(2, env_int("SIMSEARCH_ANOMALY_MIN_NORMALS", 5))
SIMSEARCH_ANOMALY_BACKBONE = env_str("SIMSEARCH_ANOMALY_BACKBONE", "resnet18")
SIMSEARCH_ANOMALY_WEIGHTS = env_str("SIMSEARCH_ANOMALY_WEIGHTS", "untrained")
# When set, the weights file must have this sha256 (checked at load: a wrong copy is refused).
SIMSEARCH_ANOMALY_WEIGHTS_SHA256 = env_str("SIMSEARCH_ANOMALY_WEIGHTS_SHA256", "")
SIMSEARCH_ANOMALY_INPUT_SIZE = env_int("SIMSEARCH_ANOMALY_INPUT_SIZE", 256)
# The ResNet's arithmetic on the CPU: "auto" (bfloat16 where the CPU has AMX or AVX512-BF16,
# else float32), "float32" or "bfloat16" (indexing.anomaly.PatchFeatureExtractor).
SIMSEARCH_ANOMALY_PRECISION = env_str("SIMSEARCH_ANOMALY_PRECISION", "auto")
if SIMSEARCH_ANOMALY_PRECISION not in ("auto", "float32", "bfloat16"):
    raise ImproperlyConfigured(
        f"SIMSEARCH_ANOMALY_PRECISION must be auto, float32 or bfloat16, not {SIMSEARCH_ANOMALY_PRECISION!r}."
    )
SIMSEARCH_ANOMALY_MAX_NORMALS = env_int("SIMSEARCH_ANOMALY_MAX_NORMALS", 200)
SIMSEARCH_ANOMALY_MAX_EVAL_DEFECTS = env_int("SIMSEARCH_ANOMALY_MAX_EVAL_DEFECTS", 100)
SIMSEARCH_RESULT_PREFIX = env_str("SIMSEARCH_RESULT_PREFIX", "anomaly-results")
SIMSEARCH_RESULT_TTL_SECONDS = env_int("SIMSEARCH_RESULT_TTL_SECONDS", 24 * 3600)
SIMSEARCH_SEARCH_LOG_DAYS = env_int("SIMSEARCH_SEARCH_LOG_DAYS", 90)
# Largest request body /api/ accepts (an upload plus its form fields).
SIMSEARCH_MAX_REQUEST_BYTES = env_int("SIMSEARCH_MAX_REQUEST_BYTES", SIMSEARCH_MAX_UPLOAD_BYTES + 1024 * 1024)
# Largest body any other page accepts from anyone but signed-in staff (a login form is a few hundred
# bytes); refused before it is read, so an anonymous client cannot make the server spool gigabytes.
SIMSEARCH_MAX_FORM_REQUEST_BYTES = env_int("SIMSEARCH_MAX_FORM_REQUEST_BYTES", 1024 * 1024)
# Largest admin body from signed-in staff: one bulk upload of many photos.
SIMSEARCH_MAX_ADMIN_REQUEST_BYTES = env_int("SIMSEARCH_MAX_ADMIN_REQUEST_BYTES", 1024 * 1024 * 1024)

# --- Cache, queue -------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    # Per-process only: set REDIS_URL in production so throttling is shared by all workers.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Tokens the database confirmed, for answering searches while it is unreachable
# (simsearch_project.credential_cache). Shared by every process, so that revoking a credential in
# one process removes it for all: Redis when configured, otherwise files in the data dir (one host).
if REDIS_URL:
    CACHES["credentials"] = {**CACHES["default"], "KEY_PREFIX": "credentials"}
else:
    CACHES["credentials"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "credential_cache"),
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
# How long a confirmed token is honoured during a database outage; 0 turns the fallback off.
SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS = env_int("SIMSEARCH_AUTH_OUTAGE_CACHE_SECONDS", 600)

Q_CLUSTER: dict = {
    "name": env_str("SIMSEARCH_QUEUE_NAME", "simsearch"),
    "workers": env_int("SIMSEARCH_QUEUE_WORKERS", 2),
    # Index builds can run for a long time: `retry` must exceed `timeout`, or the broker
    # hands a running task out a second time.
    "timeout": env_int("SIMSEARCH_TASK_TIMEOUT_SECONDS", 3 * 3600),
    "retry": env_int("SIMSEARCH_TASK_TIMEOUT_SECONDS", 3 * 3600) + 600,
    "max_attempts": 1,
    "recycle": 50,
    "save_limit": 500,
    "catch_up": False,
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth, API ----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Password sign-ins (the admin login) go through django-axes first, which refuses a locked-out
# username + address before the password is even checked. API tokens never reach a backend.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("SIMSEARCH_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("SIMSEARCH_LOGIN_COOLOFF_MINUTES", 15))
# Username and address together: a guesser at one desk cannot lock a colleague out from another.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "simsearch_project.login_lockout.lockout_response"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "simsearch_project.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "simsearch_project.drf_defaults.PageNumberPagination",
    "DEFAULT_PARSER_CLASSES": [
        "simsearch_project.drf_defaults.BoundedJSONParser",
        "simsearch_project.drf_defaults.StrictFormParser",
        "simsearch_project.drf_defaults.StrictMultiPartParser",
    ],
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "simsearch_project.filters.StrictDjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "simsearch_project.drf_defaults.UTF8JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_SCHEMA_CLASS": "simsearch_project.schema.SimsearchAutoSchema",
    "DEFAULT_THROTTLE_RATES": {"search": SIMSEARCH_SEARCH_THROTTLE},
    "EXCEPTION_HANDLER": "simsearch_project.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "simsearch API",
    "DESCRIPTION": _("Catalog and image similarity search for manufacturing inspection."),
    "VERSION": "1.0.0",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "CatalogImageTypeEnum": "catalog.models.ImageType",
        "GalleryTypeEnum": "indexing.models.GalleryType",
        "FocusEnum": "search_api.focus.FOCUS_CHOICES",
        "QueryTempTypeEnum": ["query_temp"],
        "UploadImageTypeEnum": "catalog.serializers.UPLOAD_IMAGE_TYPES",
    },
    # Swagger UI and ReDoc come from the installed sidecar package, never a CDN: the docs work on a
    # plant network without internet and fit the same-origin Content-Security-Policy below.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Content-Security-Policy (django-csp) -------------------------------------------------
# Everything from this origin, no inline or eval'd scripts (templates load their JS from static
# files). Images may also be data: URIs (admin and Swagger UI icons) and, with S3 storage,
# presigned links to the object store (admin thumbnails, search results).
_csp_image_sources = ["'self'", "data:"]
if SIMSEARCH_STORAGE == "s3":
    _s3_endpoint = urlsplit(env_str("AWS_S3_ENDPOINT_URL"))
    if _s3_endpoint.scheme and _s3_endpoint.netloc:
        _csp_image_sources.append(f"{_s3_endpoint.scheme}://{_s3_endpoint.netloc}")
    else:  # AWS itself, path-style addressing (see the storage OPTIONS above)
        _csp_image_sources += [
            "https://s3.amazonaws.com",
            f"https://s3.{env_str('AWS_S3_REGION_NAME', 'us-east-1')}.amazonaws.com",
        ]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        # 'unsafe-inline' for styles only: Django admin templates and the admin's HTML helpers use
        # style attributes, and Swagger UI / ReDoc inject <style> elements. Styles run no script.
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": _csp_image_sources,
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# --- Languages ----------------------------------------------------------------------------
# The plant's staff read Korean; English stays the default unless DJANGO_LANGUAGE_CODE says otherwise.
# Each request may still choose (the admin's language switch, or the API's Accept-Language).
LANGUAGES = [("en", "English"), ("ko", "한국어")]
LANGUAGE_CODE = env_str("DJANGO_LANGUAGE_CODE", "en")
if LANGUAGE_CODE not in dict(LANGUAGES):
    raise ImproperlyConfigured(
        f"DJANGO_LANGUAGE_CODE must be one of {', '.join(dict(LANGUAGES))}, not {LANGUAGE_CODE!r}."
    )
# The project's translations (locale/<lang>/LC_MESSAGES/*.po); `make` compiles them to .mo files.
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

LOGIN_URL = "admin:login"

# --- Production hardening (active when DEBUG is off) --------------------------------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # open_clip logs chatty INFO lines on the root logger; the project's own loggers stay at INFO.
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "WARNING")},
    "loggers": {
        name: {"level": env_str("SIMSEARCH_LOG_LEVEL", "INFO")}
        for name in ("catalog", "indexing", "search_api", "django-q", "django.request")
    },
}
