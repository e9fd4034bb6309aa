"""Views: tab data -> Tables -> text, on the captured netns tree and on crafted data.

Rows are checked against an independent account of the same namespace: the ss output and the
owned inodes that tools/capture_fixtures.py recorded beside the tree (capture.json).
"""
import collections
import copy
import json
import os
import re
import shutil

import pytest
import wcwidth

import netsnoop
from conftest import FIXTURES, run_netsnoop

TREE = os.path.join(FIXTURES, "netns_live", "proc")
PID = 24654
OTHER_PID = 24692            # same namespace, holds no socket
with open(os.path.join(FIXTURES, "netns_live", "capture.json")) as _f:
    CAPTURE = json.load(_f)
OWNED = set(CAPTURE["owned_inodes"][str(PID)])
ALL_TABS = netsnoop.NET_TABS + ("procs",)
SOCKET_TABS = ("tcp", "udp", "raw", "icmp")
OWN = 8                      # the Own column of a socket table ("*" when PID holds it)
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                    "\u2066-\u2069\ufeff\ud800-\udfff]")


def collect(tab, root=TREE, pid=PID):
    return netsnoop.collect_tab(netsnoop.ProcFS(str(root)), pid, tab)


@pytest.fixture(scope="module")
def tabs():
    return {tab: collect(tab) for tab in ALL_TABS}


def columns_of(table, name):
    return [c.title for c in table.columns].index(name)


# --- format_table: alignment, escaping, cutting ------------------------------------------

def header_spans(table, header_line):
    """(start, end) terminal columns of each title in the header line, in order."""
    spans, pos = [], 0
    for col in table.columns:
        start = header_line.index(col.title, pos)
        spans.append((start, start + len(col.title)))
        pos = start + len(col.title)
    return spans


def check_aligned(table, lines=None):
    """Every row: left columns start where their title starts, right columns end where it ends.

    Positions are terminal columns (a CJK character takes two), measured independently of
    format_table with unicodedata.
    """
    import unicodedata

    def width(text):
        return sum(0 if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf")
                   else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)

    lines = lines if lines is not None else netsnoop.format_table(table)
    assert lines[0] == "== %s ==" % netsnoop.printable(table.title, netsnoop.CELL_LIMIT)
    assert len(lines) == 2 + len(table.rows) + len([n for n in table.notes if n])
    spans = header_spans(table, lines[1])
    assert spans[0][0] == 0
    for row, line in zip(table.rows, lines[2:2 + len(table.rows)]):
        pos = 0
        for (start, end), col, cell in zip(spans, table.columns, row.cells):
            text = netsnoop.printable(cell, netsnoop.CELL_LIMIT)
            at = line.index(text, pos) if text else None
            if text:
                col_at = width(line[:at])
                if col.align == netsnoop.L:
                    assert col_at == start, (table.title, col.title, line)
                else:
                    assert col_at + width(text) == end, (table.title, col.title, line)
                pos = at + len(text)
        assert line == line.rstrip()
    # No column wider than its widest cell or title requires: the longest line is exact.
    widths = [max([end - start] + [width(netsnoop.printable(r.cells[i], netsnoop.CELL_LIMIT))
                                   for r in table.rows])
              for i, (start, end) in enumerate(spans)]
    need = sum(widths) + 2 * (len(widths) - 1)
    body = lines[1:2 + len(table.rows)]
    assert max(width(ln) for ln in body) <= need
    for note, line in zip([n for n in table.notes if n], lines[2 + len(table.rows):]):
        assert line == "  (%s)" % netsnoop.printable(note)
    return lines


@pytest.mark.parametrize("tab", ALL_TABS)
def test_every_tab_renders_aligned(tabs, tab):
    tables = netsnoop.tab_tables(tab, tabs[tab])
    assert tables and all(isinstance(t, netsnoop.Table) for t in tables)
    for table in tables:
        for row in table.rows:
            assert len(row.cells) == len(table.columns), (table.title, row)
            assert all(isinstance(c, str) for c in row.cells), row
            assert row.role in (None, "owned", "warn", "alert", "info", "changed"), row
        check_aligned(table)


HOSTILE_CELLS = ["\x1b[2J\x1b]0;pwned\x07", "c1\x9b31m", "bidi\u202eevil\u2066", "bad\udcff\udc80",
                 "nl\nx\ry", "wide\u4e2d\u6587", "e\u0301\u0301", "z" * 500, "", "\\e"]


