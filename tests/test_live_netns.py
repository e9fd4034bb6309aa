"""netsnoop against a live private network namespace, compared with ss / ip / nstat.

A helper (tests/netns_helper.py) runs under `unshare -n`: it builds the namespace (veth
pair with TEST-NET addresses, a gateway route, a permanent neighbour) and holds known
sockets.  A second process in the same namespace (`nsenter ... sleep`) holds none.
netsnoop runs from the host against their PIDs; the reference tools run inside the
namespace through nsenter.  Traps handled (docs/procfs.md): ss's `*`/`[::]`/`%dev`
address forms, fe80 routes appearing late (retry), /sys being the host's under
`unshare -n` (`ip -j -s link` instead).
"""
import json
import os
import select
import shutil
import subprocess
import sys
import time

import pytest

import netcompare
from conftest import ROOT, needs_root_netns, run_netsnoop

pytestmark = [needs_root_netns, pytest.mark.live]

HELPER = os.path.join(ROOT, "tests", "netns_helper.py")
TOOLS = ("ss", "ip", "nstat", "nsenter")


def missing_tools():
    return [t for t in TOOLS if not shutil.which(t)]


class Namespace(object):
    """The helper (socket owner) and a second process in its namespace."""

    def __init__(self):
        self.helper = subprocess.Popen(["unshare", "-n", sys.executable, HELPER],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       universal_newlines=True)
        ready, _, _ = select.select([self.helper.stdout], [], [], 15)
        line = self.helper.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError("netns helper did not start")
        self.info = json.loads(line)
        self.pid = self.info["pid"]
        self.other = subprocess.Popen(["nsenter", "--net=/proc/%d/ns/net" % self.pid,
                                       "sleep", "60"])
        # nsenter execs sleep in place: wait until that happened (same PID, comm "sleep")
        deadline = time.time() + 5
        while time.time() < deadline and self.comm(self.other.pid) != "sleep":
            time.sleep(0.01)

    @staticmethod
    def comm(pid):
        try:
            with open("/proc/%d/comm" % pid) as f:
                return f.read().strip()
        except OSError:
            return None

    def run(self, *argv):
        """A tool inside the namespace; its stdout."""
        res = subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % self.pid] + list(argv),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=30)
        assert res.returncode == 0, (argv, res.stderr)
        return res.stdout

    def run_json(self, *argv):
        return json.loads(self.run(*argv))

    def snapshot(self, pid=None, tab="all"):
        res = run_netsnoop(pid or self.pid, "--once", "--tab", tab, "--json")
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""
        return json.loads(res.stdout)

    def close(self):
        other = getattr(self, "other", None)
        if other is not None:
            other.kill()
            other.wait()
        self.helper.stdin.close()           # the helper exits when its stdin closes
        try:
            self.helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.helper.kill()
            self.helper.wait()


@pytest.fixture(scope="module")
def netns():
    missing = missing_tools()
    if missing:
        pytest.skip("needs %s" % ", ".join(missing))
    space = Namespace()
    try:
        yield space
    finally:
        space.close()


@pytest.fixture(scope="module")
def snap(netns):
    return netns.snapshot()


def all_sockets(snap):
    out = []
    for tab in ("tcp", "udp", "raw", "icmp"):
        out.extend(snap["tabs"][tab]["sockets"])
    return out


def retry(check, timeout=3.0):
    """Run `check` until it stops raising AssertionError (kernel state settling)."""
    deadline = time.time() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------------------
# The snapshot itself
# ---------------------------------------------------------------------------

def test_snapshot_names_the_namespace(netns, snap):
    assert snap["pid"] == netns.pid
    assert snap["comm"].startswith("python")
    assert snap["netns"] == os.readlink("/proc/%d/ns/net" % netns.pid)
    assert snap["netns"] != os.readlink("/proc/self/ns/net")
    assert list(snap["tabs"]) == ["tcp", "udp", "arp", "traffic", "stats", "raw", "icmp",
                                  "routing", "analysis", "procs"]


def test_no_damaged_lines(snap):
    for tab in ("tcp", "udp", "raw", "icmp"):
        assert snap["tabs"][tab]["skipped_lines"] == 0, tab
    stats = snap["tabs"]["stats"]
    sections = [v for k, v in stats.items() if k not in ("skipped_lines", "files_missing")]
    assert sections and all(isinstance(counters, dict) and
                            all(isinstance(v, int) for v in counters.values())
                            for counters in sections)      # the JSON contract: {SECTION: {COUNTER: int}}
    assert stats["skipped_lines"] == 0
    assert snap["tabs"]["analysis"]["skipped_lines"] == 0


# ---------------------------------------------------------------------------
# Sockets: ss, the helper's own inodes, ownership
# ---------------------------------------------------------------------------

def test_sockets_match_ss(netns):
    def check():
        theirs = netcompare.ss_sockets(netns.run("ss", "-tanuwH").splitlines())
        mine = netcompare.netsnoop_sockets(all_sockets(netns.snapshot()))
        assert mine == theirs
    retry(check)


