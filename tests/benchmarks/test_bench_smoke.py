"""Smoke test of the benchmark harness: ``bench.py --quick`` on every broker (no thresholds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RABBITMQ_URL, REDIS_URL

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"
IMPLEMENTATIONS = ("nbqueue", "nbqueue-matched", "dramatiq")
#: Figures every broker must report for every implementation (the CLI needs a shared broker).
FIGURES = {
    "send_rate",
    "bulk_rate",
    "process_rate",
    "cpu_us_per_message",
    "rt_p50_ms",
    "rt_p95_ms",
    "rt_p99_ms",
    "peak_rss_mib",
    "idle_cpu_pct",
}
CLI_FIGURES = {"cli_rate", "cli_rate_after_boot", "cli_boot_s", "cli_cpu_us_per_message"}
#: Memory growth (issue #15), on the embedded broker only.
GROWTH_FIGURES = {"growth_rss_first_mib", "growth_rss_last_mib", "growth_ratio", "growth_rate"}
#: An idle worker may truly use no CPU tick in 3 s: zero is a measurement, not a failure.
MAY_BE_ZERO = {"idle_cpu_pct"}


@pytest.mark.timeout(480)
def test_quick_run_reports_every_workload_on_every_broker(tmp_path: Path) -> None:
    pytest.importorskip("dramatiq", reason="pip install -r benchmarks/requirements.txt")
    out = tmp_path / "x.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBQUEUE_", "DRAMATIQ_"))}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--messages",
            "500",
            "--growth-messages",
            "15000",
            "--json",
            str(out),
            "--redis-url",
            REDIS_URL,
            "--rabbitmq-url",
            RABBITMQ_URL,
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=460,  # generous: CI shares its two cores
    )
    document = json.loads(out.read_text()) if out.exists() else {}
    skipped = document.get("skipped", {})
    if skipped and not os.environ.get("CI"):
        pytest.skip("; ".join(skipped.values()))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert document["errors"] == {}
    assert sorted(document["results"]) == ["memory", "rabbitmq", "redis"]
    rows = {(r["broker"], r["key"]): r for r in document["table"]}
    for broker, by_impl in document["results"].items():
        expected = FIGURES | (CLI_FIGURES if broker != "memory" else GROWTH_FIGURES)
        for impl in IMPLEMENTATIONS:
            figures = by_impl[impl]
            for key in expected:
                value = figures.get(key)
                assert isinstance(value, (int, float)), (broker, impl, key, value)
                assert value > 0 or (key in MAY_BE_ZERO and value == 0), (broker, impl, key)
                assert rows[(broker, key)][impl] == value
        for key in expected:
            assert rows[(broker, key)]["ratio"] is not None, (broker, key)
    for impl in IMPLEMENTATIONS:
        growth = document["results"]["memory"][impl]
        assert growth["growth_messages"] == 15_000 and growth["growth_first"] == 10_000, impl
        curve = growth["samples"]["growth_curve_messages"]
        assert curve[0] == 10_000 and curve[-1] == 15_000, (impl, curve)
        assert len(growth["samples"]["growth_curve_rss_mib"]) == len(curve), impl
        assert growth["growth_middleware"], impl
    assert "target_met" in rows[("memory", "growth_ratio")]
    assert not any(k.startswith("growth_") for b, k in rows if b != "memory")
    assert "rt_p50_ms" in {k for b, k in rows if b == "redis"}
    assert document["meta"]["leftovers_deleted_by_parent"] == 0
    assert "broker" in proc.stdout and "dramatiq" in proc.stdout
