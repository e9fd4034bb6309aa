"""Findings: every row of the README's thresholds table, on each side of its threshold.

The counters are written as the kernel prints them (snmp, snmp6, netstat, softnet_stat, dev,
stat/arp_cache) into a --proc tree and read back through ProcFS + collect_tab("analysis"), so
each case runs file text -> parsers -> findings.  Absolute (since boot, as --once) and with
`prev` (deltas between two refreshes, as the session), including counters that went down.
The live test provokes real anomalies on loopback in a private network namespace.
"""
import collections
import json
import os
import re
import subprocess
import sys

import pytest

import netsnoop
from conftest import FIXTURES, NETSNOOP, needs_root_netns

PID = 4242
LIVE_NET = os.path.join(FIXTURES, "netns_live", "proc", "24654", "net")
NCPU = 2


def _zeroed(sections):
    return collections.OrderedDict(
        (sec, collections.OrderedDict((name, 0) for name in counters))
        for sec, counters in sections.items())


def _read_live(name):
    with open(os.path.join(LIVE_NET, name)) as f:
        return f.read()


# Counter names and order exactly as a real kernel printed them (the captured netns tree).
SNMP_NAMES = netsnoop.parse_snmp(_read_live("snmp"))
NETSTAT_NAMES = netsnoop.parse_snmp(_read_live("netstat"))
SNMP6_NAMES = netsnoop.parse_snmp6(_read_live("snmp6"))
ARP_CACHE_NAMES = ("entries allocs destroys hash_grows lookups hits res_failed rcv_probes_mcast "
                   "rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards "
                   "table_fulls").split()
SOFTNET_POS = {"processed": 0, "dropped": 1, "time_squeeze": 2, "cpu_collision": 8,
               "received_rps": 9, "flow_limit_count": 10, "backlog_len": 11}


class Counters(object):
    """Every counter netsnoop's analysis reads, all zero until set; written as kernel text."""

    def __init__(self, ifaces=("lo", "v0")):
        self.snmp = _zeroed(SNMP_NAMES)
        self.netstat = _zeroed(NETSTAT_NAMES)
        self.snmp6 = _zeroed(SNMP6_NAMES)
        self.softnet = [dict.fromkeys(SOFTNET_POS, 0) for _ in range(NCPU)]
        self.dev = collections.OrderedDict(
            (name, dict.fromkeys(netsnoop.DEV_FIELDS, 0)) for name in ifaces)
        self.arp_cache = [dict.fromkeys(ARP_CACHE_NAMES, 0) for _ in range(NCPU)]
        self.missing = set()

    def counters(self):
        """(container, key) of every counter, for filling a noisy baseline."""
        for group in (self.snmp, self.netstat, self.snmp6):
            for counters in group.values():
                for name in counters:
                    yield counters, name
        for row in self.softnet + list(self.dev.values()) + self.arp_cache:
            for name in row:
                yield row, name

    def set(self, path, value):
        """("snmp", "Tcp", "OutSegs") / ("dev", "v0", "rx_drop") / ("softnet", 1, "dropped")."""
        group, key, name = path
        container = getattr(self, group)[key]
        assert name in container, path          # a typo must not make a case pass
        container[name] = value

    def add(self, path, value):
        group, key, name = path
        self.set(path, getattr(self, group)[key][name] + value)

    # -- kernel text ---------------------------------------------------------------------
    def snmp_text(self, sections):
        out = []
        for sec, counters in sections.items():
            out.append("%s: %s\n" % (sec, " ".join(counters)))
            out.append("%s: %s\n" % (sec, " ".join(str(v) for v in counters.values())))
        return "".join(out)

    def snmp6_text(self):
        return "".join("%-32s\t%d\n" % (sec + name, value)
                       for sec, counters in self.snmp6.items()
                       for name, value in counters.items())

    def softnet_text(self):
        lines = []
        for cpu, row in enumerate(self.softnet):
            cols = [0] * 13
            for name, pos in SOFTNET_POS.items():
                cols[pos] = row[name]
            cols[12] = cpu
            lines.append(" ".join("%08x" % v for v in cols))
        return "\n".join(lines) + "\n"

    def dev_text(self):
        out = ["Inter-|   Receive                                                |  Transmit\n",
               " face |bytes    packets errs drop fifo frame compressed multicast|bytes    "
               "packets errs drop fifo colls carrier compressed\n"]
        for name, row in self.dev.items():
            out.append("%6s: %7d %7d %4d %4d %4d %5d %10d %9d %8d %7d %4d %4d %4d %5d %7d %10d\n"
                       % ((name,) + tuple(row[f] for f in netsnoop.DEV_FIELDS)))
        return "".join(out)

    def arp_cache_text(self):
        out = ["entries  allocs   destroys hash_grows lookups  hits     res_failed "
               "rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs "
               "unresolved_discards table_fulls\n"]
        for row in self.arp_cache:
            out.append(" ".join("%08x" % row[n] for n in ARP_CACHE_NAMES) + "\n")
        return "".join(out)

    def write(self, root):
        net = os.path.join(str(root), str(PID), "net")
        os.makedirs(os.path.join(net, "stat"))
        files = {"snmp": self.snmp_text(self.snmp), "netstat": self.snmp_text(self.netstat),
                 "snmp6": self.snmp6_text(), "softnet_stat": self.softnet_text(),
                 "dev": self.dev_text(), "stat/arp_cache": self.arp_cache_text()}
        for name, text in files.items():
            if name not in self.missing:
                with open(os.path.join(net, name), "w") as f:
                    f.write(text)
        return root

    def analysis(self, root):
        """The analysis tab read from kernel text, as --once reads it."""
        self.write(root)
        data = netsnoop.collect_tab(netsnoop.ProcFS(str(root)), PID, "analysis")
        assert data.get("skipped_lines", 0) == 0, data
        return data