def test_queues_match_ss_for_the_loopback_pair(netns, snap):
    ss = {}
    for line in netns.run("ss", "-tnH", "state", "established").splitlines():
        f = line.split()
        ss[(netcompare.split_hostport(f[2]), netcompare.split_hostport(f[3]))] = \
            (int(f[0]), int(f[1]))
    pair_port = netns.info["ports"]["pair"]
    server = [s for s in snap["tabs"]["tcp"]["sockets"]
              if s["state"] == "ESTABLISHED" and s["local_port"] == pair_port]
    assert len(server) == 1
    s = server[0]
    assert s["rx_queue"] == 100                      # the helper sent 100 unread bytes
    key = ((s["local_address"], s["local_port"]), (s["remote_address"], s["remote_port"]))
    assert ss[key] == (s["rx_queue"], s["tx_queue"])


def test_every_helper_socket_is_listed_and_owned(netns, snap):
    by_inode = {s["inode"]: s for s in all_sockets(snap)}
    for name, sock in netns.info["sockets"].items():
        assert sock["inode"] in by_inode, name
        row = by_inode[sock["inode"]]
        assert row["owned"] is True, name
        assert row["local_port"] == sock["local"][1] or name.startswith("raw"), name
    for tab in ("tcp", "udp", "raw", "icmp"):
        assert snap["tabs"][tab]["owned_known"] is True


def test_only_the_helpers_sockets_are_owned(netns, snap):
    mine = set(s["inode"] for s in netns.info["sockets"].values())
    # the accepted-then-closed connection's peer is gone; TIME_WAIT has inode 0
    for s in all_sockets(snap):
        assert s["owned"] == (s["inode"] in mine), s


def test_time_wait_minisock(netns, snap):
    tw = [s for s in snap["tabs"]["tcp"]["sockets"] if s["state"] == "TIME_WAIT"]
    assert len(tw) == 1
    assert tw[0]["inode"] == 0 and tw[0]["owned"] is False
    assert tw[0]["remote_port"] == netns.info["ports"]["pair"]


def test_kinds_and_addresses(netns, snap):
    ports = netns.info["ports"]
    tcp = {(s["proto"], s["local_address"], s["local_port"], s["state"])
           for s in snap["tabs"]["tcp"]["sockets"]}
    assert ("tcp", "192.0.2.1", ports["tcp4"], "LISTEN") in tcp
    assert ("tcp6", "::", ports["tcp6"], "LISTEN") in tcp
    assert ("tcp6", "2001:db8::1", ports["tcp6only"], "LISTEN") in tcp
    udp = {(s["proto"], s["local_address"], s["local_port"], s["state"], s["remote_port"])
           for s in snap["tabs"]["udp"]["sockets"]}
    assert ("udp", "127.0.0.1", ports["udp4"], "CLOSE", 0) in udp
    assert ("udp6", "2001:db8::1", ports["udp6"], "CLOSE", 0) in udp
    assert ("udp", "127.0.0.1", ports["udpconn"], "ESTABLISHED", ports["udp4"]) in udp
    raw = {(s["proto"], s["local_port"]) for s in snap["tabs"]["raw"]["sockets"]}
    assert raw == {("raw", 1), ("raw6", 58)}       # the protocol number as the "port"


def test_ping_sockets_in_icmp_tab(netns, snap):
    icmp = {s["inode"]: s for s in snap["tabs"]["icmp"]["sockets"]}
    for name, proto, host in (("ping4", "icmp", "127.0.0.1"), ("ping6", "icmp6", "::1")):
        sock = netns.info["sockets"][name]
        row = icmp[sock["inode"]]
        assert (row["proto"], row["local_address"], row["state"]) == (proto, host, "CLOSE")
        assert row["local_port"] == sock["local"][1]    # the ICMP echo identifier
        assert row["owned"] is True


def test_second_process_owns_nothing(netns, snap):
    other = netns.snapshot(netns.other.pid)
    assert other["pid"] == netns.other.pid
    assert other["comm"] == "sleep"
    assert other["netns"] == snap["netns"]
    for tab in ("tcp", "udp", "raw", "icmp"):
        assert other["tabs"][tab]["owned_known"] is True
    socks = all_sockets(other)
    assert socks
    assert all(s["owned"] is False for s in socks)
    inodes = lambda rows: sorted(s["inode"] for s in rows)  # noqa: E731
    assert inodes(socks) == inodes(all_sockets(snap))


# ---------------------------------------------------------------------------
# Routes, neighbours, interfaces
# ---------------------------------------------------------------------------

def test_ipv4_routes_match_ip_route(netns):
    def check():
        mine = netns.snapshot(tab="routing")["tabs"]["routing"]["ipv4"]
        assert netcompare.netsnoop_routes_v4(mine) == \
            netcompare.ip_routes_v4(netns.run_json("ip", "-j", "route"))
        return mine
    rows = retry(check)
    via = [r for r in rows if r["destination"] == "198.51.100.0"]
    assert len(via) == 1
    assert (via[0]["gateway"], via[0]["mask"], via[0]["flags"], via[0]["iface"]) == \
        ("192.0.2.254", "255.255.255.0", "UG", "v0")


