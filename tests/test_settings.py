"""Settings come from the environment; production settings refuse to run unsafely."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SIMSEARCH_", "AWS_"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "simsearch_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = manage("check", env={"SIMSEARCH_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_debug_is_off_unless_set(tmp_path: Path) -> None:
    script = "from django.conf import settings; print(settings.DEBUG)"
    result = manage("shell", "-c", script, env={"SIMSEARCH_DATA_DIR": str(tmp_path), "DJANGO_SECRET_KEY": "x" * 60})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_check_deploy_passes_with_production_like_settings(tmp_path: Path, seaweedfs) -> None:
    env = {
        "SIMSEARCH_DATA_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": "a-long-random-production-secret-" + "k3y" * 20,
        "DJANGO_ALLOWED_HOSTS": "simsearch.plant.example",
        "SIMSEARCH_STORAGE": "s3",
        "AWS_STORAGE_BUCKET_NAME": seaweedfs.bucket,
        "AWS_S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
    }
    if os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_django_language_code_sets_the_default_language(tmp_path: Path) -> None:
    base = {"SIMSEARCH_DATA_DIR": str(tmp_path), "DJANGO_SECRET_KEY": "x" * 60}
    script = "from django.conf import settings; print(settings.LANGUAGE_CODE)"
    assert manage("shell", "-c", script, env=base).stdout.strip().splitlines()[-1] == "en"
    korean = manage("shell", "-c", script, env={**base, "DJANGO_LANGUAGE_CODE": "ko"})
    assert korean.stdout.strip().splitlines()[-1] == "ko", korean.stderr
    # Only a language the project has translations for (LANGUAGES); anything else stops at start-up.
    refused = manage("check", env={**base, "DJANGO_LANGUAGE_CODE": "fr"})
    assert refused.returncode != 0 and "DJANGO_LANGUAGE_CODE" in refused.stderr


def test_s3_storage_without_credentials_is_a_clear_error(tmp_path: Path) -> None:
    result = manage(
        "check", env={"SIMSEARCH_DATA_DIR": str(tmp_path), "DJANGO_DEBUG": "true", "SIMSEARCH_STORAGE": "s3"}
    )
    assert result.returncode != 0
    assert "AWS_STORAGE_BUCKET_NAME" in result.stderr


def test_unknown_storage_and_bad_booleans_are_rejected(tmp_path: Path) -> None:
    base = {"SIMSEARCH_DATA_DIR": str(tmp_path), "DJANGO_DEBUG": "true"}
    assert "SIMSEARCH_STORAGE" in manage("check", env={**base, "SIMSEARCH_STORAGE": "ftp"}).stderr
    assert "DJANGO_DEBUG" in manage("check", env={**base, "DJANGO_DEBUG": "maybe"}).stderr
    assert "SIMSEARCH_ANOMALY_PRECISION" in manage("check", env={**base, "SIMSEARCH_ANOMALY_PRECISION": "fp16"}).stderr


RESOLVE_EACH_FIRST = """
import os, sys
import django
django.setup()
from django.conf import settings
failed = []
for name, value in settings.REST_FRAMEWORK.items():
    if not isinstance(value, (str, list)):
        continue
    pid = os.fork()
    if pid == 0:  # a child that resolves this one setting before anything else imports DRF's views
        try:
            from rest_framework.settings import api_settings
            getattr(api_settings, name)
        except Exception as exc:
            print(name, exc)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED", failed)
"""


def test_every_rest_framework_setting_resolves_whichever_is_read_first(tmp_path: Path) -> None:
    """Processes differ in which DRF setting they read first (qcluster: a system check; gunicorn: a
    view). A circular import between a setting's module and `rest_framework.views` once kept the
    qcluster from starting at all."""
    env = {"SIMSEARCH_DATA_DIR": str(tmp_path), "DJANGO_SECRET_KEY": "x" * 60}
    result = subprocess.run(
        [sys.executable, "-c", RESOLVE_EACH_FIRST],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "simsearch_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "FAILED []", result.stdout + result.stderr


def test_every_environment_variable_the_settings_read_is_in_the_readme_table() -> None:
    settings_source = (ROOT / "simsearch_project" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|bool|int)\(\s*"([A-Z][A-Z0-9_]+)"', settings_source))
    assert len(names) > 30  # the pattern still matches how settings.py reads the environment
    table_rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in table_rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    assert sorted(names - documented) == []
