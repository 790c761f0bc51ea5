"""Every benchmark's quick mode runs and writes JSON of the documented shape.

Never asserts speed: only that each figure is there, finite and positive, so
no benchmark rots. Results go to a temp dir, never over bench/results.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("benchmarks need root (namespaces, XDP)")


def run_quick(module: str, out: Path, timeout: float, *options: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", "--quick", "--out", str(out),
                           *options],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_machine(result: dict) -> None:
    assert result["machine"]["cores"] >= 1 and result["machine"]["kernel"]
    assert result["machine"]["xdp_mode"]


def bench_namespaces() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith("lbdb")} \
        if os.path.isdir("/run/netns") else set()


def test_datapath_quick(tmp_path):
    before = bench_namespaces()
    result = run_quick("datapath", tmp_path / "datapath.json", 240)
    check_machine(result)
    assert set(result["arms"]) == {"direct", "xdp_floor", "lbd_dsr", "lbd_ipip", "nftables",
                                   "userspace"}
    for arm, v in result["arms"].items():
        assert positive(v["pps"]), arm
        assert math.isfinite(v["hop_ns"]), arm
    assert result["xdp_modes"]["lb/in0 lbd_dsr"] == "native"
    assert bench_namespaces() <= before   # its own namespaces are gone


def test_sharedmem_quick(tmp_path):
    before = bench_namespaces()
    result = run_quick("sharedmem", tmp_path / "sharedmem.json", 240)
    check_machine(result)
    assert set(result["arms"]) == {"shared_memory", "local_kernel_hash", "lbd_client_affinity"}
    for arm, v in result["arms"].items():
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "limit_ratio"):
            assert positive(v[key]), (arm, key, v[key])
    assert bench_namespaces() <= before   # its own namespaces are gone


def test_control_quick(tmp_path):
    result = run_quick("control", tmp_path / "control.json", 240)
    check_machine(result)
    assert result["cold_apply_s"] and all(positive(v) for v in result["cold_apply_s"].values())
    assert all(k.count("x") == 1 for k in result["cold_apply_s"])
    assert positive(result["health_to_map_ms"]) and positive(result["rss_mb"])
    assert positive(result["cold_start"]["s"])


def test_xdp_cost_quick_and_report(tmp_path):
    result = run_quick("xdp_cost", tmp_path / "xdp_cost.json", 240)
    assert positive(result["floor_ns"])
    assert all(positive(c["ns"]) for c in result["cases"].values())
    # the report renders from whatever results exist (the others missing here)
    report = tmp_path / "REPORT.md"
    proc = subprocess.run([sys.executable, "-m", "bench.report", "--results", str(tmp_path),
                           "--out", str(report)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = report.read_text()
    assert text.startswith("# lbd benchmark report") and "| benchmark |" in text
    assert (tmp_path / "xdp_cost.png").exists()


def test_decap_cost_quick(tmp_path):
    # --before: the program of a git revision timed beside today's (HEAD: always there)
    result = run_quick("decap_cost", tmp_path / "decap_cost.json", 240, "--before", "HEAD")
    check_machine(result)
    # each case's frame did what its name says before it was timed, on both programs
    cases = {"ipip", "gue_kept_syn", "gue_kept_socket", "gue_forwarded", "gue_forwarded_no_listener",
             "gue_kept_forwarded", "gue6_kept_socket", "gue6_forwarded"}
    assert set(result["cases"]) == cases
    assert all(positive(c["ns"]) for c in result["cases"].values())
    assert positive(result["floor_ns"])
    assert set(result["before"]["cases"]) == cases and result["before"]["commit"]
    assert all(positive(c["now_over_before"]) for c in result["before"]["cases"].values())


def test_flowcount_quick(tmp_path):
    result = run_quick("flowcount", tmp_path / "flowcount.json", 240)
    check_machine(result)
    walk = result["walk"]
    # every entry of the filled table counted once, live or idle
    assert walk["live"] + walk["idle"] == walk["table_entries"] > 0
    assert walk["live"] > 0 and walk["idle"] > 0
    for key in ("sample_s", "backend_flows_s", "before_sample_s"):
        assert positive(walk[key]["median"]), key
    cases = result["established"]["cases"]
    for name in ("after_warm", "before_warm", "after_cold", "before_cold"):
        assert positive(cases[name]["ns"]), name
    assert positive(result["established"]["floor_ns"])


def test_health_cost_quick(tmp_path):
    result = run_quick("health_cost", tmp_path / "health_cost.json", 300)
    check_machine(result)
    assert positive(result["checks"]["checks_per_s"]) and positive(result["checks"]["cpu_s_per_s"])
    assert positive(result["cpu_per_1000_checks_per_s"]) and positive(result["us_per_check"])
    assert result["backends_down"] == 0
