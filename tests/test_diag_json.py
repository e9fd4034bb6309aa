"""The tcp tab's --json rows written by the C scanner (fs_diag_parse, fs_diag_json)
against their Python twin (parse_diag_rows, SocketRows.json_text): the same bytes,
on crafted dumps (every odd field) and on a real dump of a private namespace.

The live tests of test_conns.py and test_live_netns.py hold the C path to `ss`
(netsnoop uses it for every --json snapshot when it is built); these tests hold the
Python twin, which runs without the C scanner, to the C path."""
import json
import os
import socket
import subprocess
import sys
import types

from hypothesis import given, settings
from hypothesis import strategies as st


import netsnoop as ns
from conftest import needs_fast, needs_root_netns
from test_diag_parsers import attr, diag_msg, done, row_msg, tcp_info

pytestmark = needs_fast
SEQ = 9


def owners_of(fds, comms):
    """A SocketOwners as a scan of these processes leaves it: {pid: inodes}, {pid: comm}."""
    owners = ns.SocketOwners(ns.ProcFS("/proc"))
    owners.fds = {pid: (len(inodes), frozenset(inodes)) for pid, inodes in fds.items()}
    owners.comms = dict(comms)
    owners._index()
    return owners


def python_text(chunks, owners, own_pid):
    rows, tcp_bytes, skipped, names = [], {}, 0, {}
    for chunk in chunks:
        finished, err, bad = ns.parse_diag_rows(chunk, SEQ, rows, tcp_bytes, names)
        skipped += bad
    held = owners.fds.get(own_pid, (0, frozenset()))[1]
    text = ns.SocketRows(rows, held, owners, tcp_bytes, plain=True,
                         heads=ns.socket_json_heads(rows, plain=True)).json_text()
    return text, (finished, err, skipped)


def c_text(chunks, owners, own_pid):
    module = ns._load_fastscan()[0]
    diag = ns.FastDiagRows(module)
    for chunk in chunks:
        buf = bytearray(chunk)
        finished, err = diag.add(buf, len(chunk), SEQ)
    rows = ns.FastSocketRows(module, diag, types.SimpleNamespace(everyone=owners), own_pid)
    return rows.json_text(), (finished, err, diag.skipped)


def both(chunks, fds=None, comms=None, own_pid=100):
    owners = owners_of(fds or {}, comms or {})
    python, python_end = python_text(chunks, owners, own_pid)
    c, c_end = c_text(chunks, owners, own_pid)
    assert c == python
    assert c_end == python_end
    return json.loads(c), c_end


def test_one_row_written_by_hand():
    """The text itself, key by key as the README's JSON table gives a tcp row."""
    data = diag_msg(state=1, sport=8080, dport=40000, uid=1000, inode=777,
                    attrs=attr(2, tcp_info(5001, 70)), seq=SEQ) + done(SEQ)
    owners = owners_of({100: {777}}, {100: "curl"})
    text, end = c_text([data], owners, 100)
    assert end == (True, 0, 0)
    assert text == (
        '[{"proto": "tcp", "local_address": "127.0.0.1", "local_port": 8080, '
        '"remote_address": "127.0.0.2", "remote_port": 40000, "state": "ESTABLISHED", '
        '"tx_queue": 4, "rx_queue": 3, "timer_active": 0, "timer_when": 0, '
        '"retransmits": 0, "uid": 1000, "timeout": 0, "inode": 777, "drops": null, '
        '"owned": true, "pid": 100, "process": "curl", "holders": 1, '
        '"bytes_sent": 5001, "bytes_received": 70}]')


def test_timers_queues_states_and_families():
    data = (row_msg(state=10, rqueue=3, wqueue=128, inode=1, sport=80)
            + row_msg(timer=1, retrans=2, expires=1234, wqueue=50, inode=2, sport=81)
            + row_msg(timer=2, retrans=5, expires=7000, inode=3, sport=82)
            + row_msg(timer=4, retrans=7, expires=99, inode=4, sport=83)
            + row_msg(state=0x0E, inode=5) + row_msg(state=0, inode=6)
            + row_msg(state=13, inode=7)
            + diag_msg(family=socket.AF_INET6, src="2001:db8::1", dst="::ffff:10.1.2.3",
                       inode=8) + done())
    rows, end = both([data])
    assert end == (True, 0, 0)
    assert [r["state"] for r in rows] == ["LISTEN", "ESTABLISHED", "ESTABLISHED",
                                          "ESTABLISHED", "UNKNOWN_0E", "UNKNOWN_00",
                                          "BOUND_INACTIVE", "ESTABLISHED"]
    assert [(r["retransmits"], r["timeout"]) for r in rows[1:4]] == [(2, 0), (0, 5), (0, 7)]
    assert rows[7]["proto"] == "tcp6"
    assert rows[7]["remote_address"] == "::ffff:10.1.2.3"