def test_hostile_cells_are_escaped_aligned_and_cut():
    table = netsnoop.Table(
        "title\x1b[31m\u202e", [netsnoop.Column("Name", netsnoop.L), netsnoop.Column("N", netsnoop.R),
                                netsnoop.Column("Last", netsnoop.L)],
        [netsnoop.Row([cell, cell, "end"], None, i) for i, cell in enumerate(HOSTILE_CELLS)],
        ["note\x1b[1m\n2nd line"])
    lines = check_aligned(table)
    for line in lines:                      # and so no cell or note breaks a line
        assert not UNSAFE.search(line), [ch for ch in line if UNSAFE.match(ch)]
    text = "\n".join(lines)
    assert "\\e[2J\\e]0;pwned\\x07" in text and "c1\\u009b31m" in text
    assert "bidi\\u202eevil\\u2066" in text and "bad\\xff\\x80" in text and "\\\\e" in text
    assert lines[0] == "== title\\e[31m\\u202e =="
    assert "z" * netsnoop.CELL_LIMIT + "...[+300 chars]" in text
    assert "z" * (netsnoop.CELL_LIMIT + 1) not in text
    assert lines[-1] == "  (note\\e[1m\\n2nd line)"
    # Every row ends with its "end" cell in the same terminal column.
    assert len({netsnoop.text_width(ln) for ln in lines[2:-1]}) == 1


def test_hostile_section_names_from_a_fake_tree(tmp_path):
    """Counter sections name the tables: a --proc tree can put escapes there."""
    pid_dir = tmp_path / "77"
    shutil.copytree(os.path.join(TREE, str(PID)), str(pid_dir), symlinks=True)
    (pid_dir / "net" / "netstat").write_bytes(
        b"Tcp\x1b]0;x\x07Ext: A\x9bB C\n" b"Tcp\x1b]0;x\x07Ext: 1 2\n")
    r = run_netsnoop("--proc", tmp_path, "77", "--once", "--tab", "stats")
    assert r.returncode == 0, r.stderr
    assert not UNSAFE.search(r.stdout.replace("\n", "")), r.stdout
    assert "== Tcp\\e]0;x\\x07Ext ==" in r.stdout and "\nA\\x9bB " in r.stdout


# --- socket tables: one row per socket, ss-like endpoints, owned marker ------------------

def expected_endpoint(address, port, peer=False):
    host = "[%s]" % address if ":" in address else address
    return "%s:%s" % (host, "*" if peer and port == 0 else port)


@pytest.mark.parametrize("tab", SOCKET_TABS)
def test_socket_rows_match_the_data(tabs, tab):
    data = tabs[tab]
    table = netsnoop.tab_tables(tab, data)[0]
    assert data["sockets"] and len(table.rows) == len(data["sockets"])
    local = columns_of(table, table.columns[4].title)
    peer, own = columns_of(table, "Peer Address:Port"), columns_of(table, "Own")
    for sock, row in zip(data["sockets"], table.rows):
        cells = row.cells
        # ss's words: an unconnected udp/raw/icmp socket is UNCONN (the kernel's CLOSE)
        unconnected = sock["state"] == "CLOSE" and tab != "tcp"
        assert cells[0] == sock["proto"]
        assert cells[1] == ("UNCONN" if unconnected else sock["state"])
        # a listener's Send-Q is its backlog in ss; /proc does not give it
        send_q = "-" if sock["state"] == "LISTEN" else str(sock["tx_queue"])
        assert cells[2:4] == [str(sock["rx_queue"]), send_q]
        assert cells[local] == expected_endpoint(sock["local_address"], sock["local_port"])
        assert cells[peer] == expected_endpoint(sock["remote_address"], sock["remote_port"], True)
        assert cells[columns_of(table, "Inode")] == str(sock["inode"])
        # Owned: from the capture tool's own record of PID's fds, not from netsnoop.
        owned = sock["inode"] in OWNED
        assert cells[own] == ("*" if owned else "") and (row.role == "owned") == owned
    keys = [row.key for row in table.rows]
    assert len(set(keys)) == len(keys)
    assert table.notes[0] == "%d socket%s in the namespace, %d owned by the process (*)" % (
        len(table.rows), "" if len(table.rows) == 1 else "s",
        sum(1 for s in data["sockets"] if s["inode"] in OWNED))


