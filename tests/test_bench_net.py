"""The net benchmark (bench/bench_net.py): it runs, and its namespace is counted right.

Both tests build a real private network namespace holding real TCP sockets
(unshare -n) and run the real netsnoop.py and ss against it.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, needs_root_netns

BENCH = os.path.join(ROOT, "bench", "bench_net.py")

needs_ss = pytest.mark.skipif(
    not (shutil.which("ss") and shutil.which("nsenter") and shutil.which("ip")),
    reason="needs ss, nsenter and ip (iproute2, util-linux)")


def load_bench():
    sys.path.insert(0, os.path.dirname(BENCH))
    try:
        import bench_net
    finally:
        sys.path.remove(os.path.dirname(BENCH))
    return bench_net


@needs_root_netns
@needs_ss
@pytest.mark.live
def test_netsnoop_counts_the_bench_namespace_like_ss():
    bench_net = load_bench()
    ns = bench_net.Namespace(600)
    try:
        netsnoop_count, ss_count, owned = bench_net.count_sockets(ns)
        plan = ns.plan
    finally:
        ns.close()
    held = plan["listeners"] + 2 * (plan["pairs4"] + plan["pairs6"])
    assert netsnoop_count == ss_count
    assert netsnoop_count == held + plan["time_wait"]
    assert owned == held            # TIME_WAIT sockets have no inode: nobody holds them


@needs_root_netns
@needs_ss
@pytest.mark.live
@pytest.mark.slow
def test_quick_bench_prints_a_ratio():
    proc = subprocess.run([sys.executable, BENCH, "--quick"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    ratio = re.search(r"^RATIO (\d+\.\d+)$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out
    counts = re.search(r"^sockets: netsnoop (\d+), ss (\d+) \(equal\)", out, re.M)
    assert counts and counts.group(1) == counts.group(2), out
    plan = json.loads(re.search(r"^plan: (.*)$", out, re.M).group(1))
    assert int(counts.group(1)) == (plan["listeners"] + plan["time_wait"]
                                    + 2 * (plan["pairs4"] + plan["pairs6"]))
    for part in ("interpreter start-up", "read /proc/PID/net/tcp+tcp6",
                 "parse_sockets", "fd scan (socket_inodes)", "JSON out"):
        assert re.search(r"^  %s.*\d+\.\d ms" % re.escape(part), out, re.M), part


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the bench as nobody")
def test_bench_refuses_without_root_clearly():
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(nobody + [sys.executable, BENCH, "--quick"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("bench_net: needs root"), proc.stderr
    assert "Traceback" not in proc.stderr