def test_bytes_short_missing_and_moving_tcp_info():
    data = (row_msg(inode=11, attrs=attr(2, tcp_info(100, 200)))
            + row_msg(inode=12, attrs=attr(8, b"\0") + attr(2, tcp_info(300, 400)))
            + row_msg(inode=13, attrs=attr(2, tcp_info(9, 9, length=104)))
            + row_msg(inode=14, attrs=attr(2, tcp_info(2 ** 64 - 1, 2 ** 63)))
            + row_msg(inode=15) + row_msg(state=6, timer=3, inode=0,
                                          attrs=attr(2, tcp_info(1, 1))) + done())
    rows, _ = both([data])
    assert [(r["bytes_sent"], r["bytes_received"]) for r in rows] == [
        (100, 200), (300, 400), (0, 0), (2 ** 64 - 1, 2 ** 63), (None, None), (None, None)]


def test_owners_lowest_pid_holders_owned_and_odd_comms():
    data = b"".join(row_msg(inode=i) for i in (21, 22, 23, 24, 25)) + done()
    # 4999999: above any pid_max, so no comm can be read for it
    fds = {300: {21, 22}, 100: {22, 23}, 4999999: {22}, 55: {24}, 56: {24}}
    comms = {300: 'we"ird\\name', 100: "caf\u00e9", 55: "\udcff\x01", 56: "x"}
    rows, _ = both([data], fds, comms, own_pid=100)
    assert [(r["pid"], r["process"], r["holders"], r["owned"]) for r in rows] == [
        (300, 'we"ird\\name', 1, False), (100, "caf\u00e9", 3, True), (100, "caf\u00e9", 1, True),
        (55, "\udcff\x01", 2, False), (None, None, None, False)]


def test_chunks_foreign_messages_damage_and_errors():
    """A dump in several chunks; another request's messages skipped; a short one
    counted; NLMSG_ERROR ends it with its errno."""
    short = row_msg(inode=40)[:60]
    short = bytes([60]) + short[1:]
    first = row_msg(inode=31) + row_msg(inode=32, seq=SEQ + 1) + short
    second = row_msg(inode=33) + done()
    rows, end = both([first, second])
    assert [r["inode"] for r in rows] == [31, 33]
    assert end == (True, 0, 1)
    error = row_msg(inode=34) + ns.NLMSGHDR.pack(36, ns.NLMSG_ERROR, 0, SEQ, 0) \
        + bytes((256 - 13, 255, 255, 255)) + bytes(16)          # -EACCES
    rows, end = both([error])
    assert [r["inode"] for r in rows] == [34] and end == (True, 13, 0)
    rows, end = both([row_msg(inode=35)])
    assert end == (False, 0, 0)


def test_an_empty_dump_is_an_empty_array():
    rows, end = both([done()])
    assert rows == [] and end == (True, 0, 0)


def test_rows_grow_past_the_first_array():
    messages = [row_msg(inode=1000 + i, sport=i, attrs=attr(2, tcp_info(i, 2 * i)))
                for i in range(3000)]
    rows, _ = both([b"".join(messages[:1700]), b"".join(messages[1700:]) + done()])
    assert [r["inode"] for r in rows] == list(range(1000, 4000))
    assert rows[-1]["bytes_received"] == 2 * 2999