SS_STATES = {"UNCONN": "UNCONN", "ESTAB": "ESTABLISHED", "TIME-WAIT": "TIME_WAIT",
             "LISTEN": "LISTEN"}


def _same_endpoint(ss, ours):
    ss_host, _, ss_port = ss.rpartition(":")
    host, _, port = ours.rpartition(":")
    if ss_port != port:
        return False
    return ss_host == host or (ss_host == "*" and host in ("[::]", "0.0.0.0"))


def test_socket_rows_match_ss(tabs):
    """Each socket once, like `ss -tuwan` printed it in the same namespace at capture time."""
    ours = []
    for tab in ("tcp", "udp", "raw"):
        table = netsnoop.tab_tables(tab, tabs[tab])[0]
        ours += [row.cells for row in table.rows]
    theirs = [line.split() for line in CAPTURE["views"]["ss"]]
    assert len(ours) == len(theirs)
    unmatched = list(ours)
    for netid, state, recvq, _sendq, local, peer in theirs:
        match = [c for c in unmatched
                 if c[0].rstrip("6") == netid and c[1] == SS_STATES[state] and c[2] == recvq
                 and _same_endpoint(local, c[4]) and _same_endpoint(peer, c[5])]
        assert len(match) == 1, (netid, state, local, peer, unmatched)
        unmatched.remove(match[0])
    assert unmatched == []


def test_other_process_owns_nothing():
    data = collect("tcp", pid=OTHER_PID)
    assert data["owned_known"] is True and data["sockets"]
    table = netsnoop.tab_tables("tcp", data)[0]
    assert all(r.cells[OWN] == "" and r.role is None for r in table.rows)
    assert "0 owned by the process" in table.notes[0]


def test_unknown_ownership_is_said_once(tabs):
    data = copy.deepcopy(tabs["udp"])
    for s in data["sockets"]:
        s["owned"] = False
    data["owned_known"] = False
    data["owned_reason"] = "cannot read /proc/%d/fd (permission denied)" % PID
    table = netsnoop.tab_tables("udp", data)[0]
    assert [n for n in table.notes if n.startswith("ownership unknown")] == [
        "ownership unknown: cannot read /proc/%d/fd (permission denied)" % PID]
    assert all(r.cells[OWN] == "" for r in table.rows)


# --- the other tabs' rows against their data ----------------------------------------------

def test_traffic_rows(tabs):
    data = tabs["traffic"]
    table = netsnoop.tab_tables("traffic", data)[0]
    links = {link["ifname"]: link["stats64"] for link in CAPTURE["views"]["ip_link"]}
    assert [r.cells[0] for r in table.rows] == [i["name"] for i in data["interfaces"]]
    assert sorted(links) == sorted(r.cells[0] for r in table.rows)
    for row in table.rows:
        st = links[row.cells[0]]
        assert row.cells[1:] == [
            "%dB" % st["rx"]["bytes"], str(st["rx"]["packets"]), str(st["rx"]["errors"]),
            str(st["rx"]["dropped"]), "%dB" % st["tx"]["bytes"], str(st["tx"]["packets"]),
            str(st["tx"]["errors"]), str(st["tx"]["dropped"])]


def test_routing_rows(tabs):
    v4, v6 = netsnoop.tab_tables("routing", tabs["routing"])
    assert [(r.cells[0], r.cells[1], r.cells[3]) for r in v4.rows] == [
        ("192.0.2.0", "0.0.0.0", "U"), ("198.51.100.0", "192.0.2.254", "UG")]
    ip6 = {(r["dst"] if "/" in r["dst"] else r["dst"] + "/128", r["dev"])
           for r in CAPTURE["views"]["ip6_route"]}
    ours = {(r.cells[0], r.cells[-1]) for r in v6.rows}
    assert ip6 <= ours                      # ip -6 route hides the null entries of lo
    assert ours - ip6 == {("::/0", "lo")}


def test_arp_rows(tabs):
    table = netsnoop.tab_tables("arp", tabs["arp"])[0]
    neigh = CAPTURE["views"]["ip_neigh"]
    assert [(r.cells[0], r.cells[3], r.cells[5]) for r in table.rows] == [
        (n["dst"], n["lladdr"], n["dev"]) for n in neigh]
    assert any("only in the host network namespace" in n for n in table.notes)


