"""The order-fulfilment example (examples/python/order_fulfilment.py) runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "python" / "order_fulfilment.py"
)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_example_completes_the_order_with_one_retry_of_charge(tmp_path):
    done = _run("memory:", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("task ") and lines[0].endswith("on memory:: complete")
    assert lines[1].split() == ["step", "state", "attempts", "duration_ms", "result"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == ["validate", "charge", "reserve_stock", "ship", "notify"]
    assert all(row[1] == "complete" for row in rows.values())
    assert rows["charge"][2] == "2" and rows["validate"][2] == "1"
    assert '"tracking":"TRK-42"' in rows["ship"][4]


def test_the_example_defaults_to_tasker_db_in_the_working_directory(tmp_path):
    done = _run(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "on sqlite://tasker.db: complete" in done.stdout
    assert (tmp_path / "tasker.db").exists()


def test_the_example_fails_with_a_bad_url(tmp_path):
    done = _run("nosuchstore://", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot open the engine" in done.stderr
