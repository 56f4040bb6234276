"""The head-office benchmarks run end to end with tiny sizes and print their figures as JSON on the last line.

Slow (each starts PostgreSQL work, ``smartpos-hq serve`` and enrollment): deselected by default, ``-m slow``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def run_bench(script: str, *args: str, timeout: float = 240) -> tuple[dict, int]:
    """Runs a bench script, checks it cleaned up after itself, returns its last-line JSON and its pid."""
    # Own session: on a timeout SIGTERM lets the script stop what it started and drop its database.
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"{script} took over {timeout} s:\n{err[-2000:]}")
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{err[-2000:]}"
    hq_pids = [int(m) for m in re.findall(r"head office: pid (\d+)", err)]
    assert hq_pids, err[-2000:]
    for pid in hq_pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"head office pid {pid} still running"
    assert leftover_databases(proc.pid) == []
    return json.loads(out.strip().splitlines()[-1]), proc.pid


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def leftover_databases(pid: int) -> list[str]:
    host, port = os.environ.get("PGHOST", "127.0.0.1"), int(os.environ.get("PGPORT", "5432"))
    try:
        conn = psycopg.connect(host=host, port=port, user=os.environ.get("PGUSER", "postgres"), dbname="postgres",
                               connect_timeout=3)
    except psycopg.Error:
        return []  # the script used a throwaway cluster of its own, removed with it
    with conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
    return [n for n in names if n.startswith("smartpos_") and f"_{pid}_" in n]


def test_sync_drain_small_backlog_reaches_head_office():
    figures, _pid = run_bench("sync_drain.py", "--n", "1200", "--page-size", "500")
    for key in ("drain_100k_s", "rows_per_s", "pages", "terminals"):
        assert key in figures, key
    assert figures["terminals"] == 1
    assert figures["n"] == 1200 and figures["hq_accepted"] == 1200
    assert figures["pages"] == math.ceil(1200 / 500)
    assert figures["totals_equal"] is True
    assert figures["drain_100k_s"] > 0 and figures["rows_per_s"] > 0
    assert figures["drain_100k_extrapolated"] is True


def test_hq_ingest_small_run_reports_rate_and_copy_floor():
    figures, _pid = run_bench("hq_ingest.py", "--n", "1200", "--terminals", "3", "--page-size", "200",
                              "--rounds", "1")
    for key in ("ingest_txn_per_s", "copy_rows_per_s", "ratio_vs_copy", "terminals"):
        assert key in figures, key
    assert figures["terminals"] == 3
    assert figures["txn_per_round"] == 1200
    assert figures["ingest_txn_per_s"] > 0 and figures["copy_rows_per_s"] > 0
    assert figures["ratio_vs_copy"] == pytest.approx(figures["ingest_txn_per_s"] / figures["copy_rows_per_s"],
                                                     abs=0.002)
