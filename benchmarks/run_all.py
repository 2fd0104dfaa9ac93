"""Run every benchmark and print one table with the machine's description.

    .venv/bin/python -m benchmarks.run_all          (about 10 minutes on 2 cores)
    .venv/bin/python -m benchmarks.run_all --quick  (smaller galleries, about 4 minutes)

Each benchmark runs in its own process (its own throw-away database and data folder)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date

from benchmarks.common import ROOT, Row, Table, machine

BENCHMARKS = {
    "rebuild_throughput": {"full": ["--images", "600"], "quick": ["--images", "96"]},
    "distributed_build": {"full": ["--images", "192"], "quick": ["--images", "64", "--chunk", "16"]},
    "incremental": {"full": ["--images", "2000"], "quick": ["--images", "500"]},
    "search_latency": {
        "full": ["--vectors", "10000", "--queries", "60", "--scale-vectors", "1000000"],
        "quick": ["--vectors", "10000", "--queries", "30", "--scale-vectors", "100000"],
    },
    "upload_previews": {"full": ["--megapixels", "20"], "quick": ["--megapixels", "20", "--repeats", "1"]},
    "embed_memory": {"full": [], "quick": []},
    "anomaly_quality": {"full": [], "quick": ["--no-compare"]},
    "retrieval_quality": {"full": [], "quick": ["--catalog", "4", "--queries", "2"]},
    "http_load": {
        "full": ["--clients", "8", "--seconds", "20"],
        "quick": ["--clients", "8", "--seconds", "8", "--images", "100"],
    },
}

CHILD = """
import json, sys
from benchmarks.{name} import cli
table = cli(json.loads(sys.argv[1]))
print("ROWS " + json.dumps([row.__dict__ for row in table.rows], ensure_ascii=False))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    mode = "quick" if parser.parse_args().quick else "full"
    table = Table()
    for name, variants in BENCHMARKS.items():
        print(f"--- {name} ---", flush=True)
        result = subprocess.run(
            [sys.executable, "-c", CHILD.format(name=name), json.dumps(variants[mode])],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        rows = [line for line in result.stdout.splitlines() if line.startswith("ROWS ")]
        if result.returncode != 0 or not rows:
            table.rows.append(
                Row(
                    name,
                    "FAILED",
                    None,
                    "",
                    result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "no output",
                )
            )
            continue
        table.rows.extend(Row(**row) for row in json.loads(rows[-1][5:]))
    print()
    print(f"Machine: {machine()}; {date.today().isoformat()}; mode: {mode}")
    print()
    print(table.render())


if __name__ == "__main__":
    main()