def test_stats_hides_zero_counters_and_counts_them(tabs):
    data = tabs["stats"]
    tables = netsnoop.tab_tables("stats", data)
    sections = [s for s in data if s not in ("skipped_lines", "files_missing")]
    assert [t.title for t in tables] == sections
    for table, section in zip(tables, sections):
        counters = data[section]
        assert [r.cells for r in table.rows] == [[k, str(v)] for k, v in counters.items() if v]
        zeros = sum(1 for v in counters.values() if not v)
        assert table.notes == (["%d zero counter%s not shown" % (zeros, "" if zeros == 1 else "s")]
                               if zeros else [])


def test_analysis_tables(tabs):
    data = tabs["analysis"]
    tables = netsnoop.tab_tables("analysis", data)
    assert tables[0].title == "findings"
    assert [r.cells for r in tables[0].rows] == [[f["severity"], f["text"]] for f in data["findings"]]
    assert [r.role for r in tables[0].rows] == [f["severity"] for f in data["findings"]]
    softnet = tables[1]
    assert [r.cells[0] for r in softnet.rows] == [str(r["cpu"]) for r in data["softnet"]]
    proc = columns_of(softnet, "processed")
    assert [int(r.cells[proc]) for r in softnet.rows] == [r["processed"] for r in data["softnet"]]
    titles = [t.title for t in tables[2:]]
    assert titles == list(data["snmp"]) + list(data["snmp6"])


# --- with prev/dt: changes and rates --------------------------------------------------------

def tree_copy(tmp_path, name):
    root = tmp_path / name
    shutil.copytree(TREE, str(root), symlinks=True)
    return root


def rewrite_dev(root, changes):
    """Add `changes` {(iface, field): n} to the tree's net/dev text, keeping its layout."""
    path = os.path.join(str(root), str(PID), "net", "dev")
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines[2:], 2):
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        values = [int(v) for v in rest.split()]
        for (iface, field), n in changes.items():
            if iface == name.strip():
                values[netsnoop.DEV_FIELDS.index(field)] += n
        lines[i] = "%6s: %s" % (name.strip(), " ".join("%7d" % v for v in values))
    with open(path, "w") as f:
        f.write("\n".join(lines))


def test_traffic_rates_for_a_known_delta(tmp_path):
    before = collect("traffic")
    root = tree_copy(tmp_path, "later")
    rewrite_dev(root, {("lo", "rx_bytes"): 20480, ("lo", "tx_bytes"): 1000,
                       ("lo", "rx_packets"): 20, ("v0", "tx_bytes"): 3 * 2 ** 20,
                       ("v1", "rx_bytes"): -100})         # v1 went down: recreated
    after = collect("traffic", root)
    table = netsnoop.tab_tables("traffic", after, prev=before, dt=2.0)[0]
    titles = [c.title for c in table.columns]
    assert titles[:3] == ["Iface", "RX bytes", "RX/s"] and "TX/s" in titles
    rx, tx = titles.index("RX/s"), titles.index("TX/s")
    rows = {r.cells[0]: r for r in table.rows}
    assert (rows["lo"].cells[rx], rows["lo"].cells[tx]) == ("10.0K/s", "500B/s")
    assert (rows["v0"].cells[rx], rows["v0"].cells[tx]) == ("0B/s", "1.5M/s")
    assert rows["v1"].cells[rx] == "0B/s"               # never a negative rate
    assert rows["lo"].cells[titles.index("RX bytes")] == "20.9K"       # 897 + 20480
    assert {k: r.role for k, r in rows.items()} == {"lo": "changed", "v0": "changed",
                                                     "v1": "changed"}
    check_aligned(table)
    # Unchanged since the last refresh: rates of zero, nothing highlighted.
    same = netsnoop.tab_tables("traffic", after, prev=after, dt=2.0)[0]
    assert all(r.role is None and r.cells[rx] == "0B/s" for r in same.rows)


def test_traffic_new_interface_and_no_usable_dt(tabs):
    data = tabs["traffic"]
    prev = copy.deepcopy(data)
    prev["interfaces"] = [i for i in prev["interfaces"] if i["name"] != "v0"]
    table = netsnoop.tab_tables("traffic", data, prev=prev, dt=1.0)[0]
    rx = columns_of(table, "RX/s")
    rows = {r.cells[0]: r for r in table.rows}
    assert rows["v0"].cells[rx] == "" and rows["v0"].role is None
    for dt in (None, 0, 0.0, -1.0):      # first refresh, or the clock stepped back
        table = netsnoop.tab_tables("traffic", data, prev=prev, dt=dt)[0]
        assert "RX/s" not in [c.title for c in table.columns], dt
        assert not any("/s" in c for r in table.rows for c in r.cells)


