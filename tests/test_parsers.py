"""Every parser on fixture text: prometheus/procfs's asserted values, trees captured from a
real namespace (checked against what ss/ip/nstat printed at the same moment), and crafted
files named after the kernel quirk they hold.  Parsers are pure: the tests pass text."""
import glob
import json
import os
import socket
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netcompare
import netsnoop as ns
from conftest import FIXTURES, run_netsnoop

PROCFS = os.path.join(FIXTURES, "procfs")
CRAFTED = os.path.join(FIXTURES, "crafted")


def text(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return ns.decode(f.read())


def upstream(*parts):
    return text(PROCFS, *parts)


def crafted(name):
    return text(CRAFTED, name)


def addr(sock):
    return "%s:%d" % (sock.local_address, sock.local_port)


# ---------------------------------------------------------------------------
# prometheus/procfs fixtures: the values its tests assert (fixtures/procfs, EXPECTED.md)
# ---------------------------------------------------------------------------

class TestProcfsUpstream:
    def test_tcp(self):
        rows = ns.parse_sockets(upstream("proc", "net", "tcp"), "tcp")
        assert rows.skipped == 0
        assert [(addr(s), s.remote_address, s.remote_port, s.state, s.tx_queue, s.rx_queue,
                 s.uid, s.inode) for s in rows] == [
            ("10.0.0.5:22", "0.0.0.0", 0, "LISTEN", 0, 1, 0, 2740),
            ("0.0.0.0:22", "0.0.0.0", 0, "LISTEN", 1, 0, 0, 2740),
            ("0.0.0.0:22", "0.0.0.0", 0, "LISTEN", 1, 1, 0, 2740),
        ]

    def test_tcp6(self):
        rows = ns.parse_sockets(upstream("proc", "net", "tcp6"), "tcp6")
        assert rows.skipped == 0
        assert [(s.local_address, s.local_port, s.state, s.uid, s.inode) for s in rows] == [
            ("::", 5355, "CLOSE", 981, 21040),
            ("fe80::56e1:adff:fe7c:6609", 51073, "CLOSE", 1000, 11337031),
        ]

    def test_udp_drops_from_field_13(self):
        # Upstream's udp fixture is the tcp layout: field 13 is 100 there (see README).
        rows = ns.parse_sockets(upstream("proc", "net", "udp"), "udp")
        assert [(addr(s), s.tx_queue, s.rx_queue, s.drops) for s in rows] == [
            ("10.0.0.5:22", 0, 1, 100), ("0.0.0.0:22", 1, 0, 100), ("0.0.0.0:22", 1, 1, 100)]

    def test_udp6(self):
        rows = ns.parse_sockets(upstream("proc", "net", "udp6"), "udp6")
        assert [(s.local_address, s.local_port, s.uid, s.inode, s.drops) for s in rows] == [
            ("::", 5355, 981, 21040, 0),
            ("fe80::56e1:adff:fe7c:6609", 51073, 1000, 11337031, 0)]

    def test_udp_broken_is_skipped_and_counted(self):
        rows = ns.parse_sockets(upstream("proc", "net", "udp_broken"), "udp")
        assert list(rows) == [] and rows.skipped == 1

    def test_softnet(self):
        rows = ns.parse_softnet(upstream("proc", "net", "softnet_stat"))
        assert rows.skipped == 0
        got = [(r["cpu"], r["columns"], r["processed"], r["dropped"], r["time_squeeze"],
                r["cpu_collision"], r.get("received_rps"), r.get("flow_limit_count"),
                r.get("backlog_len")) for r in rows]
        assert got == [
            (0, 13, 0x358fe3, 0x6283, 0, 0, 0x855fc, 0x76, 0),
            (1, 13, 0x953d1a, 0x446, 0xb1, 0, 0x8eeb9a, 0x2b, 0xdc),
            (2, 11, 0x15c73, 0x20e76, 0xf0000769, 4, 3, 2, None),
            (3, 9, 0x1663fb2, 0, 0x109a4, 0x20e76, None, None, None),
            (4, 10, 0x8e78, 1, 0x11, 0x20, 0x10, None, None),
        ]

    def test_softnet_broken_is_skipped_and_counted(self):
        rows = ns.parse_softnet(upstream("proc", "net", "softnet_stat.broken"))
        assert list(rows) == [] and rows.skipped == 1

    def test_arp(self):
        rows = ns.parse_arp(upstream("proc", "net", "arp"))
        assert rows.skipped == 0
        assert [(e.ip_address, e.hw_address, e.device, e.flags, ns.arp_state(e.flags))
                for e in rows] == [
            ("192.168.224.1", "00:50:56:c0:00:08", "ens33", 0x2, "complete"),
            ("192.168.224.2", "00:00:00:00:00:00", "ens33", 0x0, "incomplete")]

    def test_arp_cache_rows_and_sum(self):
        rows = ns.parse_hex_table(upstream("proc", "net", "stat", "arp_cache"))
        assert rows.skipped == 0 and len(rows) == 2
        names = ["entries", "allocs", "destroys", "hash_grows", "lookups", "hits",
                 "res_failed", "rcv_probes_mcast", "rcv_probes_ucast", "periodic_gc_runs",
                 "forced_gc_runs", "unresolved_discards", "table_fulls"]
        assert [list(r) for r in rows] == [names, names]
        assert [r["entries"] for r in rows] == [20, 20]
        assert [r["allocs"] for r in rows] == [1, 13]
        assert [r["table_fulls"] for r in rows] == [12, 24]
        total = ns.sum_arp_cache(rows)
        # "entries" is the table size, printed on every CPU row: not summed.
        assert total["entries"] == 20
        assert total["allocs"] == 14 and total["unresolved_discards"] == 34

    def test_ndisc_cache_same_layout(self):
        rows = ns.parse_hex_table(upstream("proc", "net", "stat", "ndisc_cache"))
        assert [r["entries"] for r in rows] == [0x24, 0x24]
        assert [r["allocs"] for r in rows] == [0xf0, 0xfc]

    def test_route_inline_input(self):
        rows = ns.parse_route(upstream("inline-test-inputs", "net_route_test.route"))
        assert rows.skipped == 0
        assert [(r["iface"], r["destination"], r["gateway"], r["flags_raw"], r["flags"],
                 r["metric"], r["mask"]) for r in rows] == [
            ("eno16780032", "0.0.0.0", "192.168.3.149", 3, "UG", 100, "0.0.0.0"),
            ("eno16780032", "192.168.0.0", "0.0.0.0", 1, "U", 100, "255.255.0.0")]

    def test_snmp(self):
        sec = ns.parse_snmp(upstream("proc", "26231", "net", "snmp"))
        assert sec.skipped == 0
        assert (sec["Ip"]["Forwarding"], sec["Ip"]["DefaultTTL"]) == (2, 64)
        assert sec["Icmp"]["InMsgs"] == 45
        assert (sec["IcmpMsg"]["InType3"], sec["IcmpMsg"]["OutType3"]) == (45, 50)
        assert (sec["Tcp"]["RtoAlgorithm"], sec["Tcp"]["RtoMin"]) == (1, 200)
        assert sec["Tcp"]["MaxConn"] == -1
        assert (sec["Udp"]["InDatagrams"], sec["Udp"]["NoPorts"]) == (10179, 50)
        assert sec["UdpLite"]["NoPorts"] == 0

    def test_netstat(self):
        sec = ns.parse_snmp(upstream("proc", "26231", "net", "netstat"))
        assert sec.skipped == 0
        ext = sec["TcpExt"]
        assert (ext["SyncookiesSent"], ext["EmbryonicRsts"], ext["TW"], ext["PAWSEstab"]) == \
            (0, 1, 83, 3640)
        ip = sec["IpExt"]
        assert (ip["InNoRoutes"], ip["InMcastPkts"], ip["OutMcastPkts"]) == (0, 208, 214)

    def test_snmp6(self):
        sec = ns.parse_snmp6(upstream("proc", "26231", "net", "snmp6"))
        # The file ends with "Mode: 644", ttar metadata that leaked into the extraction:
        # a damaged line, skipped and counted.
        assert sec.skipped == 1
        assert sec["Ip6"]["InReceives"] == 92166
        assert sec["Ip6"]["InDelivers"] == 92053
        assert sec["Ip6"]["OutNoRoutes"] == 169
        assert sec["Ip6"]["InOctets"] == 113479132
        assert sec["Icmp6"]["InMsgs"] == 142
        assert sec["Udp6"]["InDatagrams"] == 2016
        assert sec["UdpLite6"]["InDatagrams"] == 0

    def test_dev(self):
        rows = ns.parse_dev(upstream("proc", "net", "dev"))
        assert rows.skipped == 0
        assert [r["name"] for r in rows] == ["vethf345468", "lo", "docker0", "eth0"]
        lo = rows[1]
        assert (lo["rx_bytes"], lo["rx_packets"]) == (1664039048, 1566805)
        assert (lo["tx_bytes"], lo["tx_packets"]) == (1664039048, 1566805)

    def test_dev_of_pid(self):
        rows = ns.parse_dev(upstream("proc", "26231", "net", "dev"))
        assert [(r["name"], r["rx_bytes"], r["rx_packets"], r["tx_bytes"], r["tx_packets"])
                for r in rows] == [("lo", 0, 0, 0, 0), ("eth0", 438, 5, 648, 8)]

    @pytest.mark.parametrize("name", ["eth0", "eth0:1"])
    def test_dev_inline_line(self, name):
        # net_dev_test.go's inline case: 16 counters 1..16, name with or without ':'
        lines = "h1\nh2\n%s: %s\n" % (name, " ".join(str(i) for i in range(1, 17)))
        rows = ns.parse_dev(lines)
        assert rows.skipped == 0
        assert rows[0]["name"] == name
        assert [rows[0][k] for k in ns.DEV_FIELDS] == list(range(1, 17))

    def test_stat_line(self):
        comm, rest = ns.parse_stat_line(upstream("proc", "26231", "stat"))
        assert (comm, rest[0], rest[1]) == ("vim", "R", "5392")


# The line-level error cases of procfs's net_ip_socket_test.go: each must be skipped and
# counted, never raised.
GOOD_TCP = ("   0: 0500000A:0016 00000000:0000 0A 00000000:00000001 00:00000000 00000000"
            "     0        0 2740 1 ffff88003d3af3c0 100 0 0 10 0")
GOOD_UDP = (" 1315: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000"
            "   981        0 21040 2 0000000013726323 0")
BAD_SOCKET_LINES = {
    "fewer_than_10_fields": ("tcp", "   0: 0500000A:0016 00000000:0000 0A 00000000:00000001"),
    "sl_not_a_number": ("tcp", GOOD_TCP.replace("   0:", "   a:")),
    "address_letter_O": ("tcp", GOOD_TCP.replace("0500000A:0016", "0000000O:0016")),
    "port_letter_O": ("tcp", GOOD_TCP.replace("0500000A:0016", "0500000A:001O")),
    "queues_without_colon": ("tcp", GOOD_TCP.replace("00000000:00000001", "0000000000000001")),
    "tx_queue_letter_O": ("tcp", GOOD_TCP.replace("00000000:00000001", "DEADCODE:00000001")),
    "rx_queue_letter_O": ("tcp", GOOD_TCP.replace("00000000:00000001", "00000000:FEEDCODE")),
    "uid_negative": ("tcp", GOOD_TCP.replace("     0        0 2740", "   -10        0 2740")),
    "inode_negative": ("tcp", GOOD_TCP.replace(" 2740 ", " -39309 ")),
    "udp_drops_negative": ("udp", GOOD_UDP[:-1] + "-5"),
    "ipv6_address_short": ("tcp6", GOOD_TCP.replace("0500000A", "0500000A0000")),
    "state_not_hex": ("tcp", GOOD_TCP.replace(" 0A ", " ZZ ")),
}


class TestDamagedSocketLines:
    @pytest.mark.parametrize("case", sorted(BAD_SOCKET_LINES))
    def test_bad_line_is_skipped_and_counted(self, case):
        proto, bad = BAD_SOCKET_LINES[case]
        good = GOOD_UDP if proto == "udp" else GOOD_TCP
        if proto == "tcp6":
            good = GOOD_TCP.replace("0500000A", "0" * 32).replace("00000000:0000 0A",
                                                                 "0" * 32 + ":0000 0A")
        rows = ns.parse_sockets("header\n%s\n%s\n%s\n" % (good, bad, good), proto)
        assert rows.skipped == 1
        assert len(rows) == 2

    def test_good_lines_of_the_error_table_parse(self):
        assert ns.parse_sockets("h\n" + GOOD_TCP, "tcp")[0].inode == 2740
        assert ns.parse_sockets("h\n" + GOOD_UDP, "udp")[0].drops == 0

    def test_header_only_and_empty(self):
        for body in ("", "  sl  local_address\n", "\n\n"):
            rows = ns.parse_sockets(body, "tcp")
            assert list(rows) == [] and rows.skipped == 0


# ---------------------------------------------------------------------------
# Crafted files, named after the quirk (fixtures/crafted/README.md)
# ---------------------------------------------------------------------------

class TestCrafted:
    def test_tcp6_v4mapped_kept_as_the_kernel_gives_it(self):
        rows = ns.parse_sockets(crafted("tcp6_v4mapped"), "tcp6")
        assert rows.skipped == 0
        assert [(s.local_address, s.local_port, s.remote_address, s.remote_port, s.state)
                for s in rows] == [
            ("::", 8080, "::", 0, "LISTEN"),
            ("::ffff:127.0.0.1", 8080, "::ffff:127.0.0.1", 50000, "ESTABLISHED"),
            ("::1", 22, "::1", 54321, "CLOSE_WAIT"),
            ("2001:db8::1", 443, "2001:db8::2", 40000, "ESTABLISHED")]
        assert (rows[1].tx_queue, rows[1].rx_queue, rows[1].retransmits) == (16, 32, 2)
        assert (rows[3].timer_active, rows[3].timer_when) == (2, 3000)

    def test_tcp_timewait_and_request_socks_have_12_fields(self):
        rows = ns.parse_sockets(crafted("tcp_timewait_short"), "tcp")
        assert rows.skipped == 0
        assert [(s.state, s.inode, s.uid, s.timer_active) for s in rows] == [
            ("LISTEN", 41001, 1000, 0), ("TIME_WAIT", 0, 0, 3), ("FIN_WAIT2", 0, 0, 3),
            ("SYN_RECV", 0, 1000, 1), ("ESTABLISHED", 41002, 1000, 0)]

    def test_inode_zero_is_never_owned(self):
        class NoFS(object):
            root = "/nonexistent"           # no other process to walk for owners

            def socket_inodes(self, pid):
                return {0, 41001}, None
        owners = ns.Ownership(NoFS(), 1)
        assert owners.owns(41001) and not owners.owns(0)

    def test_tcp_truncated_last_line_skipped(self):
        rows = ns.parse_sockets(crafted("tcp_truncated"), "tcp")
        assert [s.inode for s in rows] == [51001, 51002]
        assert rows.skipped == 1

    def test_udp_wide_numbers_unbounded(self):
        rows = ns.parse_sockets(crafted("udp_wide_numbers"), "udp")
        assert rows.skipped == 0
        assert (rows[0].inode, rows[0].drops, rows[0].uid) == (4294967301, 3000000000, 101)
        assert rows[1].drops == 0

    def test_softnet_9cols_row_number_is_cpu(self):
        rows = ns.parse_softnet(crafted("softnet_9cols"))
        assert [(r["cpu"], r["processed"], r["dropped"], r["time_squeeze"],
                 r["cpu_collision"], r["columns"]) for r in rows] == [
            (0, 0xa1b2, 3, 0x10, 7, 9), (1, 0xc3d4, 0, 1, 0, 9)]
        assert "received_rps" not in rows[0]

    def test_softnet_15cols_cpu_from_column_13(self):
        rows = ns.parse_softnet(crafted("softnet_15cols"))
        assert [r["cpu"] for r in rows] == [0, 2, 3]       # CPU 1 offline: not a row
        assert [(r["input_qlen"], r["process_qlen"], r["backlog_len"]) for r in rows] == [
            (8, 9, 7), (0, 0, 0), (0xb, 0xc, 0xa)]
        assert "cpu_index" not in rows[0]

    def test_snmp_outtransmits_and_middle_columns_by_name(self):
        sec = ns.parse_snmp(crafted("snmp_outtransmits"))
        assert sec.skipped == 0
        assert sec["Ip"]["OutTransmits"] == 812
        assert sec["Ip"]["Forwarding"] == 1
        icmp = sec["Icmp"]
        assert (icmp["OutRateLimitGlobal"], icmp["OutRateLimitHost"]) == (3, 4)
        assert (icmp["OutDestUnreachs"], icmp["OutEchoReps"]) == (9, 12)
        assert sec["Tcp"]["MaxConn"] == -1
        assert sec["Udp"]["MemErrors"] == 0 and sec["Udp"]["NoPorts"] == 2

    def test_icmpmsg_repeated_pairs_merge(self):
        sec = ns.parse_snmp(crafted("icmpmsg_repeated"))
        assert sec.skipped == 0
        msg = sec["IcmpMsg"]
        assert len(msg) == 21
        assert msg["InType0"] == 1 and msg["InType15"] == 16 and msg["InType18"] == 19
        assert (msg["OutType0"], msg["OutType3"]) == (40, 41)
        assert sec["Tcp"]["RtoAlgorithm"] == 1              # the pair after still lines up

    def test_icmpmsg_absent(self):
        text = "Icmp: InMsgs\nIcmp: 0\nTcp: RtoAlgorithm\nTcp: 1\n"
        sec = ns.parse_snmp(text)
        assert "IcmpMsg" not in sec and sec["Tcp"]["RtoAlgorithm"] == 1

    def test_route_flags_are_hex(self):
        rows = ns.parse_route(crafted("route_flags_hex_0201"))
        assert rows.skipped == 0
        assert [(r["iface"], r["destination"], r["gateway"], r["mask"], r["flags_raw"],
                 r["flags"], r["metric"], r["mtu"]) for r in rows] == [
            ("v0", "0.0.0.0", "192.0.2.254", "0.0.0.0", 0x3, "UG", 100, 1500),
            # 0x0201 = RTF_UP|RTF_REJECT; route -n prints it as "!" (decimal 201 would be "UR")
            ("*", "203.0.113.0", "0.0.0.0", "255.255.255.0", 0x201, "!", 0, 0),
            ("v0", "198.51.100.1", "192.0.2.254", "255.255.255.255", 0x11, "UD", 0, 0),
            ("v0", "192.0.2.0", "0.0.0.0", "255.255.255.0", 0x1, "U", 0, 0)]

    def test_ipv6_route_reject_and_network_order(self):
        rows = ns.parse_ipv6_route(crafted("ipv6_route_reject"))
        assert rows.skipped == 0
        got = [(r["destination"], r["prefix_len"], r["next_hop"], r["metric"], r["flags"],
                r["iface"]) for r in rows]
        assert got == [
            ("2001:db8:1::", 48, "2001:db8::fe", 1024, "UG", "v0"),
            ("2001:db8::", 64, "::", 256, "U", "v0"),
            ("::", 0, "::", 0xffffffff, "!n", "lo"),        # route -6 shows it as !n
            ("::1", 128, "::", 0, "Un", "lo")]

    def test_arp_no_hwaddr_five_fields(self):
        rows = ns.parse_arp(crafted("arp_no_hwaddr"))
        assert rows.skipped == 0
        assert [(e.ip_address, e.hw_type, e.hw_address, e.device, ns.arp_state(e.flags))
                for e in rows] == [
            ("192.0.2.9", 0x300, "", "tun0", "complete,permanent"),
            ("192.0.2.10", 1, "02:00:00:00:00:0a", "v0", "complete"),
            ("192.0.2.11", 1, "00:00:00:00:00:00", "v0", "permanent,publish")]

    def test_dev_old_nospace_and_colon_names(self):
        rows = ns.parse_dev(crafted("dev_old_nospace"))
        assert rows.skipped == 0
        assert [(r["name"], r["rx_bytes"], r["rx_packets"]) for r in rows] == [
            ("lo", 12345678, 100000), ("eth0", 123456789012, 2000000), ("eth0:1", 1, 2)]
        assert [rows[1][k] for k in ns.DEV_FIELDS[2:8]] == [1, 2, 3, 4, 5, 6]
        assert rows[1]["tx_compressed"] == 12

    def test_stat_paren_in_comm(self):
        comm, rest = ns.parse_stat_line(crafted("stat_paren_in_comm"))
        assert comm == "odd) name) S (x)"
        assert rest[:3] == ["S", "1", "4242"]


# ---------------------------------------------------------------------------
# Byte order: /proc/net/{tcp,udp,raw,route} print a __be32 with %08X, i.e. the
# address's bytes as the HOST reads a u32.  Decoding must pack with the host's
# order (struct "="), not a fixed "<" or ">".
# ---------------------------------------------------------------------------

def kernel_hex_ipv4(ip):
    """What %08X of a __be32 prints on THIS host: the 4 bytes read as a native u32."""
    return "%08X" % struct.unpack("=I", socket.inet_aton(ip))[0]


def kernel_hex_ipv6(ip):
    raw = socket.inet_pton(socket.AF_INET6, ip)
    return "".join("%08X" % w for w in struct.unpack("=4I", raw))


class TestByteOrder:
    def test_little_endian_sample(self):
        if sys.byteorder != "little":
            pytest.skip("the sample bytes are those a little-endian host prints")
        assert ns.decode_address("0100007F:0016") == ("127.0.0.1", 22)
        assert ns.decode_address("0000000000000000FFFF00000100007F:0050") == \
            ("::ffff:127.0.0.1", 80)

    @given(st.ip_addresses(v=4), st.integers(0, 65535))
    @settings(max_examples=200, deadline=None)
    def test_ipv4_roundtrip_in_host_order(self, ip, port):
        assert ns.decode_address("%s:%04X" % (kernel_hex_ipv4(str(ip)), port)) == \
            (str(ip), port)

    @given(st.ip_addresses(v=6), st.integers(0, 65535))
    @settings(max_examples=200, deadline=None)
    def test_ipv6_roundtrip_in_host_order(self, ip, port):
        host, got_port = ns.decode_address("%s:%04X" % (kernel_hex_ipv6(str(ip)), port))
        # compare bytes: inet_ntop and ipaddress spell ::ffff:0:0 differently
        assert (socket.inet_pton(socket.AF_INET6, host), got_port) == (ip.packed, port)

    def test_big_endian_hosts_file(self):
        """fixtures/crafted/tcp_bigendian_host is what a big-endian host (s390x, ppc64)
        prints for 127.0.0.1:8080 LISTEN and 192.0.2.1:22 <- 198.51.100.1: there the
        u32 of the bytes 7F 00 00 01 *is* 0x7F000001.  The files are only meaningful on
        the host that wrote them: read on a little-endian host they decode byte-reversed
        (1.0.0.127), and that is right, because a little-endian kernel would have printed
        0100007F.  Ports are printed after ntohs, so they read the same everywhere."""
        rows = ns.parse_sockets(crafted("tcp_bigendian_host"), "tcp")
        got = [(s.local_address, s.local_port, s.remote_address, s.remote_port) for s in rows]
        if sys.byteorder == "big":
            assert got == [("127.0.0.1", 8080, "0.0.0.0", 0),
                           ("192.0.2.1", 22, "198.51.100.1", 50000)]
        else:
            assert got == [("1.0.0.127", 8080, "0.0.0.0", 0),
                           ("1.2.0.192", 22, "1.100.51.198", 50000)]
        # Either way the result is what native-order packing of the printed word gives.
        for s, line in zip(rows, crafted("tcp_bigendian_host").splitlines()[1:]):
            word = line.split()[1].split(":")[0]
            assert s.local_address == socket.inet_ntoa(struct.pack("=I", int(word, 16)))

    def test_route_uses_host_order_too(self):
        line = "v0\t%s\t%s\t0003\t0\t0\t0\t%s\t0\t0\t0" % (
            kernel_hex_ipv4("198.51.100.0"), kernel_hex_ipv4("192.0.2.254"),
            kernel_hex_ipv4("255.255.255.0"))
        row = ns.parse_route("header\n" + line)[0]
        assert (row["destination"], row["gateway"], row["mask"]) == \
            ("198.51.100.0", "192.0.2.254", "255.255.255.0")

    def test_ipv6_route_is_network_order_everywhere(self):
        # %pi6: no per-word swapping, whatever the host
        line = ("20010db8000000000000000000000001 80 " + "0" * 32 + " 00 " + "0" * 32 +
                " 00000000 00000001 00000000 00000001       v0")
        assert ns.parse_ipv6_route(line)[0]["destination"] == "2001:db8::1"


# ---------------------------------------------------------------------------
# Nothing a parser is given makes it raise; damaged lines are counted
# ---------------------------------------------------------------------------

PARSERS = {
    "tcp": lambda t: ns.parse_sockets(t, "tcp"),
    "udp6": lambda t: ns.parse_sockets(t, "udp6"),
    "arp": ns.parse_arp,
    "dev": ns.parse_dev,
    "snmp": ns.parse_snmp,
    "snmp6": ns.parse_snmp6,
    "softnet": ns.parse_softnet,
    "route": ns.parse_route,
    "ipv6_route": ns.parse_ipv6_route,
    "hex_table": ns.parse_hex_table,
}

# Lines that look like /proc/net files, mangled.
procish_text = st.lists(
    st.one_of(
        st.text(alphabet="0123456789ABCDEFabcdefO:x- \t*.", max_size=160),
        st.sampled_from([GOOD_TCP, GOOD_UDP, "Ip: Forwarding", "Ip: 1 2",
                         "  lo: 1 2 3", "00000001 00000002"]),
        st.text(max_size=40)),
    max_size=12).map("\n".join)


@pytest.mark.parametrize("name", sorted(PARSERS))
@given(body=procish_text)
@settings(max_examples=150, deadline=None)
def test_parsers_never_raise(name, body):
    """Fails when a parser raises on mangled text, or counts more records and skipped
    lines than the text has lines."""
    result = PARSERS[name](body)
    assert len(result) + result.skipped <= len(body.splitlines()) + 1


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_on_surrogate_escaped_bytes(name):
    body = ns.decode(b"h\n\xff\xfe 0100007F:0016\n\x00\x1b[31m: 1 2\n")
    result = PARSERS[name](body)
    assert result.skipped >= 1


def test_snmp_misaligned_pair_counted():
    text = "Ip: A B C\nIp: 1 2\nTcp: X\nTcp: 5\nUdp: Y\n"
    sec = ns.parse_snmp(text)
    assert "Ip" not in sec and sec["Tcp"]["X"] == 5
    assert sec.skipped == 2          # the short Ip pair, the lone Udp header


def test_snmp6_bad_lines_counted():
    sec = ns.parse_snmp6("Ip6InReceives 5\nIp6OutRequests x\nBogus 3\nIcmp6InMsgs 1 2\n")
    assert sec["Ip6"] == {"InReceives": 5}
    assert sec.skipped == 3


def test_hex_table_wrong_width_counted():
    rows = ns.parse_hex_table("a b c\n1 2 3\n1 2\nzz 1 1\n")
    assert [dict(r) for r in rows] == [{"a": 1, "b": 2, "c": 3}]
    assert rows.skipped == 2


# ---------------------------------------------------------------------------
# Captured trees (tools/capture_fixtures.py): the parsers against ss / ip / nstat
# output taken at the same moment in the same namespace
# ---------------------------------------------------------------------------

CAPTURED = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(FIXTURES, "*",
                                                                     "capture.json")))