REAL_DUMP = r"""
import json, os, socket, subprocess, sys, time
import netsnoop as ns
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
keep = []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen(64)
    keep.append(server)
    for size in (0, 1000, 70000):
        client = socket.create_connection(server.getsockname()[:2])
        peer, _ = server.accept()
        client.sendall(b"x" * size)
        got = 0
        while got < size:
            got += len(peer.recv(65536))
        keep += [client, peer]
    gone = socket.create_connection(server.getsockname()[:2])
    peer, _ = server.accept()
    gone.close()                    # FIN_WAIT2 / CLOSE_WAIT
    keep.append(peer)
    waiting = socket.create_connection(server.getsockname()[:2])
    peer, _ = server.accept()
    waiting.close()
    peer.close()                    # TIME_WAIT on the client's side
time.sleep(0.2)                     # the FINs' ACKs: FIN_WAIT2, not FIN_WAIT1
# one dump's bytes, read once and given to both parsers (a second dump would
# differ: TIME_WAIT's timer runs)
diag = ns.open_diag_socket()
dumps = []
for family in (socket.AF_INET, socket.AF_INET6):
    seq = len(dumps) + 1
    diag.send(ns.inet_diag_request(family, ns.DIAG_ROW_STATES, seq))
    chunks = []
    while not chunks or not ns.parse_diag_rows(chunks[-1], seq, [], {}, {})[0]:
        chunks.append(diag.recv(ns.DIAG_RECV))
    dumps.append((seq, chunks))
owners = ns.SocketOwners(ns.ProcFS("/proc")).scan()
module = ns._load_fastscan()[0]
records, tcp_bytes, fast = ns.Records(), {}, ns.FastDiagRows(module)
for seq, chunks in dumps:
    names = {}          # per family, as diag_rows keeps it: 0.0.0.0 and :: are the same bytes
    for chunk in chunks:
        ns.parse_diag_rows(chunk, seq, records, tcp_bytes, names)
        fast.add(bytearray(chunk), len(chunk), seq)
held = owners.fds[os.getpid()][1]
python = ns.SocketRows(records, held, owners, tcp_bytes, plain=True,
                       heads=ns.socket_json_heads(records, plain=True)).json_text()
c = ns.FastSocketRows(module, fast, type("O", (), {"everyone": owners}), os.getpid())
print(json.dumps({"python": python, "c": c.json_text(), "pid": os.getpid(),
                  "skipped": [records.skipped, fast.skipped]}))
"""


@needs_root_netns
def test_a_real_dump_gives_the_same_text_both_ways(tmp_path):
    """Listeners, connections that moved 0, 1000 and 70,000 bytes, half-closed and
    TIME_WAIT sockets, IPv4 and IPv6, in a namespace of its own."""
    script = tmp_path / "dump.py"
    script.write_text(REAL_DUMP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(["unshare", "-n", sys.executable, str(script)], env=env,
                         stdout=subprocess.PIPE, universal_newlines=True, timeout=60,
                         check=True).stdout
    got = json.loads(out)
    assert got["c"] == got["python"]
    assert got["skipped"] == [0, 0]
    rows = json.loads(got["c"])
    states = sorted(set(r["state"] for r in rows))
    assert states == ["CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT2", "LISTEN", "TIME_WAIT"]
    sent = sorted(r["bytes_sent"] for r in rows if r["state"] == "ESTABLISHED"
                  and r["pid"] == got["pid"])
    # each connection's client sent 0, 1000 or 70,000 bytes, +1: its SYN, acked when the
    # SYN-ACK came (the accepted side, born with its handshake done, counts none)
    assert sent == [0] * 6 + [1, 1, 1001, 1001, 70001, 70001]
    # closed by the script: FIN_WAIT2 and TIME_WAIT are orphans, the rest its own
    assert sorted(r["state"] for r in rows if not r["owned"]) == \
        ["FIN_WAIT2"] * 2 + ["TIME_WAIT"] * 2


@settings(derandomize=True, max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=12),
       st.integers(0, 2000))
def test_damaged_dumps_never_crash_the_c_parser_and_give_json(flips, cut):
    """Bytes changed anywhere (lengths, types, attributes) and the chunk cut short:
    fs_diag_parse stays inside the chunk and fs_diag_json writes JSON within its bound."""
    data = bytearray(row_msg(inode=1, attrs=attr(8, b"\0") + attr(2, tcp_info(5, 6)))
                     + diag_msg(family=socket.AF_INET6, src="::1", dst="::2", inode=2,
                                attrs=attr(2, tcp_info(1, 2)))
                     + row_msg(state=6, inode=0) + done())
    for at, value in flips:
        if at < len(data):
            data[at] = value
    data = data[:max(cut, 16)]
    owners = owners_of({100: {1, 2}}, {100: "sh"})
    text, (finished, err, skipped) = c_text([bytes(data)], owners, 100)
    rows = json.loads(text)
    assert len(rows) <= 4 and skipped <= 4