@pytest.mark.parametrize("width", [80, 40])
def test_session_traffic_has_rate_columns_from_the_first_refresh(tabs, width):
    """They appeared from the second refresh on, shifting the columns and a chosen sort."""
    data = tabs["traffic"]
    first = netsnoop.tab_tables("traffic", data, live=True)[0]
    second = netsnoop.tab_tables("traffic", data, prev=data, dt=2.0, live=True)[0]
    assert [c.title for c in first.columns] == [c.title for c in second.columns]
    rx, tx = columns_of(first, "RX/s"), columns_of(first, "TX/s")
    assert all(r.cells[rx] == r.cells[tx] == "" for r in first.rows)     # blank until known
    assert all(r.cells[rx] == r.cells[tx] == "0B/s" for r in second.rows)
    check_aligned(first)
    sort = (columns_of(first, "TX pkts"), True)          # chosen on the first refresh
    views = [netsnoop.TabView([t]) for t in (first, second)]
    for view in views:
        view.layout("", sort)
    headers = [view.visible(1, 1)[0][0][:width] for view in views]
    assert headers[0] == headers[1]
    first_rows = [view.visible(2, 1)[0][0].split()[0] for view in views]
    assert first_rows[0] == first_rows[1]                 # the sort picks the same row
    once = netsnoop.tab_tables("traffic", data)[0]        # --once has no rate to show
    assert "RX/s" not in [c.title for c in once.columns]


@pytest.mark.parametrize("n,text", [(0, "0B"), (1023, "1023B"), (1024, "1.0K"),
                                    (1536, "1.5K"), (2 ** 20, "1.0M"), (5 * 2 ** 30, "5.0G"),
                                    (2 ** 40, "1.0T"), (2 ** 50, "1024.0T"), (511.6, "511B")])
def test_human_bytes(n, text):
    assert netsnoop.human_bytes(n) == text


def rewrite_netstat(root, changes):
    path = os.path.join(str(root), str(PID), "net", "netstat")
    with open(path) as f:
        sections = netsnoop.parse_snmp(f.read())
    for (sec, name), n in changes.items():
        sections[sec][name] += n
    with open(path, "w") as f:
        for sec, counters in sections.items():
            f.write("%s: %s\n%s: %s\n" % (sec, " ".join(counters), sec,
                                        " ".join(str(v) for v in counters.values())))


def test_counter_tables_show_change_only_for_changed(tmp_path):
    before = collect("stats")
    root = tree_copy(tmp_path, "later")
    changes = {("TcpExt", "TW"): 3, ("TcpExt", "TCPPureAcks"): -4, ("IpExt", "InOctets"): 1000,
               ("TcpExt", "TCPTimeouts"): 2}      # a counter that was zero
    rewrite_netstat(root, changes)
    after = collect("stats", root)
    for table in netsnoop.tab_tables("stats", after, prev=before):
        assert [c.title for c in table.columns] == ["Counter", "Value", "Change"]
        for row in table.rows:
            n = changes.get((table.title, row.cells[0]))
            assert row.cells[2] == ("%+d" % n if n else ""), row
            assert row.role == ("changed" if n else None), row
        check_aligned(table)
    without = netsnoop.tab_tables("stats", after)
    assert all(len(t.columns) == 2 and all(r.role is None for r in t.rows) for t in without)