def test_ipv6_routes_match_ip_route(netns):
    def check():
        mine = netns.snapshot(tab="routing")["tabs"]["routing"]["ipv6"]
        theirs = netns.run_json("ip", "-j", "-6", "route", "show", "table", "all")
        assert netcompare.netsnoop_routes_v6(mine) == netcompare.ip_routes_v6(theirs)
        return mine
    rows = retry(check, timeout=4.0)
    dests = {("%s/%d" % (r["destination"], r["prefix_len"]), r["iface"]) for r in rows}
    assert ("2001:db8::/64", "v0") in dests
    assert ("fe80::/64", "v0") in dests and ("fe80::/64", "v1") in dests
    # the null reject entries ip hides are there, as route -6 shows them
    assert any(r["flags"] == "!n" and r["iface"] == "lo" for r in rows)


def test_neighbours_match_ip_neigh(netns, snap):
    arp = snap["tabs"]["arp"]
    assert netcompare.netsnoop_neighbours(arp["entries"]) == \
        netcompare.ip_neighbours(netns.run_json("ip", "-j", "-4", "neigh"))
    gw = [e for e in arp["entries"] if e["ip_address"] == "192.0.2.254"][0]
    assert (gw["hw_address"], gw["device"], gw["flags"]) == ("02:00:00:00:00:fe", "v0", 0x6)
    assert gw["state"] == "complete,permanent"
    # stat/arp_cache exists only in the host namespace
    assert arp["stats_available"] is False and "stat/arp_cache" in arp["files_missing"]


def assert_grown_since(before, after, what):
    """Counters read later can only be larger: a smaller one is a real error (no retry)."""
    if after < before:
        pytest.fail("%s went down: %d then %d" % (what, before, after))


def test_traffic_matches_ip_link(netns):
    """ip first, netsnoop moments later.  The veths send IPv6 housekeeping (MLD reports,
    router solicitations) for seconds after link up, so a packet may slip in between
    the two reads: then read both again."""
    def check():
        links = netcompare.ip_link_counters(netns.run_json("ip", "-j", "-s", "link"))
        mine = {i["name"]: i for i in
                netns.snapshot(tab="traffic")["tabs"]["traffic"]["interfaces"]}
        assert set(mine) == set(links) == {"lo", "v0", "v1"}
        for name, counters in links.items():
            for key, value in counters.items():
                assert_grown_since(value, mine[name][key], name + " " + key)
        assert {n: {k: mine[n][k] for k in c} for n, c in links.items()} == links
        return mine
    mine = retry(check, timeout=6.0)
    assert mine["lo"]["rx_packets"] > 0               # the helper's loopback traffic


# ---------------------------------------------------------------------------
# Counters: nstat first, netsnoop moments later
# ---------------------------------------------------------------------------

def test_counters_match_nstat(netns):
    """Every counter nstat knows, netsnoop has, at least as large (read second) and
    equal unless a housekeeping packet slipped in between (then read both again)."""
    def check():
        theirs = netns.run_json("nstat", "-asz", "--json")["kernel"]
        snap = netns.snapshot()
        analysis, stats = snap["tabs"]["analysis"], snap["tabs"]["stats"]
        flat = netcompare.flatten_counters([analysis["snmp"], analysis["snmp6"], stats])
        missing = sorted(k for k in theirs if k not in flat and not k.startswith("Sctp"))
        if missing:
            pytest.fail("counters nstat has and netsnoop lacks: %s" % missing)
        for key, value in theirs.items():
            if key in flat:
                assert_grown_since(value, flat[key], key)
        grown = {k: flat[k] - v for k, v in theirs.items() if k in flat and flat[k] != v}
        assert not grown
        return len(theirs)
    assert retry(check, timeout=6.0) > 100


def test_counters_saw_the_helpers_traffic(snap):
    snmp = snap["tabs"]["analysis"]["snmp"]
    assert snmp["Udp"]["NoPorts"] >= 1                 # the datagram to a closed port
    assert snmp["IcmpMsg"].get("OutType3", 0) >= 1     # ... answered port unreachable
    assert snmp["IcmpMsg"].get("OutType8", 0) >= 1     # the ping socket's echo request
    assert snmp["Tcp"]["CurrEstab"] >= 2
    icmp = snap["tabs"]["icmp"]["counters"]
    assert icmp["IcmpMsg"] == snmp["IcmpMsg"] and "Icmp6" in icmp
    texts = " ".join(f["text"] for f in snap["tabs"]["analysis"]["findings"])
    assert "NoPorts" in texts


def test_softnet_is_global_one_row_per_online_cpu(snap):
    rows = snap["tabs"]["analysis"]["softnet"]
    with open("/proc/net/softnet_stat") as f:
        host_rows = len([ln for ln in f if ln.strip()])
    assert len(rows) == host_rows
    assert sorted(r["cpu"] for r in rows) == sorted(set(r["cpu"] for r in rows))
