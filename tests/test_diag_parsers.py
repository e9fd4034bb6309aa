"""The sock_diag parsers on crafted netlink bytes (layouts written here from the
kernel headers, not taken from netsnoop): field offsets, byte order, the cookie's
halves, short tcp_info from old kernels, damaged and foreign messages."""
import socket
import struct

import pytest

import netsnoop as ns

INFO_LEN = 232          # struct tcp_info of a 5.x kernel; the two counters at 120 and 128


def tcp_info(acked, received, length=INFO_LEN):
    blob = bytearray(max(length, 136))
    struct.pack_into("=QQ", blob, 120, acked, received)
    blob[0] = 1                                   # tcpi_state, unused
    return bytes(blob[:length])


def attr(kind, payload):
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def diag_msg(family=socket.AF_INET, state=1, sport=8080, dport=40000, src="127.0.0.1",
             dst="127.0.0.2", uid=1000, inode=777, cookie=(5, 1), attrs=b"", seq=9):
    def addr(text):
        if family == socket.AF_INET6:
            return socket.inet_pton(socket.AF_INET6, text)
        return socket.inet_pton(socket.AF_INET, text) + b"\0" * 12
    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport) \
        + addr(src) + addr(dst) + struct.pack("=I", 0) + struct.pack("=II", *cookie) \
        + struct.pack("=IIIII", 0, 3, 4, uid, inode) + attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def done(seq=9):
    return struct.pack("=IHHII", 20, 3, 2, seq, 0) + struct.pack("=i", 0)


def test_fields_offsets_and_byte_order():
    """Ports big-endian, uid/inode host order, cookie low half first, cgroup u64, bytes."""
    data = diag_msg(attrs=attr(8, b"\0") + attr(2, tcp_info(5001, 70))
                    + attr(21, struct.pack("=Q", 4242))) + done()
    recs, finished, err = ns.parse_diag_dump(data, seq=9)
    assert (finished, err, recs.skipped) == (True, 0, 0)
    assert recs == [ns.DiagSocket(socket.AF_INET, 1, "127.0.0.1", 8080, "127.0.0.2", 40000,
                                  1000, 777, 5 | 1 << 32, 4242, 5001, 70)]


def test_ipv6_addresses():
    data = diag_msg(family=socket.AF_INET6, src="2001:db8::1", dst="::1")
    rec = ns.parse_diag_dump(data)[0][0]
    assert (rec.local_address, rec.remote_address) == ("2001:db8::1", "::1")


def test_short_tcp_info_reads_zero_for_what_it_lacks():
    """A 3.x kernel's tcp_info stops before bytes_acked: 0, not garbage or a crash."""
    rec = ns.parse_diag_dump(diag_msg(attrs=attr(2, tcp_info(9, 9, length=104))))[0][0]
    assert (rec.bytes_sent, rec.bytes_received) == (0, 0)
    out = {}
    ns.parse_diag_rows(diag_msg(attrs=attr(2, tcp_info(9, 9, length=128))), 9, [], out, {})
    assert out == {777: (struct.unpack("=Q", tcp_info(9, 9)[120:128])[0], 0)}


def test_no_tcp_info_no_bytes():
    rec = ns.parse_diag_dump(diag_msg())[0][0]
    assert (rec.bytes_sent, rec.bytes_received, rec.cgroup) == (None, None, None)


def test_other_requests_replies_are_ignored_and_a_damaged_one_counted():
    """A stale reply of an abandoned dump (other seq) must not count; a short message is skipped."""
    stale = diag_msg(inode=1, seq=3)
    short = struct.pack("=IHHII", 16 + 8, 20, 2, 9, 0) + b"\0" * 8
    recs, finished, _ = ns.parse_diag_dump(stale + short + diag_msg(inode=2) + done(), seq=9)
    assert [r.inode for r in recs] == [2] and recs.skipped == 1 and finished


def test_error_reply():
    err = struct.pack("=IHHII", 36, 2, 0, 9, 0) + struct.pack("=i", -13) + b"\0" * 16
    assert ns.parse_diag_dump(err, seq=9)[1:] == (True, 13)
    assert ns.parse_diag_rows(err, 9, [], {}, {}) == (True, 13, 0)


def test_rows_parser_bytes_agree_with_the_full_one():
    """parse_diag_rows guesses tcp_info's place from the message before: a message
    with another attribute order must still be read right, inode 0 left out."""
    a = diag_msg(inode=10, attrs=attr(8, b"\0") + attr(2, tcp_info(1, 2)))
    b = diag_msg(inode=11, attrs=attr(8, b"\0") + attr(2, tcp_info(3, 4)))
    c = diag_msg(inode=12, attrs=attr(2, tcp_info(5, 6)) + attr(8, b"\0"))      # moved
    d = diag_msg(inode=0, attrs=attr(8, b"\0") + attr(2, tcp_info(7, 8)))       # not accepted
    out, rows = {}, []
    assert ns.parse_diag_rows(a + b + c + d + done(), 9, rows, out, {}) == (True, 0, 0)
    assert out == {10: (1, 2), 11: (3, 4), 12: (5, 6)} and len(rows) == 4