def test_icmp_and_analysis_counters_change(tmp_path, tabs):
    before_icmp, before = tabs["icmp"], tabs["analysis"]
    root = tree_copy(tmp_path, "later")
    path = os.path.join(str(root), str(PID), "net", "snmp")
    with open(path) as f:
        text = f.read()
    # One more datagram to a closed port, and one more ICMP port unreachable sent.
    text = text.replace("Udp: 0 1 0 2", "Udp: 0 2 0 2").replace("IcmpMsg: 1 1 1 1 1 1",
                                                                "IcmpMsg: 1 1 1 1 2 1")
    with open(path, "w") as f:
        f.write(text)
    after_icmp, after = collect("icmp", root), collect("analysis", root)
    tables = {t.title: t for t in netsnoop.tab_tables("icmp", after_icmp, prev=before_icmp)}
    changed = [(title, r.cells[0], r.cells[2]) for title, t in tables.items()
               for r in t.rows if r.role == "changed"]
    assert changed == [("IcmpMsg", "OutType3", "+1")]
    tables = netsnoop.tab_tables("analysis", after, prev=before)
    assert [r.cells for r in tables[0].rows] == [
        ["info", "Udp datagrams to ports nobody listens on: 1 (Udp NoPorts) since the last "
                 "refresh"]]
    changed = [(t.title, r.cells[0], r.cells[2]) for t in tables[2:] for r in t.rows
               if r.role == "changed"]
    assert changed == [("IcmpMsg", "OutType3", "+1"), ("Udp", "NoPorts", "+1")]


# --- widths: nothing breaks, nothing wider than the data needs ---------------------------------

def test_once_text_lines_are_as_wide_as_the_data_needs():
    r = run_netsnoop("--proc", TREE, PID, "--once", "--tab", "all")
    assert r.returncode == 0, r.stderr
    snap = json.loads(run_netsnoop("--proc", TREE, PID, "--once", "--tab", "all", "--json").stdout)
    expected = []
    for tab, data in snap["tabs"].items():
        tables = netsnoop.tab_tables(tab, data)
        if tab == "analysis":       # the icmp tab printed these sections already
            tables = [t for t in tables if t.title not in ("Icmp", "IcmpMsg", "Icmp6")]
            tables[0].notes.append("Icmp, IcmpMsg, Icmp6: in the icmp tab above")
        for table in tables:
            expected.append(check_aligned(table))
    blocks = r.stdout.rstrip("\n").split("\n\n")[1:]
    assert blocks == ["\n".join(lines) for lines in expected]


@pytest.mark.parametrize("width", [80, 40])
def test_views_render_at_narrow_widths(width):
    """format_table has no width: the session clips.  Rendering must not depend on COLUMNS."""
    env = dict(os.environ, COLUMNS=str(width), LINES="24")
    r = run_netsnoop("--proc", TREE, PID, "--once", "--tab", "all", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    wide = run_netsnoop("--proc", TREE, PID, "--once", "--tab", "all")
    assert r.stdout.split("\n")[1:] == wide.stdout.split("\n")[1:]   # the heading has the time


def test_format_snapshot_heading_is_escaped(tabs):
    snap = collections.OrderedDict(pid=PID, comm="x\x1b[2J", netns="net:[1]\x1b]0;t\x07",
                                   time=0.0, tabs=collections.OrderedDict(udp=tabs["udp"]))
    text = netsnoop.format_snapshot(snap)
    assert not UNSAFE.search(text.replace("\n", "")), text
    assert "(x\\e[2J), netns net:[1]\\e]0;t\\x07," in text.split("\n")[0]


def test_findings_name_escaped_once_like_the_traffic_table(tmp_path):
    root = tree_copy(tmp_path, "t")
    path = os.path.join(str(root), str(PID), "net", "dev")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("    v1:     110       1    0",
                             "v\x1b[1m:     110       1    7"))
    data = collect("analysis", root)
    lines = netsnoop.format_table(netsnoop.tab_tables("analysis", data)[0])
    traffic = "\n".join(netsnoop.format_table(netsnoop.tab_tables("traffic",
                                                                  collect("traffic", root))[0]))
    assert "v\\e[1m " in traffic
    assert any("interface v\\e[1m: 7 errors" in ln for ln in lines), lines


def test_wide_and_combining_cells_align():
    """Interface names may be any UTF-8: CJK takes two terminal columns, combining marks none."""
    table = netsnoop.Table("t", [netsnoop.Column("Iface", netsnoop.L),
                                 netsnoop.Column("RX", netsnoop.R), netsnoop.Column("If", netsnoop.L)],
                           [netsnoop.Row([name, "1", "x"], None, name)
                            for name in ("eth0", "\u4e2d\u6587\u7f51\u5361", "e\u0301\u0301th", "\uff21")],
                           [])
    lines = check_aligned(table)
    # measured by wcwidth, not by netsnoop's own text_width
    assert len({wcwidth.wcswidth(ln) for ln in lines[2:]}) == 1, lines