def load_capture(tree):
    with open(os.path.join(tree, "capture.json")) as f:
        meta = json.load(f)
    net = os.path.join(tree, "proc", str(meta["pid"]), "net")
    return meta, net


def net_text(net, name):
    path = os.path.join(net, name)
    return text(path) if os.path.exists(path) else None


@pytest.fixture(params=CAPTURED, ids=[os.path.basename(p) for p in CAPTURED])
def capture(request):
    return load_capture(request.param) + (request.param,)


def test_captured_trees_read_end_to_end():
    """Each captured PID, read through --proc as a user would: its namespace and the
    sockets it owns are the ones capture.json recorded.  Fails when --proc is not
    followed (the live /proc read instead) or ownership is lost on the way to JSON."""
    assert CAPTURED, "run tools/capture_fixtures.py --netns"
    for tree in CAPTURED:
        meta, _ = load_capture(tree)
        for pid in meta["pids"]:
            netns = os.readlink(os.path.join(tree, "proc", str(pid), "ns", "net"))
            res = run_netsnoop("--proc", os.path.join(tree, "proc"), pid, "--once", "--json",
                               "--tab", "all")
            assert res.returncode == 0, res.stderr
            snap = json.loads(res.stdout)
            assert (snap["pid"], snap["netns"]) == (pid, netns)
            owned = sorted(s["inode"] for tab in ("tcp", "udp", "raw", "icmp")
                           for s in snap["tabs"][tab]["sockets"] if s["owned"])
            assert owned == meta["owned_inodes"][str(pid)]


