"""Reading /proc/net seq files: a short chunk ends the file, and nothing is lost by it."""
import os
import subprocess
import sys
import threading
import time

from conftest import ROOT, needs_root_netns

sys.path.insert(0, ROOT)
import netsnoop  # noqa: E402

NET_FILES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "icmp", "icmp6", "arp", "dev",
             "netstat", "snmp", "snmp6", "route", "ipv6_route", "softnet_stat")


def test_a_short_chunk_ends_the_read_without_waiting_for_more(tmp_path):
    """A FIFO whose writer stays open: the plain read would block, the seq read returns."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as f:
            f.write(b"x" * 100)
            f.flush()
            time.sleep(3)
    t = threading.Thread(target=writer)
    t.start()
    fd = os.open(fifo, os.O_RDONLY)
    try:
        started = time.monotonic()
        assert netsnoop.read_fd_all(fd, netsnoop.SEQ_END_BELOW) == b"x" * 100
        assert time.monotonic() - started < 2
    finally:
        os.close(fd)
        t.join()


# In a private namespace with enough sockets that tcp and tcp6 span many pages, the
# seq-file read gives exactly what reading until the kernel returns nothing gives.
COMPARE = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[1])
import netsnoop
held = []
for i in range(400):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((host, 20000 + i))
        s.listen(1)
        held.append(s)
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((host, 20000 + i))
        held.append(u)
procfs = netsnoop.ProcFS()
for name in sys.argv[2:]:
    path = ("self", "net", name)
    if not os.path.exists(procfs.path(*path)):
        continue
    fast = procfs.read(*path, end_below=netsnoop.SEQ_END_BELOW)
    full = procfs.read(*path)
    if name in ("netstat", "snmp", "snmp6", "dev", "softnet_stat"):
        # counters move between two reads: compare the shape
        fast = [line.split()[:1] for line in fast.splitlines()]
        full = [line.split()[:1] for line in full.splitlines()]
    assert fast == full, name
    print(name, len(fast) if isinstance(fast, list) else fast.count("\n"))
"""


@needs_root_netns
def test_seq_read_loses_nothing_on_many_pages():
    res = subprocess.run(["unshare", "-n", sys.executable, "-c",
                          "import subprocess; subprocess.run(['ip', 'link', 'set', 'lo', 'up']);"
                          "exec(open(0).read())", ROOT] + list(NET_FILES),
                         input=COMPARE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split() for line in res.stdout.splitlines())
    assert int(lines["tcp"]) == 401 and int(lines["tcp6"]) == 401     # header + 400 listeners
    assert int(lines["udp"]) == 401 and int(lines["udp6"]) == 401


def test_read_ahead_yields_in_order_and_raises_at_the_failing_files_turn():
    seen = []

    def read(name):
        seen.append((name, threading.current_thread().name))
        if name == "bad":
            raise netsnoop.ProcessGone("gone at " + name)
        return name.upper()

    files = netsnoop.read_ahead(read, ["tcp", "tcp6", "bad", "never"])
    assert next(files) == ("tcp", "TCP")
    assert next(files) == ("tcp6", "TCP6")
    try:
        next(files)
        raise AssertionError("the failing read was not raised")
    except netsnoop.ProcessGone as err:
        assert str(err) == "gone at bad"
    # read in the reader thread, never in the caller's
    assert {thread for _, thread in seen} == {"netsnoop-read-ahead"}


def test_helper_threads_count_their_cpu_for_the_sessions_refresh_cost():
    import socket
    held = [socket.socket() for _ in range(200)]
    try:
        before = netsnoop.helper_cpu_seconds()
        owners = netsnoop.Ownership(netsnoop.ProcFS(), os.getpid())
        assert {os.fstat(s.fileno()).st_ino for s in held} <= owners.held()
        after_scan = netsnoop.helper_cpu_seconds()
        assert after_scan > before          # 200 readlinks: measurable thread CPU
        names = list(netsnoop.read_ahead(lambda name: sum(range(20000)), ["a", "b"]))
        assert [name for name, _ in names] == ["a", "b"]
        assert netsnoop.helper_cpu_seconds() > after_scan
    finally:
        for s in held:
            s.close()
