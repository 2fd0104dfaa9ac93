"""The OpenAPI schema describes what the server does: schemathesis, with every check it has,
against a live gunicorn serving a catalog with built indexes, as staff and as a line PC.
0 server errors and 0 schema violations, within a bounded number of examples per operation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from catalog.models import DefectType, Product
from catalog.roles import LINE_PC
from tests.conftest import ROOT, running_gunicorn
from tests.indexing.conftest import add_images, build_now

pytestmark = pytest.mark.django_db(transaction=True)

# Bounds that keep the run to two minutes on 2 cores (the suite's largest share): examples per
# operation and a wall-clock cap for each identity (fuzzing and stateful phases repeat until it is
# spent; about 50 cases per operation on a slow day, over 100 on a quiet one).
MAX_EXAMPLES = 10
MAX_SECONDS = {"staff": 80, "line PC": 40}
SEED = 20261125
CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis(base: str, token: str, seconds: int, report: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(CONFIG),
            "run",
            f"{base}/api/schema/",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(seconds),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--no-color",
            "--header",
            f"Authorization: Token {token}",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        capture_output=True,
        text=True,
        timeout=seconds + 240,
    )


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path, django_user_model):
    product = Product.objects.create(product_code="bracket-a", product_name="브래킷 A")
    scratch = DefectType.objects.create(defect_code="scratch", defect_name_ko="긁힘", defect_name_en="Scratch")
    add_images(product, scratch, 6)
    add_images(product, None, 6, start=100, image_type="normal")
    assert build_now("defect").status == build_now("normal").status == "ready"
    call_command("create_roles", verbosity=0)
    staff = django_user_model.objects.create_user("lead", password="pw-lead-123", is_staff=True, is_superuser=True)
    line = django_user_model.objects.create_user("line-7", password="pw-line-123")
    line.groups.add(django_user_model.groups.field.related_model.objects.get(name=LINE_PC))
    tokens = {"staff": Token.objects.create(user=staff).key, "line PC": Token.objects.create(user=line).key}
    failures = []
    with running_gunicorn(tmp_path / "gunicorn.log", workers=1) as base:
        for who, token in tokens.items():
            result = schemathesis(base, token, MAX_SECONDS[who], tmp_path / f"{who}.xml")
            if result.returncode != 0:
                failures.append(f"--- as {who} (exit {result.returncode}) ---\n{result.stdout[-12000:]}")
            else:
                print(f"as {who}:", result.stdout[-1500:])
            # It really tested every operation with many cases: a schema it could not read, or a
            # server it could not reach, would test nothing.
            selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
            tested = re.search(r"Tested: (\d+)", result.stdout)
            generated = re.search(r"(\d+) generated", result.stdout)
            assert selected and tested and generated, result.stdout[-3000:]
            assert int(tested[1]) == int(selected[1]) == int(selected[2]) > 0, result.stdout[-3000:]
            # At least the example budget per operation; more comes from the time-capped phases,
            # how much depends on the machine's speed (1,934 for 24 operations on a slow day).
            assert int(generated[1]) >= MAX_EXAMPLES * int(tested[1]), result.stdout[-3000:]
    assert not failures, "\n".join(failures)