class TestCaptured:
    def test_no_line_skipped_in_any_file(self, capture):
        _, net, _ = capture
        for name, parse in (("tcp", lambda t: ns.parse_sockets(t, "tcp")),
                            ("tcp6", lambda t: ns.parse_sockets(t, "tcp6")),
                            ("udp", lambda t: ns.parse_sockets(t, "udp")),
                            ("udp6", lambda t: ns.parse_sockets(t, "udp6")),
                            ("raw", lambda t: ns.parse_sockets(t, "raw")),
                            ("raw6", lambda t: ns.parse_sockets(t, "raw6")),
                            ("icmp", lambda t: ns.parse_sockets(t, "icmp")),
                            ("arp", ns.parse_arp), ("dev", ns.parse_dev),
                            ("snmp", ns.parse_snmp), ("netstat", ns.parse_snmp),
                            ("snmp6", ns.parse_snmp6), ("softnet_stat", ns.parse_softnet),
                            ("route", ns.parse_route), ("ipv6_route", ns.parse_ipv6_route)):
            body = net_text(net, name)
            if body is not None:
                assert parse(body).skipped == 0, name

    def test_sockets_match_ss(self, capture):
        meta, net, _ = capture
        if not meta["views"].get("ss"):
            pytest.skip("ss output not captured")
        mine = []
        for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
            body = net_text(net, name)
            if body is not None:
                mine.extend(s._asdict() for s in ns.parse_sockets(body, name))
        assert netcompare.netsnoop_sockets(mine) == netcompare.ss_sockets(meta["views"]["ss"])

    def test_routes_match_ip(self, capture):
        meta, net, _ = capture
        v4 = ns.parse_route(net_text(net, "route"))
        assert netcompare.netsnoop_routes_v4(v4) == \
            netcompare.ip_routes_v4(meta["views"]["ip_route"])
        v6 = ns.parse_ipv6_route(net_text(net, "ipv6_route"))
        assert netcompare.netsnoop_routes_v6(v6) == \
            netcompare.ip_routes_v6(meta["views"]["ip6_route"])

    def test_neighbours_match_ip(self, capture):
        meta, net, _ = capture
        arp = [e._asdict() for e in ns.parse_arp(net_text(net, "arp"))]
        assert netcompare.netsnoop_neighbours(arp) == \
            netcompare.ip_neighbours(meta["views"]["ip_neigh"])

    def test_dev_matches_ip_link(self, capture):
        meta, net, _ = capture
        dev = {r["name"]: r for r in ns.parse_dev(net_text(net, "dev"))}
        links = netcompare.ip_link_counters(meta["views"]["ip_link"])
        after = netcompare.ip_link_counters(meta["views_after"]["ip_link"])
        assert set(dev) == set(links)
        for name, counters in links.items():
            for key, value in counters.items():
                # ip ran just before and just after the copy
                assert value <= dev[name][key] <= after[name][key], (name, key)

    def test_counters_match_nstat(self, capture):
        meta, net, _ = capture
        flat = netcompare.flatten_counters([
            ns.parse_snmp(net_text(net, "snmp")), ns.parse_snmp(net_text(net, "netstat")),
            ns.parse_snmp6(net_text(net, "snmp6"))])
        theirs = meta["views"]["nstat"]["kernel"]
        after = meta["views_after"]["nstat"]["kernel"]
        missing = [k for k in theirs if k not in flat]
        assert not missing
        for key, value in theirs.items():
            assert value <= flat[key] <= after[key], key

    def test_ownership_from_fd_links(self, capture):
        meta, net, tree = capture
        procfs = ns.ProcFS(os.path.join(tree, "proc"))
        for pid, inodes in meta["owned_inodes"].items():
            got, reason = procfs.socket_inodes(int(pid))
            assert reason is None
            assert got == set(inodes)