# --- the README table, case by case ------------------------------------------------------

def settings(*pairs):
    """settings((path, value), ...) -> a function of n giving {path: value}."""
    def make(n):
        return {path: (value(n) if callable(value) else value) for path, value in pairs}
    return make


def one(path):
    return settings((path, lambda n: n))


def split_cpus(field, group="softnet"):
    """n spread over both CPUs (netsnoop must sum them)."""
    return settings(((group, 0, field), lambda n: n // 2), ((group, 1, field), lambda n: n - n // 2))


class Case(collections.namedtuple("Case", "name make marker points")):
    """`make(n)` -> counters to set; `points`: [(n, severity or None)] around the thresholds."""


WARN_ABOVE_ZERO = [(0, None), (1, "warn"), (5000, "warn")]
INFO_ABOVE_ZERO = [(0, None), (1, "info"), (5000, "info")]
ALERT_ABOVE_ZERO = [(0, None), (1, "alert")]


def _cases():
    cases = [
        Case("retrans ratio", settings((("snmp", "Tcp", "OutSegs"), 1000),
                                       (("snmp", "Tcp", "RetransSegs"), lambda n: n)),
             "TCP retransmitted", [(0, None), (9, None), (10, "warn"), (49, "warn"),
                                   (50, "alert"), (1000, "alert")]),
        Case("retrans ratio 2", settings((("snmp", "Tcp", "OutSegs"), 200000),
                                         (("snmp", "Tcp", "RetransSegs"), lambda n: n)),
             "TCP retransmitted", [(1999, None), (2000, "warn"), (9999, "warn"),
                                   (10000, "alert")]),
    ]
    for name in ("ListenOverflows", "ListenDrops"):
        cases.append(Case(name, one(("netstat", "TcpExt", name)), "(TcpExt %s)" % name,
                          [(0, None), (1, "warn"), (99, "warn"), (100, "alert")]))
    for name in ("TCPAbortOnMemory", "TCPBacklogDrop", "PruneCalled"):
        cases.append(Case(name, one(("netstat", "TcpExt", name)), "(TcpExt %s)" % name,
                          WARN_ABOVE_ZERO))
    for name in ("InErrs", "InCsumErrors"):
        cases.append(Case("Tcp " + name, one(("snmp", "Tcp", name)), "(Tcp %s)" % name,
                          WARN_ABOVE_ZERO))
    for group, sec in (("snmp", "Udp"), ("snmp", "UdpLite"), ("snmp6", "Udp6"),
                       ("snmp6", "UdpLite6")):
        for name in ("RcvbufErrors", "SndbufErrors", "InErrors", "MemErrors"):
            cases.append(Case("%s %s" % (sec, name), one((group, sec, name)),
                              "(%s %s)" % (sec, name), WARN_ABOVE_ZERO))
        cases.append(Case(sec + " NoPorts", one((group, sec, "NoPorts")), "(%s NoPorts)" % sec,
                          INFO_ABOVE_ZERO))
    for group, sec in (("snmp", "Ip"), ("snmp6", "Ip6")):
        for name in ("InHdrErrors", "InDiscards", "OutDiscards", "ReasmFails"):
            cases.append(Case("%s %s" % (sec, name), one((group, sec, name)),
                              "(%s %s)" % (sec, name), WARN_ABOVE_ZERO))
        cases.append(Case(sec + " InAddrErrors", one((group, sec, "InAddrErrors")),
                          "(%s InAddrErrors)" % sec, INFO_ABOVE_ZERO))
    cases += [
        Case("softnet dropped", split_cpus("dropped"), "softnet_stat dropped", ALERT_ABOVE_ZERO
             + [(2, "alert")]),
        Case("softnet time_squeeze", split_cpus("time_squeeze"), "softnet_stat time_squeeze",
             INFO_ABOVE_ZERO),
        Case("iface rx_errs", one(("dev", "v0", "rx_errs")), "v0: ", WARN_ABOVE_ZERO),
        Case("iface tx_errs", one(("dev", "v0", "tx_errs")), "v0: ", WARN_ABOVE_ZERO),
        # 1,000 packets (rx + tx): 9 drops are 0.9% (info), 10 are 1% (warn).
        Case("iface drops", settings((("dev", "v0", "rx_packets"), 600),
                                     (("dev", "v0", "tx_packets"), 400),
                                     (("dev", "v0", "rx_drop"), lambda n: n - n // 3),
                                     (("dev", "v0", "tx_drop"), lambda n: n // 3)),
             "v0: ", [(0, None), (1, "info"), (9, "info"), (10, "warn"), (500, "warn")]),
        Case("iface drops no packets", one(("dev", "lo", "rx_drop")), "lo: ",
             [(0, None), (1, "warn")]),
        Case("arp res_failed", split_cpus("res_failed", "arp_cache"), "(arp_cache res_failed)",
             INFO_ABOVE_ZERO),
        Case("arp unresolved_discards", split_cpus("unresolved_discards", "arp_cache"),
             "(arp_cache unresolved_discards)", WARN_ABOVE_ZERO),
        Case("arp table_fulls", split_cpus("table_fulls", "arp_cache"),
             "(arp_cache table_fulls)", ALERT_ABOVE_ZERO),
    ]
    return cases


CASES = _cases()
POINTS = [pytest.param(case, n, severity, id="%s-%d" % (case.name, n))
          for case in CASES for n, severity in case.points]
NOTHING = "no anomalies in the counters"


def check(found, case, n, severity, since):
    """Exactly the expected finding (or none), worded with its counter and the right period."""
    for f in found:
        assert f["severity"] in ("info", "warn", "alert"), f
        assert f["text"].endswith(since), f
        assert not re.search(r"(?<![\w+])-\d", f["text"]), f      # never a negative count
    mine = [f for f in found if case.marker in f["text"]]
    if severity is None:
        assert mine == [], found
        assert [f["text"] for f in found] == [NOTHING + since], found
        return
    assert [f["severity"] for f in mine] == [severity], found
    assert re.search(r"\b%d\b" % n, mine[0]["text"]), mine      # the count is stated
    assert NOTHING not in " ".join(f["text"] for f in found)


def paired(found, case):
    """Findings the kernel's double counting explains (one event, two counters)."""
    return [f for f in found if case.marker not in f["text"]]


@pytest.mark.parametrize("case,n,severity", POINTS)
def test_since_boot(tmp_path, case, n, severity):
    """Fails on a wrong threshold, severity or wording for the case's counter since boot."""
    c = Counters()
    for path, value in case.make(n).items():
        c.set(path, value)
    data = c.analysis(tmp_path)
    check(data["findings"], case, n, severity, " since boot")
    assert paired(data["findings"], case) == [] or severity is None


def noisy_baseline(c, base=10 ** 6):
    """Every counter already large since boot: only the deltas may show."""
    for container, name in c.counters():
        container[name] = base + len(name)


def delta_pair(tmp_path, case, n, before=None):
    """prev: a noisy baseline; cur: the same plus the case's counters (or `before` -> n)."""
    prev, cur = Counters(), Counters()
    noisy_baseline(prev)
    noisy_baseline(cur)
    start = case.make(before) if before is not None else {}
    for path, value in start.items():
        prev.add(path, value)
        cur.add(path, value)
    grow = case.make(n)
    for path, value in grow.items():
        cur.add(path, value - start.get(path, 0))
    return (prev.analysis(tmp_path / "prev"), cur.analysis(tmp_path / "cur"))


@pytest.mark.parametrize("case,n,severity", POINTS)
def test_between_refreshes(tmp_path, case, n, severity):
    old, new = delta_pair(tmp_path, case, n)
    check(netsnoop.findings(new, old), case, n, severity, " since the last refresh")


@pytest.mark.parametrize("out_segs,retrans,severity", [
    (99, 99, None),         # under 100 segments between refreshes: no ratio at all
    (100, 0, None), (100, 1, "warn"), (100, 4, "warn"), (100, 5, "alert"),
    (999, 999, "alert"),    # 1,000 is the since-boot minimum only
])
def test_retrans_minimum_between_refreshes(tmp_path, out_segs, retrans, severity):
    case = Case("retrans", settings((("snmp", "Tcp", "OutSegs"), out_segs),
                                    (("snmp", "Tcp", "RetransSegs"), lambda n: n)),
                "TCP retransmitted", [])
    old, new = delta_pair(tmp_path, case, retrans)
    check(netsnoop.findings(new, old), case, retrans, severity, " since the last refresh")


@pytest.mark.parametrize("out_segs,severity", [(999, None), (1000, "alert")])
def test_retrans_minimum_since_boot(tmp_path, out_segs, severity):
    c = Counters()
    c.set(("snmp", "Tcp", "OutSegs"), out_segs)
    c.set(("snmp", "Tcp", "RetransSegs"), out_segs // 2)
    case = Case("retrans", None, "TCP retransmitted", [])
    check(c.analysis(tmp_path)["findings"], case, out_segs // 2, severity, " since boot")


def test_every_case_fires_between_refreshes_too(tmp_path):
    """All anomalies at once: each case's finding appears exactly once, nothing else."""
    prev, cur = Counters(), Counters()
    noisy_baseline(prev)
    noisy_baseline(cur)
    for case in CASES:
        if case.name.startswith(("retrans ratio 2", "iface drops no")):
            continue
        for path, value in case.make(case.points[-1][0]).items():
            cur.add(path, value)
    found = netsnoop.findings(cur.analysis(tmp_path / "c"), prev.analysis(tmp_path / "p"))
    texts = [f["text"] for f in found]
    for case in CASES:
        if case.name.startswith(("retrans ratio 2", "iface drops no")):
            continue
        assert any(case.marker in t for t in texts), (case.name, texts)
    assert NOTHING not in " ".join(texts)


# --- counters that went down, rows that came and went -----------------------------------

@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_counter_that_went_down_is_no_finding(tmp_path, case):
    """A reset (or a 32-bit softnet counter that wrapped) never gives a negative or bogus finding."""
    high = max(n for n, _ in case.points)
    prev, cur = Counters(), Counters()
    for path, value in case.make(high).items():
        prev.set(path, value + 7)
    for path, value in case.make(0).items():
        cur.set(path, value)
    check(netsnoop.findings(cur.analysis(tmp_path / "c"), prev.analysis(tmp_path / "p")),
          case, 0, None, " since the last refresh")


def test_interface_recreated_with_drops_is_no_finding(tmp_path):
    """v0 deleted and created again: packets went down, drops went up; no ratio is made up."""
    prev, cur = Counters(), Counters()
    prev.set(("dev", "v0", "rx_packets"), 10 ** 6)
    prev.set(("dev", "v0", "tx_packets"), 10 ** 6)
    cur.set(("dev", "v0", "rx_packets"), 3)
    cur.set(("dev", "v0", "rx_drop"), 5)
    cur.set(("dev", "v0", "rx_errs"), 2)
    found = netsnoop.findings(cur.analysis(tmp_path / "c"), prev.analysis(tmp_path / "p"))
    assert [f["text"] for f in found] == [NOTHING + " since the last refresh"]


def test_interface_that_appeared_or_vanished_is_no_finding(tmp_path):
    prev = Counters(ifaces=("lo", "old0"))
    prev.set(("dev", "old0", "rx_drop"), 50)
    cur = Counters(ifaces=("lo", "new0"))
    cur.set(("dev", "new0", "rx_drop"), 50)          # since it was created, not since the refresh
    cur.set(("dev", "new0", "tx_errs"), 50)
    found = netsnoop.findings(cur.analysis(tmp_path / "c"), prev.analysis(tmp_path / "p"))
    assert [f["text"] for f in found] == [NOTHING + " since the last refresh"]
    # ... but from its second refresh on, new0's drops count.
    later = Counters(ifaces=("lo", "new0"))
    later.set(("dev", "new0", "rx_drop"), 53)
    later.set(("dev", "new0", "tx_errs"), 50)
    later.set(("dev", "new0", "rx_packets"), 1000)
    found = netsnoop.findings(later.analysis(tmp_path / "l"), cur.analysis(tmp_path / "c2"))
    assert [(f["severity"], f["text"]) for f in found] == [
        ("info", "interface new0: 3 packets dropped (0.30% of 1000) since the last refresh")]


def test_cpu_offline_and_back_is_no_finding(tmp_path):
    prev, cur = Counters(), Counters()
    prev.softnet = prev.softnet[:1]                  # CPU 1 was offline at the last refresh
    cur.set(("softnet", 1, "dropped"), 40)
    cur.set(("softnet", 1, "time_squeeze"), 40)
    found = netsnoop.findings(cur.analysis(tmp_path / "c"), prev.analysis(tmp_path / "p"))
    assert [f["text"] for f in found] == [NOTHING + " since the last refresh"]
    cur.set(("softnet", 0, "dropped"), 3)
    found = netsnoop.findings(cur.analysis(tmp_path / "c2"), prev.analysis(tmp_path / "p2"))
    assert [(f["severity"], f["text"].split(":")[0]) for f in found] == [
        ("alert", "softnet backlog full")]
    assert "3 packets dropped" in found[0]["text"]


@pytest.mark.parametrize("name,path", [
    ("snmp6", ("snmp6", "Udp6", "RcvbufErrors")),
    ("snmp", ("snmp", "Udp", "RcvbufErrors")),
    ("stat/arp_cache", ("arp_cache", 0, "table_fulls")),
    ("softnet_stat", ("softnet", 0, "dropped")),
    ("dev", ("dev", "v0", "rx_errs")),
])
def test_file_missing_at_last_refresh_has_no_baseline(tmp_path, name, path):
    """A since-boot total must not be reported as "since the last refresh"."""
    prev, cur = Counters(), Counters()
    prev.missing.add(name)
    cur.set(path, 10 ** 6)
    old = prev.analysis(tmp_path / "p")
    assert name in old["files_missing"]
    found = netsnoop.findings(cur.analysis(tmp_path / "c"), old)
    assert [f["text"] for f in found] == [NOTHING + " since the last refresh"]


def test_missing_files_since_boot_are_no_finding(tmp_path):
    c = Counters()
    c.missing.update(("snmp6", "stat/arp_cache", "softnet_stat", "netstat"))
    data = c.analysis(tmp_path)
    assert sorted(data["files_missing"]) == sorted(c.missing)
    assert [f["text"] for f in data["findings"]] == [NOTHING + " since boot"]


def test_captured_tree_findings():
    """The real capture: one datagram to a closed port, nothing else wrong."""
    data = netsnoop.collect_tab(netsnoop.ProcFS(os.path.join(FIXTURES, "netns_live", "proc")),
                                24654, "analysis")
    assert data["snmp"]["Udp"]["NoPorts"] == 1
    assert data["findings"] == [collections.OrderedDict(
        severity="info", text="Udp datagrams to ports nobody listens on: 1 (Udp NoPorts) "
                              "since boot")]


# --- live: real anomalies on loopback in a private network namespace ---------------------

PROVOKE = r'''
import json, os, socket, subprocess, sys, time
netsnoop, prog = sys.argv[1], sys.argv[2]
assert subprocess.call(["ip", "link", "set", "lo", "up"]) == 0

def snap():
    out = subprocess.run([sys.executable, netsnoop, str(os.getpid()), "--once", "--tab",
                          "analysis", "--json"], stdout=subprocess.PIPE, check=True).stdout
    return json.loads(out.decode())

before = snap()
# RcvbufErrors: a receiver with the smallest buffer that never reads, flooded on loopback.
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
rx.bind(("127.0.0.1", 0))
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(300):
    tx.sendto(b"x" * 1000, rx.getsockname())
# NoPorts: datagrams to a port nobody listens on (bind, learn the port, close).
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.bind(("127.0.0.1", 0))
closed = probe.getsockname()
probe.close()
for _ in range(5):
    tx.sendto(b"?", closed)
# ListenOverflows: a backlog of 1 that is never accepted, and many connects.
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
clients = []
for _ in range(12):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(ls.getsockname())
    clients.append(c)
time.sleep(0.3)
after = snap()
print(json.dumps({"before": before, "after": after}))
'''


@needs_root_netns
def test_live_anomalies_in_private_netns():
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", PROVOKE, NETSNOOP, "x"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    before = out["before"]["tabs"]["analysis"]
    after = out["after"]["tabs"]["analysis"]
    udp, tcpext = after["snmp"]["Udp"], after["netstat"]["TcpExt"]
    assert udp["RcvbufErrors"] > 0 and udp["NoPorts"] >= 5 and tcpext["ListenOverflows"] > 0

    def by_counter(found):
        return {re.search(r"\((\w+ \w+)\)", f["text"]).group(1): f
                for f in found if re.search(r"\((\w+ \w+)\)", f["text"])}

    # --once: since boot of this namespace (softnet_stat is global: ignore it).
    since_boot = by_counter(after["findings"])
    assert since_boot["Udp RcvbufErrors"]["severity"] == "warn"
    assert ": %d (Udp RcvbufErrors)" % udp["RcvbufErrors"] in since_boot["Udp RcvbufErrors"]["text"]
    assert since_boot["Udp NoPorts"]["severity"] == "info"
    assert ": %d (Udp NoPorts)" % udp["NoPorts"] in since_boot["Udp NoPorts"]["text"]
    overflows = since_boot["TcpExt ListenOverflows"]
    assert overflows["severity"] == ("alert" if tcpext["ListenOverflows"] >= 100 else "warn")
    assert " %d times" % tcpext["ListenOverflows"] in overflows["text"]
    # The session's view: the deltas between the two snapshots, exactly what was provoked.
    delta = by_counter(netsnoop.findings(after, before))
    rcvbuf = udp["RcvbufErrors"] - before["snmp"]["Udp"]["RcvbufErrors"]
    assert delta["Udp RcvbufErrors"]["text"] == (
        "Udp datagrams dropped: receive buffer full: %d (Udp RcvbufErrors) since the last refresh"
        % rcvbuf)
    assert "Udp NoPorts" in delta and "TcpExt ListenOverflows" in delta
    assert all(f["text"].endswith(" since the last refresh") for f in delta.values())
    # Nothing provoked on IPv6, nothing on the IP layer.
    assert not [k for k in delta if k.startswith(("Udp6", "Ip "))], delta