def test_request_layout():
    """72 bytes: header (type 20, REQUEST|DUMP), family, TCP, ext bit of INET_DIAG_INFO, states."""
    req = ns.inet_diag_request(socket.AF_INET6, 1 << 10, seq=7)
    assert len(req) == 72
    assert struct.unpack_from("=IHHII", req) == (72, 20, 0x301, 7, 0)
    assert struct.unpack_from("=BBBxI", req, 16) == (socket.AF_INET6, 6, 1 << 1, 1 << 10)
    assert req[24:] == b"\0" * 48


def test_lookup_request_names_one_socket():
    """No DUMP flag; ports big-endian; local address in src, peer in dst (as the reply
    gives them); the cookie's low half first: a mix-up finds another socket or none."""
    rec = ns.DiagSocket(socket.AF_INET, 1, "127.0.0.1", 8080, "10.0.0.2", 40000, 0, 0,
                        7 | 3 << 32, None, None, None)
    req = ns.inet_diag_lookup(rec, seq=5)
    assert struct.unpack_from("=IHHII", req) == (72, 20, 0x1, 5, 0)
    assert struct.unpack_from(">HH", req, 24) == (8080, 40000)
    assert req[28:32] == bytes([127, 0, 0, 1]) and req[44:48] == bytes([10, 0, 0, 2])
    assert struct.unpack_from("=III", req, 60) == (0, 7, 3)


SNMP_TCP = (b"Ip: Forwarding DefaultTTL\nIp: 1 64\n"
            b"Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n"
            b"Tcp: 1 200 120000 -1 9176 23 4\n"
            b"Udp: InDatagrams NoPorts\nUdp: 5 6\n")


def test_snmp_tcp_opens_adds_active_and_passive_opens():
    """A wrong column (AttemptFails, MaxConn) or the names line taken as values fails."""
    from netsnoop import snmp_tcp_opens
    assert snmp_tcp_opens(SNMP_TCP) == 9176 + 23


def test_snmp_tcp_opens_without_tcp_line_is_an_oserror():
    """The feed treats OSError as "moved" (a dump); a KeyError would end it."""
    from netsnoop import snmp_tcp_opens
    with pytest.raises(OSError):
        snmp_tcp_opens(b"Ip: Forwarding\nIp: 1\n")
    with pytest.raises(OSError):
        snmp_tcp_opens(b"Ip: a\nIp: 1\nTcp: RtoAlgorithm\nTcp: 1\n")


def row_msg(state=1, timer=0, retrans=0, expires=0, rqueue=0, wqueue=0, inode=777,
            sport=8080, attrs=b"", seq=9):
    """An inet_diag_msg with the timer and queue fields set (diag_msg leaves them fixed)."""
    body = struct.pack("=BBBB", socket.AF_INET, state, timer, retrans) \
        + struct.pack(">HH", sport, 40000) + socket.inet_pton(socket.AF_INET, "10.0.0.1") \
        + b"\0" * 12 + socket.inet_pton(socket.AF_INET, "10.0.0.2") + b"\0" * 12 \
        + struct.pack("=III", 0, 1, 0) + struct.pack("=IIIII", expires, rqueue, wqueue, 0, inode) \
        + attrs
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def rows_of(data):
    rows, tcp_bytes = [], {}
    finished, err, skipped = ns.parse_diag_rows(data, 9, rows, tcp_bytes, {})
    assert (finished, err, skipped) == (True, 0, 0)
    return rows, tcp_bytes


def test_rows_carry_the_fields_as_proc_net_tcp_prints_them():
    """A listener's tx_queue is 0 in /proc (the dump gives its backlog); timer_when in
    1/100 s (the dump: ms); the dump's one counter is retransmits with the retransmit
    timer and timeout (probes) with the keepalive timer."""
    data = (row_msg(state=10, rqueue=3, wqueue=128, inode=1, sport=80)
            + row_msg(timer=1, retrans=2, expires=1234, wqueue=50, inode=2, sport=81)
            + row_msg(timer=2, retrans=5, expires=7000, inode=3, sport=82) + done())
    rows, _ = rows_of(data)
    got = [(r.local_port, r.state, r.tx_queue, r.rx_queue, r.timer_active, r.timer_when,
            r.retransmits, r.timeout, r.inode) for r in rows]
    assert got == [(80, "LISTEN", 0, 3, 0, 0, 0, 0, 1),
                   (81, "ESTABLISHED", 50, 0, 1, 123, 2, 0, 2),
                   (82, "ESTABLISHED", 0, 0, 2, 700, 0, 5, 3)]
    assert rows[0][:5] == ("tcp", "10.0.0.1", 80, "10.0.0.2", 40000)


def test_rows_bytes_per_inode_when_tcp_info_moves():
    """The guessed tcp_info offset of the first message must not be trusted when the
    next message's attributes differ (an extra attribute before it): each inode gets
    its own counters; TIME_WAIT (inode 0, no tcp_info) gets none."""
    data = (row_msg(inode=11, attrs=attr(2, tcp_info(100, 200)))
            + row_msg(inode=12, attrs=attr(2, tcp_info(300, 400)))
            + row_msg(inode=13, attrs=attr(8, b"\0") + attr(2, tcp_info(500, 600)))
            + row_msg(state=6, timer=3, inode=0) + done())
    rows, tcp_bytes = rows_of(data)
    assert len(rows) == 4 and rows[3].state == "TIME_WAIT"
    assert tcp_bytes == {11: (100, 200), 12: (300, 400), 13: (500, 600)}
