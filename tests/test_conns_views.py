"""The views of owners and TCP bytes: the Process column, Sent/Recv and their rates,
the traffic tab's per-process table sorted by rate (values written by hand)."""
import collections

import netsnoop as ns


def sock(inode, sent, received, pid=None, process=None, holders=None, state="ESTABLISHED"):
    return {"proto": "tcp", "local_address": "127.0.0.1", "local_port": 1000 + inode,
            "remote_address": "127.0.0.1", "remote_port": 80, "state": state,
            "tx_queue": 0, "rx_queue": 0, "uid": 0, "inode": inode, "owned": False,
            "pid": pid, "process": process, "holders": holders,
            "bytes_sent": sent, "bytes_received": received}


def table(socks, prev=None, dt=None, **data):
    data = dict({"sockets": socks, "owned_known": True, "owners_known": True,
                 "bytes_known": True}, **data)
    return ns.tab_tables("tcp", data, prev, dt)[0]


def cells_by_title(t):
    titles = [c.title for c in t.columns]
    return [dict(zip(titles, r.cells)) for r in t.rows]


def test_process_column_and_bytes():
    """comm/pid, '+N' for more holders, empty when no owner is known."""
    rows = cells_by_title(table([sock(1, 2048, 10, 42, "nginx", 3), sock(2, 0, 0)]))
    assert (rows[0]["Process"], rows[0]["Sent"], rows[0]["Recv"]) == ("nginx/42 +2", "2.0K", "10B")
    assert rows[1]["Process"] == ""


def test_rates_against_the_last_refresh():
    """Per second over dt, by inode; a socket new since then gets no rate, never a negative one."""
    prev = {"sockets": [sock(1, 1000, 0), sock(3, 5000, 0)], "bytes_known": True}
    rows = cells_by_title(table([sock(1, 3048, 512), sock(2, 100, 0), sock(3, 4000, 0)],
                                prev, 2.0))
    assert (rows[0]["Sent/s"], rows[0]["Recv/s"]) == ("1.0K/s", "256B/s")
    assert (rows[1]["Sent/s"], rows[1]["Recv/s"]) == ("", "")
    assert rows[2]["Sent/s"] == "0B/s"


def test_bytes_unknown_says_why_once():
    t = table([sock(1, None, None)], bytes_known=False, bytes_reason="not here")
    assert "Sent" not in [c.title for c in t.columns]
    assert [n for n in t.notes if n.startswith("TCP bytes unknown")] == [
        "TCP bytes unknown: not here"]


def traffic(rows, sockets):
    procs = ns.ProcessTraffic(rows)
    procs.sockets = sockets
    return {"interfaces": [], "bytes_known": True, "processes": procs,
            "cgroups": [{"cgroup": "/a", "sockets": 2, "bytes_sent": 0, "bytes_received": 0}]}


def test_traffic_processes_sorted_by_rate():
    """nethogs' order: the busiest since the last refresh first, not the biggest total."""
    big = collections.OrderedDict(pid=1, comm="big", uid=0, cgroup="/a", sockets=1,
                                  bytes_sent=10 ** 9, bytes_received=0)
    busy = collections.OrderedDict(pid=2, comm="busy", uid=0, cgroup="/a", sockets=1,
                                   bytes_sent=10 ** 6, bytes_received=0)
    prev = traffic([big, busy], {11: (("pid", 1), "/a", 10 ** 9, 0),
                                 22: (("pid", 2), "/a", 0, 0)})
    cur = traffic([big, busy], {11: (("pid", 1), "/a", 10 ** 9, 0),
                                22: (("pid", 2), "/a", 10 ** 6, 0)})
    t = ns.tab_tables("traffic", cur, prev, 1.0)[1]
    rows = cells_by_title(t)
    assert [r["Process"] for r in rows] == ["busy", "big"]
    assert rows[0]["Sent/s"] == "976.6K/s" and rows[1]["Sent/s"] == "0B/s"
    first = ns.tab_tables("traffic", cur)[1]        # no rates yet: the biggest first, as given
    assert [r["Process"] for r in cells_by_title(first)] == ["big", "busy"]


def test_new_listener_finding():
    """--conns' new-listener: warn when reachable from other hosts, info on loopback."""
    wide = ns.new_listener_finding({"local_address": "0.0.0.0", "local_port": 8080})
    assert (wide["severity"], wide["rule"]) == ("warn", "new-listener")
    assert wide["text"] == "listens on 0.0.0.0:8080 (every address), reachable from other hosts"
    local = ns.new_listener_finding({"local_address": "::1", "local_port": 53})
    assert (local["severity"], local["text"]) == ("info", "listens on [::1]:53")
