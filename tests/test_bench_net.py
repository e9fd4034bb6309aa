"""The net benchmark (bench/bench_net.py), and the fast tcp path it measures.

The bench tests build a real private network namespace holding real TCP
sockets (unshare -n) and run the real netsnoop.py and ss against it.  The
fast-path tests check each shortcut against the plain way on real sockets
and real processes: the regex parse against parse_socket_line line by line,
the JSON rows against json.dumps of the dicts, the fd scan against
listdir + readlink.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import netsnoop
from conftest import ROOT, needs_fast, needs_root_netns, python_for_nobody

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
def test_bench_refuses_without_root_clearly(public_tmp):
    # a copy where nobody can read it (the clone may sit under a 0700 directory)
    (public_tmp / "bench").mkdir(mode=0o755)
    bench = shutil.copy(BENCH, str(public_tmp / "bench"))
    os.chmod(bench, 0o644)
    python = python_for_nobody("json")
    if python is None:
        pytest.skip("no Python interpreter that user nobody may run")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(nobody + [python, bench, "--quick"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30, cwd="/")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("bench_net: needs root"), proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# The fast tcp path gives what the plain way gives
# ---------------------------------------------------------------------------

@pytest.fixture
def loopback_pairs():
    """A listener and 40 connected pairs on 127.0.0.1 and ::1, held by this process."""
    held = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.bind((host, 0))
        except OSError:
            continue                # no IPv6 here
        listener.listen(64)
        held.append(listener)
        for _ in range(20):
            client = socket.create_connection(listener.getsockname()[:2])
            held += [client, listener.accept()[0]]
    yield held
    for s in held:
        s.close()


def line_by_line(text, proto):
    """The plain parse: every line after the header through parse_socket_line."""
    records, skipped = [], 0
    for line in text.splitlines()[1:]:
        if line.strip():
            try:
                records.append(netsnoop.parse_socket_line(line, proto))
            except (ValueError, IndexError, OSError):
                skipped += 1
    return records, skipped


def test_fast_parse_matches_line_by_line_on_real_and_damaged_lines(loopback_pairs):
    """The fast path against the plain one, and both against the sockets this process
    holds (their inodes and ports from fstat and getsockname): fails when the fast path
    drops, damages or invents a line, or when both paths share a decoding bug."""
    procfs = netsnoop.ProcFS()
    text = procfs.net_read(os.getpid(), "tcp") + procfs.net_read(os.getpid(), "tcp6")
    parsed = {s.inode: s.local_port for s in netsnoop.parse_sockets(text, "tcp")}
    held = {os.fstat(s.fileno()).st_ino: s.getsockname()[1] for s in loopback_pairs}
    assert {inode: parsed.get(inode) for inode in held} == held
    lines = text.splitlines()
    real = [ln for ln in lines[1:] if ln.strip() and not ln.lstrip().startswith("sl")]
    assert len(real) >= 40
    damaged = [real[0][:40],                                    # cut short
               real[1].replace(":", ";", 1),                    # sl without its colon
               real[2].replace("0100007F", "0100007f"),         # lowercase: the slow path takes it
               real[3] + "\r" + real[4][:30],                  # a CR splits a line in two
               "\t" + real[5],                                 # leading tab: slow path
               " ".join(real[6].split()[:3]) + " ZZ" + real[6][real[6].index(" 0", 40):],
               " ".join(real[7].split()[:12] + ["-5"])]        # negative udp drops
    crafted = "\n".join([lines[0]] + real[:20] + damaged + real[20:]) + "\n\n"
    header_cr = lines[0] + "\r" + "\n".join(real[:3])         # a data line in the header's line
    for sample in (text, crafted, header_cr):
        for proto in ("tcp", "udp"):
            fast = netsnoop.parse_sockets(sample, proto)
            records, skipped = line_by_line(sample, proto)
            assert list(fast) == records
            assert fast.skipped == skipped
    assert line_by_line(crafted, "tcp")[1] >= 3     # the damage was really there
    assert line_by_line(crafted, "udp")[1] > line_by_line(crafted, "tcp")[1]


def test_json_rows_are_what_json_dumps_writes(loopback_pairs, monkeypatch):
    monkeypatch.setattr(netsnoop, "fast_diag_parser", lambda: None)     # the Python twin
    procfs = netsnoop.ProcFS()
    snap = netsnoop.snapshot(procfs, os.getpid(), ("tcp", "udp", "icmp"), json_rows=True)
    rows = snap["tabs"]["tcp"]["sockets"]
    assert isinstance(rows, netsnoop.SocketRows) and len(rows.records) >= 40
    assert sum(1 for s in rows.dicts() if s["owned"]) >= 41     # our listener and pairs
    plain = json.loads(json.dumps(snap, default=lambda rows: rows.dicts()))
    assert json.loads(netsnoop.snapshot_json(snap)) == plain
    assert netsnoop.snapshot_json(snap) == json.dumps(snap, default=lambda rows: rows.dicts())


@needs_fast
def test_json_rows_written_in_c_are_the_python_twins(loopback_pairs, monkeypatch):
    """The C scanner's tcp rows (FastSocketRows) against the Python twin's for this
    process's own sockets (the rest of the host's may change between the snapshots)."""
    procfs = netsnoop.ProcFS()
    mine = set(os.fstat(s.fileno()).st_ino for s in loopback_pairs)

    def tcp_rows():
        snap = netsnoop.snapshot(procfs, os.getpid(), ("tcp",), json_rows=True)
        rows = json.loads(netsnoop.snapshot_json(snap))["tabs"]["tcp"]["sockets"]
        return snap["tabs"]["tcp"]["sockets"], {r["inode"]: r for r in rows
                                                if r["inode"] in mine}
    fast, c_rows = tcp_rows()
    monkeypatch.setattr(netsnoop, "fast_diag_parser", lambda: None)
    twin, python_rows = tcp_rows()
    assert isinstance(fast, netsnoop.FastSocketRows)
    assert isinstance(twin, netsnoop.SocketRows)
    assert len(c_rows) == len(mine) >= 41
    assert c_rows == python_rows
    assert all(r["owned"] and r["pid"] == os.getpid() for r in c_rows.values())


FD_HOLDER = textwrap.dedent("""
    import os, socket, sys
    keep = [socket.socket() for _ in range(30)]
    for i, high in enumerate((200, 201, 5000, 9999)):   # sparse: gaps the probe must skip
        os.dup2(keep[i].fileno(), high)
        keep[i].close()                                 # the socket lives at `high` only
    os.close(keep[10].fileno() - 1)                     # a hole among the low fds too
    print("ready", max(map(int, os.listdir("/proc/self/fd"))), flush=True)
    sys.stdin.read()
""")


def listdir_readlink(pid):
    fd_dir = "/proc/%d/fd" % pid
    inodes = set()
    for name in os.listdir(fd_dir):
        target = os.readlink(os.path.join(fd_dir, name))
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.parametrize("script, top_fd", [(FD_HOLDER, 9999),
                                            (FD_HOLDER.replace("5000, 9999", "31, 32"), 32)],
                         ids=["sparse", "nearly-dense"])
def test_fd_scan_finds_what_listdir_readlink_finds(script, top_fd):
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    try:
        ready, top = proc.stdout.readline().split()
        assert ready == "ready" and int(top) >= top_fd
        inodes, reason = netsnoop.ProcFS().socket_inodes(proc.pid)
        expected = listdir_readlink(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert reason is None
    assert inodes == expected and len(expected) >= 25


def test_fd_scan_error_reaches_the_caller():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    owners = netsnoop.Ownership(netsnoop.ProcFS(), proc.pid)     # scans in a thread
    with pytest.raises(netsnoop.ProcessGone):
        owners.owns(1)