def test_v4_mapped_and_v6_endpoints_like_ss():
    with open(os.path.join(FIXTURES, "crafted", "tcp6_v4mapped")) as f:
        socks = netsnoop.parse_sockets(f.read(), "tcp6")
    data = {"sockets": [netsnoop.socket_dict(s, s.inode % 2 == 1) for s in socks],
            "owned_known": True}
    table = netsnoop.tab_tables("tcp", data)[0]
    assert [(r.cells[4], r.cells[5]) for r in table.rows] == [
        ("[::]:8080", "[::]:*"), ("[::ffff:127.0.0.1]:8080", "[::ffff:127.0.0.1]:50000"),
        ("[::1]:22", "[::1]:54321"), ("[2001:db8::1]:443", "[2001:db8::2]:40000")]
    assert [r.cells[OWN] == "*" for r in table.rows] == [s.inode % 2 == 1 for s in socks]
    check_aligned(table)


# --- counts agree with their nouns ---------------------------------------------------------

@pytest.mark.parametrize("n, noun, nouns, text", [
    (0, "line", None, "0 lines"), (1, "line", None, "1 line"), (2, "line", None, "2 lines"),
    (1, "process", "processes", "1 process"), (7, "process", "processes", "7 processes")])
def test_plural(n, noun, nouns, text):
    assert netsnoop.plural(n, noun, nouns) == text


def test_a_count_of_one_reads_singular_everywhere():
    """Users saw "1 damaged lines", "1 processes", "1 zero counters", "ran out of budget
    1 times": every count shown goes through plural()."""
    assert netsnoop.counter_table("Tcp", {"A": 0, "B": 5}).notes == ["1 zero counter not shown"]
    assert netsnoop._read_notes({"skipped_lines": 1}) == ["1 damaged line skipped"]
    rec = {"pid": 5, "ppid": 1, "user": "root", "comm": "sh", "cmdline": ["sh"],
           "start_time": 0.0, "depth": 1}
    assert netsnoop.procs_tables({"processes": [rec]})[0].notes == ["1 process"]
    sock = {"proto": "tcp", "local_address": "127.0.0.1", "local_port": 22, "state": "LISTEN",
            "remote_address": "0.0.0.0", "remote_port": 0, "tx_queue": 0, "rx_queue": 0,
            "uid": 0, "inode": 9, "owned": True}
    notes = netsnoop.socket_table("tcp", {"sockets": [sock], "owned_known": True}).notes
    assert notes[0] == "1 socket in the namespace, 1 owned by the process (*)"
    texts = [f["text"] for f in netsnoop.findings({
        "netstat": {"TcpExt": {"ListenOverflows": 1}},
        "softnet": [{"cpu": 0, "dropped": 1, "time_squeeze": 1}],
        "interfaces": [{"name": "eth0", "rx_errs": 1, "rx_drop": 1, "rx_packets": 100}]})]
    assert "accept queue overflowed 1 time (TcpExt ListenOverflows) since boot" in texts
    assert any(t.startswith("softnet backlog full: 1 packet dropped (") for t in texts), texts
    assert any(t.startswith("softirq ran out of budget 1 time (") for t in texts), texts
    assert any(t.startswith("interface eth0: 1 error (") for t in texts), texts
    assert any(t.startswith("interface eth0: 1 packet dropped (") for t in texts), texts
    assert netsnoop.printable("abc", 2) == "ab...[+1 char]"


def test_tab_all_prints_each_icmp_section_once():
    """--tab all: Icmp, IcmpMsg and Icmp6 are in the icmp tab and in analysis's snmp;
    printed twice they were (a user saw every ICMP counter twice)."""
    r = run_netsnoop("--proc", TREE, PID, "--once", "--tab", "all")
    assert r.returncode == 0, r.stderr
    for section in ("Icmp", "IcmpMsg", "Icmp6"):
        assert r.stdout.count("== %s ==" % section) == 1, section
    analysis = r.stdout[r.stdout.index("== findings =="):]
    assert "(Icmp, IcmpMsg, Icmp6: in the icmp tab above)" in analysis
    assert "== Udp ==" in analysis                       # the other snmp sections stay
    alone = run_netsnoop("--proc", TREE, PID, "--once", "--tab", "analysis")
    assert alone.stdout.count("== Icmp ==") == 1           # without the icmp tab: kept
