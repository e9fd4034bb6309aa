#!/usr/bin/env python3
"""netsnoop: a Linux activity monitor in one file.

    netsnoop.py PID                     curses session on PID's network view
    netsnoop.py PID --once [--tab TAB|all] [--json]
    netsnoop.py --procs [--json] [--log FILE] [--filter REGEX] ...
    netsnoop.py --conns [--procs] [--json] [--log FILE] [--filter REGEX] ...
    netsnoop.py --serve [HOST:]PORT [PID] [--token-file FILE] [--serve-public]

The nine net tabs read /proc/PID/net, which is PID's *network namespace*:
every socket of every process in that namespace is listed, and a socket is
PID's own ("owned") when its inode is among the socket:[N] links of
/proc/PID/fd.  softnet_stat is global (per CPU, the same in every namespace)
and stat/arp_cache exists only in the host namespace.

Session keys: 1-9 and 0 pick a tab, c the conns tab (live connection events
of PID's namespace), Left/Right Tab/Shift-Tab cycle, Up/Down/PgUp/PgDn/Home/End
scroll, / filter, s sort, o owned only, ? help, :set N interval, :tab NAME,
q or Ctrl+D quit.  Only ':' opens the command line; a key with no use does
nothing.

Run-time dependencies: the Python standard library only (3.7+).  A C scanner
(_fastscan*.so, built by build_fastscan.py) is used for --procs when present.
"""

import argparse
import array
import collections
import errno
import gc
import json
import locale
import os
import pwd
import re
import resource
import select
import shlex
import signal
import socket
import stat
import struct
import sys
import textwrap
import threading
import time
import unicodedata

__version__ = "0.1.0"


# ---------------------------------------------------------------------------
# Constants and tables
# ---------------------------------------------------------------------------

PROG = "netsnoop"

TABS = ("tcp", "udp", "arp", "traffic", "stats", "raw", "icmp", "routing",
        "analysis", "procs")
NET_TABS = TABS[:-1]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

# TCP states, include/net/tcp_states.h.  UDP, raw and ping sockets print
# the same numbers (07 CLOSE = unconnected, 01 ESTABLISHED = connected).
TCP_STATES = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV",
    0x04: "FIN_WAIT1", 0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE",
    0x08: "CLOSE_WAIT", 0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV", 0x0D: "BOUND_INACTIVE",
}

# Socket files behind each tab; "6" files are absent when IPv6 is off.
SOCKET_FILES = {
    "tcp": ("tcp", "tcp6"),
    "udp": ("udp", "udp6", "udplite", "udplite6"),
    "raw": ("raw", "raw6"),
    "icmp": ("icmp", "icmp6"),
}

# route(8) flag letters, include/uapi/linux/route.h and ipv6_route.h,
# in the order net-tools prints them (lib/inet6_gr.c: U ! G H ... n, so the
# IPv6 null entry reads "!n" and a local route "Un").
RTF_UP, RTF_GATEWAY, RTF_REJECT = 0x0001, 0x0002, 0x0200
ROUTE_FLAGS = (
    (RTF_UP, "U"), (RTF_REJECT, "!"), (RTF_GATEWAY, "G"), (0x0004, "H"),
    (0x0008, "R"), (0x0010, "D"), (0x0020, "M"), (0x40000, "A"),
    (0x1000000, "C"), (0x400000, "e"), (0x200000, "n"),
)

# /proc/net/dev columns after the interface name (net/core/net-procfs.c).
DEV_FIELDS = (
    "rx_bytes", "rx_packets", "rx_errs", "rx_drop", "rx_fifo", "rx_frame",
    "rx_compressed", "rx_multicast", "tx_bytes", "tx_packets", "tx_errs",
    "tx_drop", "tx_fifo", "tx_colls", "tx_carrier", "tx_compressed",
)

# softnet_stat columns by position; later kernels append (docs/procfs.md):
# 9 cols 2.6.23, 10 +received_rps, 11 +flow_limit_count, 13 +backlog_len
# and cpu index (5.10), 15 +input_qlen, process_qlen (6.4).
SOFTNET_FIELDS = (
    "processed", "dropped", "time_squeeze", None, None, None, None, None,
    "cpu_collision", "received_rps", "flow_limit_count", "backlog_len",
    "cpu_index", "input_qlen", "process_qlen",
)

ARP_FLAGS = ((0x2, "complete"), (0x4, "permanent"), (0x8, "publish"))

# Sections of /proc/PID/net/snmp6 by counter-name prefix (longest first).
SNMP6_SECTIONS = ("UdpLite6", "Icmp6", "Udp6", "Ip6")


# ---------------------------------------------------------------------------
# Records and errors
# ---------------------------------------------------------------------------

class NetsnoopError(Exception):
    """An error shown to the user as one line; `status` is the exit code."""
    status = EXIT_FAIL


class ProcessGone(NetsnoopError):
    """The process does not exist (any more), or is a zombie."""


class ZombieError(ProcessGone):
    """The process has exited but was not reaped: only its name is left."""


class AccessDenied(NetsnoopError):
    """The process exists but its files cannot be read."""


class ReadError(NetsnoopError):
    """The process exists, but a file of it could not be read or made no sense (an I/O
    error, a damaged --proc tree).  Not an exit: the session shows it and goes on."""


class UsageError(NetsnoopError):
    """Bad command line."""
    status = EXIT_USAGE


# ---------------------------------------------------------------------------
# Safe text: nothing from a monitored process reaches the terminal raw
# ---------------------------------------------------------------------------

# C0, DEL, C1, bidi controls (Unicode Bidi_Control: the ALM, LRM and RLM
# marks, embeddings, overrides, isolates), line/paragraph separators, BOM,
# lone surrogates (undecodable bytes kept by surrogateescape).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e"}


def _escape_char(match):
    ch = match.group(0)
    named = _NAMED_ESCAPES.get(ch)
    if named:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:        # a byte that was not UTF-8
        return "\\x%02x" % (code - 0xDC00)
    if code <= 0x7F:        # C0 and DEL; C1 shows as \u0080.., never as a raw byte's \x80
        return "\\x%02x" % code
    return "\\u%04x" % code


# Invisible characters that can make one name look like another: format
# characters (zero-width space and joiners, word joiner, tags), private-use
# and unassigned code points, and the Hangul fillers that render as blanks.
_INVISIBLE_CATEGORIES = ("Cf", "Co", "Cn")
_FILLERS = "\u115f\u1160\u3164\uffa0"


def _escape_invisible(text):
    out = []
    for ch in text:
        if ch > "\x7f" and (ch in _FILLERS or
                            unicodedata.category(ch) in _INVISIBLE_CATEGORIES):
            code = ord(ch)
            ch = "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code
        out.append(ch)
    return "".join(out)


def printable(text, limit=None):
    """Escape control characters for a terminal; cut visibly past `limit` chars.

    "a\\x1b[31mb" -> "a\\\\e[31mb"; a backslash is doubled so an escape cannot be forged.
    """
    if text is None:
        return "?"
    text = str(text)
    cut = 0
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    text = _UNSAFE.sub(_escape_char, text)
    if not text.isascii():
        text = _escape_invisible(text)
    if cut:
        text += "...[+%s]" % plural(cut, "char")
    return text


def decode(data):
    """Bytes from /proc -> str; undecodable bytes survive as surrogates."""
    return data.decode("utf-8", "surrogateescape")


def plural(n, noun, nouns=None):
    """A count and its noun, agreed: (1, "line") -> "1 line"; (3, "line") -> "3 lines";
    (2, "process", "processes") -> "2 processes".  Every count shown to a user goes
    through here."""
    return "%d %s" % (n, noun if n == 1 else (nouns or noun + "s"))


# ---------------------------------------------------------------------------
# Parsers: text in, records out.  A damaged line is skipped and counted.
# ---------------------------------------------------------------------------

class Records(list):
    """A parser's result: the records, plus how many lines were skipped."""

    def __init__(self, items=(), skipped=0):
        list.__init__(self, items)
        self.skipped = skipped


class Sections(collections.OrderedDict):
    """{Section: {Counter: int}} from snmp/netstat, plus how many lines were skipped."""
    skipped = 0


Socket = collections.namedtuple(
    "Socket",
    "proto local_address local_port remote_address remote_port state "
    "tx_queue rx_queue timer_active timer_when retransmits uid timeout "
    "inode drops")


def _hex_ipv4(word):
    """Host-order hex word as printed by %08X of a __be32: "0100007F" -> "127.0.0.1"."""
    return socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(word, 16)))


def _hex_ipv6(words):
    """Four host-order hex words: "0000000000000000FFFF00000100007F" -> "::ffff:127.0.0.1"."""
    if len(words) != 32:
        raise ValueError(words)
    raw = struct.pack("=4I", *(int(words[i:i + 8], 16) for i in range(0, 32, 8)))
    return socket.inet_ntop(socket.AF_INET6, raw)


_ADDR_CACHE = {}


def _host(addr):
    """Hex address of a socket line -> text; most repeat, so they are remembered."""
    host = _ADDR_CACHE.get(addr)
    if host is None:
        if len(addr) == 8:
            host = _hex_ipv4(addr)
        else:
            host = _hex_ipv6(addr)
        if len(_ADDR_CACHE) < 65536:
            _ADDR_CACHE[addr] = host
    return host


def decode_address(text):
    """"0500000A:0016" -> ("10.0.0.5", 22); IPv6 takes 32 hex digits."""
    addr, _, port = text.partition(":")
    if not port:
        raise ValueError(text)
    return _host(addr), int(port, 16)


# Files that carry interface names (arp, dev, route, ipv6_route) are split
# on what the kernel writes: '\n' and ASCII blanks.  A name may hold any byte
# but NUL, '/', ':' and ASCII whitespace (net/core/dev.c dev_valid_name),
# while str.split()/splitlines() also break at \x1c-\x1f, \x85, \u2028...
_ASCII_BLANKS = re.compile("[ \t\n\r\x0b\x0c]+")
ASCII_BLANK_CHARS = " \t\n\r\x0b\x0c"


def _lines(text):
    return text.split("\n")


def _fields(line):
    """"eth0\t0100A8C0 ..." -> ["eth0", "0100A8C0", ...], split on ASCII blanks only."""
    return [f for f in _ASCII_BLANKS.split(line) if f]


def state_name(number):
    return TCP_STATES.get(number, "UNKNOWN_%02X" % number)


def parse_socket_line(line, proto):
    """One line of /proc/net/{tcp,udp,raw,icmp}[6] -> Socket; ValueError if damaged.

    TIME_WAIT and request sockets print only 12 fields; udp/raw/icmp add
    "ref pointer drops"; the drops and inode widths grew over time, so
    every number is parsed unbounded.
    """
    f = line.split()
    if len(f) < 10 or not f[0].endswith(":"):
        raise ValueError("short line")
    int(f[0][:-1])
    local, lport = decode_address(f[1])
    remote, rport = decode_address(f[2])
    tx, _, rx = f[4].partition(":")
    tr, _, when = f[5].partition(":")
    if not rx or not when:
        raise ValueError("queues")
    uid = int(f[7])
    inode = int(f[9])
    if uid < 0 or inode < 0:
        raise ValueError("negative")
    drops = None
    if proto.startswith(("udp", "raw", "icmp")) and len(f) >= 13:
        drops = int(f[12])
        if drops < 0:
            raise ValueError("negative drops")
    return Socket(proto, local, lport, remote, rport, state_name(int(f[3], 16)),
                  int(tx, 16), int(rx, 16), int(tr, 16), int(when, 16),
                  int(f[6], 16), uid, int(f[8]), inode, drops)


# Lines exactly as the kernel prints them (tcp4_seq_show, udp4_format_sock...)
# are matched by one regex over the whole text, several times faster than
# splitting 20,000 lines one by one.  Any other line (damaged, unexpected
# layout) goes through parse_socket_line, so the records and the skipped count
# are those of parsing every line of text.splitlines().
_HEX = "[0-9A-F]"
_HEX_ADDRESS = "({0}{{8}}(?:{0}{{24}})?):({0}{{4}})".format(_HEX)
# "st tx_queue:rx_queue tr:tm->when retrnsmt" as one group: idle sockets
# share a few values, so the group is decoded once per distinct text.
_SOCKET_MIDDLE = "({0}{{2}} {0}{{8}}:{0}{{8}} {0}{{2}}:{0}{{8,16}} {0}{{8}})".format(_HEX)
_LINE_BREAKS = "\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029"     # what str.splitlines() breaks at
_SOCKET_ROW_START = ("^(?: *[0-9]+: " + _HEX_ADDRESS + " " + _HEX_ADDRESS + " "
                     + _SOCKET_MIDDLE + " +([0-9]+) +([0-9]+) ([0-9]+)")
# udp, raw and icmp need the fields after the inode (drops); tcp does not,
# and not copying them out saves a tenth of the parse: an empty group instead.
_SOCKET_ROW_WITH_TAIL = re.compile(
    _SOCKET_ROW_START + "((?: [^" + _LINE_BREAKS + "]*)?)$|(.*))", re.M)
_SOCKET_ROW = re.compile(
    _SOCKET_ROW_START + "(?: [^" + _LINE_BREAKS + "]*)?()$|(.*))", re.M)
_MIDDLE_CACHE = {}


def _socket_middle(text):
    """"01 00000000:00000001 02:000000A0 00000000" -> (state, tx, rx, tr, when, retransmits)."""
    value = _MIDDLE_CACHE.get(text)
    if value is None:
        st, queues, timer, retransmits = text.split(" ")
        tx, _, rx = queues.partition(":")
        tr, _, when = timer.partition(":")
        value = (state_name(int(st, 16)), int(tx, 16), int(rx, 16), int(tr, 16),
                 int(when, 16), int(retransmits, 16))
        if len(_MIDDLE_CACHE) < 4096:
            _MIDDLE_CACHE[text] = value
    return value


def _parse_other_lines(text, proto, out):
    """Lines the regex did not take: parsed one by one, a damaged one counted."""
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse_socket_line(line, proto))
        except (ValueError, IndexError, OSError, struct.error):    # "-500000A": int() takes a sign
            out.skipped += 1


def parse_sockets(text, proto):
    """/proc/net/tcp (or udp, raw, icmp and their "6" twins) -> Records of Socket."""
    out = Records()
    body = text.find("\n") + 1 or len(text)    # where the lines after the header start
    _parse_other_lines("\n".join(text[:body].splitlines()[1:]), proto, out)
    with_drops = proto.startswith(("udp", "raw", "icmp"))
    rows = (_SOCKET_ROW_WITH_TAIL if with_drops else _SOCKET_ROW).findall(text, body)
    new, hosts, middles = tuple.__new__, _ADDR_CACHE, _MIDDLE_CACHE
    for laddr, lport, raddr, rport, mid, uid, timeout, inode, tail, other in rows:
        if not laddr:
            _parse_other_lines(other, proto, out)
            continue
        drops = None
        if with_drops:
            extra = tail.split()        # fields after the inode: ref pointer drops
            if len(extra) >= 3:
                try:
                    drops = int(extra[2])
                except ValueError:
                    drops = -1
                if drops < 0:
                    out.skipped += 1
                    continue
        st, tx, rx, tr, when, retransmits = middles.get(mid) or _socket_middle(mid)
        out.append(new(Socket, (
            proto, hosts.get(laddr) or _host(laddr), int(lport, 16),
            hosts.get(raddr) or _host(raddr), int(rport, 16), st, tx, rx, tr, when,
            retransmits, int(uid), int(timeout), int(inode), drops)))
    return out


ArpEntry = collections.namedtuple(
    "ArpEntry", "ip_address hw_type flags hw_address mask device")


def arp_state(flags):
    """0x6 -> "complete,permanent"; 0 -> "incomplete"."""
    names = [name for bit, name in ARP_FLAGS if flags & bit]
    return ",".join(names) if names else "incomplete"


def parse_arp(text):
    """/proc/net/arp -> Records of ArpEntry.

    Devices with no hardware address print an empty HW column, so a line
    may split into five fields.
    """
    out = Records()
    for line in _lines(text)[1:]:
        f = _fields(line)
        if not f:
            continue
        try:
            if len(f) == 6:
                ip, hw_type, flags, hw, mask, dev = f
            elif len(f) == 5:
                ip, hw_type, flags, mask, dev = f
                hw = ""
            else:
                raise ValueError(line)
            socket.inet_aton(ip)
            out.append(ArpEntry(ip, int(hw_type, 16), int(flags, 16), hw, mask, dev))
        except (ValueError, OSError):
            out.skipped += 1
    return out


def parse_hex_table(text):
    """Header + rows of hex numbers (stat/arp_cache) -> Records of dicts, one per CPU."""
    out = Records()
    lines = text.splitlines()
    if not lines:
        return out
    names = lines[0].split()
    for line in lines[1:]:
        f = line.split()
        if not f:
            continue
        try:
            if len(f) != len(names):
                raise ValueError(line)
            out.append(collections.OrderedDict(
                (n, int(v, 16)) for n, v in zip(names, f)))
        except ValueError:
            out.skipped += 1
    return out


def sum_arp_cache(rows):
    """Per-CPU arp_cache rows -> one dict; "entries" is table-wide, not per CPU."""
    total = collections.OrderedDict()
    for row in rows:
        for name, value in row.items():
            if name == "entries":
                total[name] = max(total.get(name, 0), value)
            else:
                total[name] = total.get(name, 0) + value
    return total


def parse_dev(text):
    """/proc/net/dev -> Records of dicts with "name" and the 16 DEV_FIELDS.

    Split at the last ':' after the two header lines: the counters never
    hold one, and old kernels print "%6s:%8lu" with no space after it.
    """
    out = Records()
    for line in _lines(text)[2:]:
        if not line.strip(ASCII_BLANK_CHARS):
            continue
        name, sep, rest = line.rpartition(":")
        try:
            values = [int(v) for v in _fields(rest)]
            name = name.strip(ASCII_BLANK_CHARS)
            if not sep or len(values) != len(DEV_FIELDS) or not name:
                raise ValueError(line)
        except ValueError:
            out.skipped += 1
            continue
        row = collections.OrderedDict(name=name)
        row.update(zip(DEV_FIELDS, values))
        out.append(row)
    return out


def parse_counter_pairs(text):
    """snmp / netstat: "Sec: names" then "Sec: values" -> {Sec: {name: int}}.

    Sections repeat (IcmpMsg prints up to 16 types per pair): merge them.
    Records.skipped counts pairs that do not line up.
    """
    sections = Sections()
    skipped = 0
    lines = [ln for ln in text.splitlines() if ln.strip()]
    i = 0
    while i + 1 < len(lines):
        head, values = lines[i], lines[i + 1]
        sec, sep, names = head.partition(":")
        vsec, vsep, nums = values.partition(":")
        if not sep or sec != vsec or not vsep:
            skipped += 1
            i += 1
            continue
        names, nums = names.split(), nums.split()
        try:
            if len(names) != len(nums):
                raise ValueError(head)
            parsed = [int(v) for v in nums]
        except ValueError:
            skipped += 1
            i += 2
            continue
        sections.setdefault(sec.strip(), collections.OrderedDict()).update(
            zip(names, parsed))
        i += 2
    if i < len(lines):
        skipped += 1
    sections.skipped = skipped
    return sections


def parse_snmp(text):
    """/proc/net/snmp or netstat text -> {Section: {Counter: int}} (skipped on .skipped)."""
    return parse_counter_pairs(text)


def parse_snmp6(text):
    """/proc/net/snmp6 ("Ip6InReceives   92166" lines) -> {Ip6: {InReceives: ...}, ...}."""
    sections = Sections()
    skipped = 0
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        try:
            if len(f) != 2:
                raise ValueError(line)
            value = int(f[1])
        except ValueError:
            skipped += 1
            continue
        for prefix in SNMP6_SECTIONS:
            if f[0].startswith(prefix) and len(f[0]) > len(prefix):
                sections.setdefault(prefix, collections.OrderedDict())[
                    f[0][len(prefix):]] = value
                break
        else:
            skipped += 1
    sections.skipped = skipped
    return sections


def parse_softnet(text):
    """/proc/net/softnet_stat (hex, one row per online CPU, 9..15+ columns) -> Records of dicts.

    The CPU id is column 13 when present (offline CPUs are skipped, so the
    row number is not the CPU); before that kernel, the row number.
    """
    out = Records()
    row_number = 0
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        try:
            values = [int(v, 16) for v in f]
            if len(values) < 9:
                raise ValueError(line)
        except ValueError:
            out.skipped += 1
            continue
        row = collections.OrderedDict(cpu=row_number)
        for name, value in zip(SOFTNET_FIELDS, values):
            if name:
                row[name] = value
        if "cpu_index" in row:
            row["cpu"] = row.pop("cpu_index")
        row["columns"] = len(values)
        out.append(row)
        row_number += 1
    return out


def route_flags(flags, ipv4=False):
    """0x0003 -> "UG" (route(8) letters).

    route -n (lib/inet_gr.c) shows an IPv4 reject route (0x0201) as "!",
    dropping U and G.
    """
    if ipv4 and flags & RTF_REJECT:
        flags &= ~(RTF_UP | RTF_GATEWAY)
    return "".join(letter for bit, letter in ROUTE_FLAGS if flags & bit)


def parse_route(text):
    """/proc/net/route (tab separated, host-order hex addresses, HEX flags) -> Records of dicts."""
    out = Records()
    for line in _lines(text)[1:]:
        f = _fields(line)
        if not f:
            continue
        try:
            if len(f) < 11:
                raise ValueError(line)
            flags = int(f[3], 16)
            out.append(collections.OrderedDict((
                ("iface", f[0]),
                ("destination", _hex_ipv4(f[1])),
                ("gateway", _hex_ipv4(f[2])),
                ("mask", _hex_ipv4(f[7])),
                ("flags", route_flags(flags, ipv4=True)),
                ("flags_raw", flags),
                ("metric", int(f[6])),
                ("mtu", int(f[8])),
                ("window", int(f[9])),
                ("irtt", int(f[10])),
                ("refcnt", int(f[4])),
                ("use", int(f[5])),
            )))
        except (ValueError, OSError, struct.error):
            out.skipped += 1
    return out


def _net_ipv6(hex32):
    """ipv6_route prints addresses in network order: no byte swapping."""
    if len(hex32) != 32:
        raise ValueError(hex32)
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex32))


def parse_ipv6_route(text):
    """/proc/net/ipv6_route -> Records of dicts (all tables; plen and metric are hex)."""
    out = Records()
    for line in _lines(text):
        f = _fields(line)
        if not f:
            continue
        try:
            if len(f) != 10:
                raise ValueError(line)
            flags = int(f[8], 16)
            out.append(collections.OrderedDict((
                ("destination", _net_ipv6(f[0])),
                ("prefix_len", int(f[1], 16)),
                ("source", _net_ipv6(f[2])),
                ("source_prefix_len", int(f[3], 16)),
                ("next_hop", _net_ipv6(f[4])),
                ("metric", int(f[5], 16)),
                ("refcnt", int(f[6], 16)),
                ("use", int(f[7], 16)),
                ("flags", route_flags(flags)),
                ("flags_raw", flags),
                ("iface", f[9]),
            )))
        except (ValueError, OSError):
            out.skipped += 1
    return out


def parse_stat_line(text):
    """/proc/PID/stat -> (comm, [fields after comm]); the name may hold ") ", so split at the last ')'."""
    start = text.index("(")
    end = text.rindex(")")
    return text[start + 1:end], text[end + 2:].split()


# ---------------------------------------------------------------------------
# Netlink sock_diag: parsers (bytes in, records out; pure)
# ---------------------------------------------------------------------------
# Owns the layout of NETLINK_SOCK_DIAG messages (docs/conns.md gives the kernel
# headers: include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h, tcp.h).  Calls
# nothing but struct and socket.inet_ntop; the sockets themselves are opened
# in "Socket owners and TCP bytes: collection".

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO, INET_DIAG_CGROUP_ID = 2, 21
# sock_diag multicast groups: every TCP socket's destruction, with its last tcp_info
SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY = 1, 3
TCP_LISTEN, TCP_TIME_WAIT, TCP_NEW_SYN_RECV = 0x0A, 0x06, 0x0C
# every TCP state but TIME_WAIT (no owner, no tcp_info: already destroyed)
DIAG_LIVE_STATES = sum(1 << s for s in TCP_STATES if s not in (TCP_TIME_WAIT, 0x0D))

NLMSGHDR = struct.Struct("=IHHII")                  # len type flags seq pid
# inet_diag_req_v2: family protocol ext pad states, then inet_diag_sockid
INET_DIAG_REQ = struct.Struct("=BBBxI48x")
# inet_diag_msg: family state timer retrans, sockid (sport dport big-endian,
# src[16] dst[16] if cookie[2]), expires rqueue wqueue uid inode
INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sIIIIIIII")
RTATTR = struct.Struct("=HH")
# tcp_info offsets of the two byte counters (u64): bytes_acked, bytes_received
TCP_INFO_BYTES = struct.Struct("=QQ")
TCP_INFO_BYTES_AT = 120
TCP_INFO_BYTES_END = TCP_INFO_BYTES_AT + TCP_INFO_BYTES.size

DiagSocket = collections.namedtuple(
    "DiagSocket",
    "family state local_address local_port remote_address remote_port uid inode cookie "
    "cgroup bytes_sent bytes_received")


def inet_diag_request(family, states, seq=1, protocol=socket.IPPROTO_TCP,
                      info=True):
    """A SOCK_DIAG_BY_FAMILY dump request: sockets of `family` in the states of the
    bitmask (filtered by the kernel), with tcp_info when `info`."""
    ext = 1 << (INET_DIAG_INFO - 1) if info else 0
    body = INET_DIAG_REQ.pack(family, protocol, ext, states)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def inet_diag_lookup(sock, seq=1):
    """A request for one socket (no dump: the kernel looks it up in its hash, no
    walk) by its addresses, ports and cookie, as a DiagSocket gives them."""
    def raw(address):
        packed = socket.inet_pton(sock.family, address)
        return packed + bytes(16 - len(packed))
    body = INET_DIAG_REQ.pack(sock.family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1),
                              0xFFFFFFFF)[:8] \
        + struct.pack(">HH", sock.local_port, sock.remote_port) \
        + raw(sock.local_address) + raw(sock.remote_address) \
        + struct.pack("=III", 0, sock.cookie & 0xFFFFFFFF, sock.cookie >> 32)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                         seq, 0) + body


def _align4(n):
    return (n + 3) & ~3


def parse_netlink(data):
    """Netlink messages -> [(type, seq, payload)]; a truncated tail is ignored."""
    out = []
    at = 0
    while at + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq = NLMSGHDR.unpack_from(data, at)[:4]
        if length < NLMSGHDR.size or at + length > len(data):
            break
        out.append((kind, seq, bytes(data[at + NLMSGHDR.size:at + length])))
        at += _align4(length)
    return out


def parse_rtattrs(data):
    """Netlink attributes -> {type: payload}."""
    attrs = {}
    at = 0
    while at + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, at)
        if length < RTATTR.size or at + length > len(data):
            break
        attrs[kind & 0x3FFF] = data[at + RTATTR.size:at + length]     # no NLA_F_ flags
        at += _align4(length)
    return attrs


def parse_tcp_info_bytes(blob):
    """tcp_info -> (bytes_acked, bytes_received).  An older kernel sends a shorter
    struct: what it lacks reads 0, as ss does (bytes_acked came in Linux 4.1)."""
    if len(blob) < TCP_INFO_BYTES_END:
        blob = bytes(blob) + bytes(TCP_INFO_BYTES_END - len(blob))
    return TCP_INFO_BYTES.unpack_from(blob, TCP_INFO_BYTES_AT)


def _diag_address(family, raw):
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def parse_inet_diag_msg(payload):
    """One inet_diag_msg and its attributes -> DiagSocket; ValueError if short.
    cgroup and the byte counts are None when the kernel did not send them."""
    if len(payload) < INET_DIAG_MSG.size:
        raise ValueError("short inet_diag_msg")
    (family, state, _timer, _retrans, sport, dport, src, dst, _ifindex, cookie_low,
     cookie_high, _expires, _rqueue, _wqueue, uid, inode) = INET_DIAG_MSG.unpack_from(payload)
    attrs = parse_rtattrs(payload[_align4(INET_DIAG_MSG.size):])
    cgroup = None
    if len(attrs.get(INET_DIAG_CGROUP_ID, b"")) >= 8:
        cgroup = struct.unpack_from("=Q", attrs[INET_DIAG_CGROUP_ID])[0]
    sent = received = None
    if INET_DIAG_INFO in attrs:
        sent, received = parse_tcp_info_bytes(attrs[INET_DIAG_INFO])
    return DiagSocket(family, state, _diag_address(family, src), struct.unpack(">H", sport)[0],
                      _diag_address(family, dst), struct.unpack(">H", dport)[0], uid, inode,
                      cookie_low | cookie_high << 32, cgroup, sent, received)


_INODE_AT = NLMSGHDR.size + INET_DIAG_MSG.size - 4     # inet_diag_msg's last field


# nlmsghdr and inet_diag_msg in one unpack (the socket rows' parser)
_DIAG_ROW = struct.Struct("=IHHII" + INET_DIAG_MSG.format.lstrip("="))
_ROW_ATTRS_AT = _align4(_DIAG_ROW.size)
_TIMER_PROBES = (2, 4)      # keepalive, zero-window probe: retrans counts probes_out


def parse_diag_rows(data, seq, rows, tcp_bytes, names):
    """A chunk of a dump's reply -> Socket records appended to `rows`, as
    /proc/net/tcp[6] would give them, and tcp_bytes[inode] = (acked, received);
    -> (finished, errno or 0, messages skipped).  names: a cache raw address ->
    text, kept across chunks (a dump repeats few addresses).

    The tcp tab's rows when sock_diag answers (as ss reads them): at 20,000
    sockets one dump (~30 ms in the kernel, with tcp_info) and this parse replace
    reading /proc/net/tcp and tcp6 (~45 ms), their parse (~50 ms) and a second
    dump for the bytes.  Field by field as tcp4_seq_show prints them:
    - tx_queue: a listener's is 0 there (inet_diag gives its backlog instead);
    - timer_when: clock ticks (1/100 s) there, milliseconds here;
    - retransmits/timeout: the dump has one counter, icsk_retransmits with the
      retransmit timer, icsk_probes_out with the keepalive or probe timers;
      /proc prints both (the other one is then 0 but for rare overlaps).
    tcp_info is found where it sat in the message before when its header is
    there (a dump's messages carry the same attributes): at 20,000 sockets,
    walking every message's attributes costs ~30 ms more."""
    at, end, skipped = 0, len(data), 0
    unpack, info_bytes = _DIAG_ROW.unpack_from, TCP_INFO_BYTES.unpack_from
    guess, guess_head = None, None
    # per-row lookups made local, rows made by tuple.__new__ (the namedtuple's
    # __new__ is a Python function): ~20% of this parse at 20,000 rows
    from_bytes, new, state_names = int.from_bytes, tuple.__new__, TCP_STATES
    protos = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6"}
    while at + NLMSGHDR.size <= end:
        length, kind, _flags, msg_seq, _pid = NLMSGHDR.unpack_from(data, at)
        if length < NLMSGHDR.size or at + length > end:
            break
        if msg_seq != seq:
            at += _align4(length)
            continue
        if kind == NLMSG_DONE:
            return True, 0, skipped
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, at + NLMSGHDR.size)[0] \
                if length >= 20 else -errno.EIO
            return True, -code, skipped
        if kind != SOCK_DIAG_BY_FAMILY:
            at += _align4(length)
            continue
        if length < _DIAG_ROW.size:
            skipped += 1
            at += _align4(length)
            continue
        (_len, _kind, _flags, _seq, _pid, family, state, timer, retrans, sport, dport,
         src, dst, _ifindex, _cookie_low, _cookie_high, expires, rqueue, wqueue, uid,
         inode) = unpack(data, at)
        local = names.get(src)
        if local is None:
            local = names[src] = _diag_address(family, src)
        remote = names.get(dst)
        if remote is None:
            remote = names[dst] = _diag_address(family, dst)
        probes = timer in _TIMER_PROBES
        rows.append(new(Socket, (
            protos.get(family, "tcp"), local, from_bytes(sport, "big"),
            remote, from_bytes(dport, "big"), state_names.get(state) or state_name(state),
            0 if state == TCP_LISTEN else wqueue, rqueue, timer, expires // 10,
            0 if probes else retrans, uid, retrans if probes else 0, inode, None)))
        if inode and length > _ROW_ATTRS_AT:
            # the attributes come in the same order in every message of a dump:
            # where tcp_info sat in the last one is tried first
            found = None
            if guess is not None and guess + 4 + TCP_INFO_BYTES_END <= length \
                    and data[at + guess:at + guess + 4] == guess_head:
                found = info_bytes(data, at + guess + 4 + TCP_INFO_BYTES_AT)
            else:
                guess = _info_offset(data, at, length)
                if guess is not None:
                    guess_head = data[at + guess:at + guess + 4]
                    attrs = parse_rtattrs(data[at + guess:at + length])
                    if INET_DIAG_INFO in attrs:
                        found = parse_tcp_info_bytes(attrs[INET_DIAG_INFO])
            if found is not None:
                tcp_bytes[inode] = found
        at += (length + 3) & ~3
    return False, 0, skipped


def _info_offset(data, at, length):
    """Where INET_DIAG_INFO's header sits in the message at `at` (None if absent)."""
    a = at + _align4(_INODE_AT + 4)
    while a + RTATTR.size <= at + length:
        alen, kind = RTATTR.unpack_from(data, a)
        if alen < RTATTR.size:
            return None
        if kind & 0x3FFF == INET_DIAG_INFO:
            return a - at
        a += _align4(alen)
    return None


def parse_diag_dump(data, seq=None):
    """A chunk of a dump's reply -> (Records of DiagSocket, finished, errno or 0).

    finished: NLMSG_DONE (or an error) was in this chunk; a damaged message is
    skipped and counted.  seq: only that request's messages count (the rest of
    an earlier dump, abandoned, may still be queued)."""
    out = Records()
    for kind, msg_seq, payload in parse_netlink(data):
        if seq is not None and msg_seq != seq:
            continue
        if kind == NLMSG_DONE:
            return out, True, 0
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else -errno.EIO
            return out, True, -code
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        try:
            out.append(parse_inet_diag_msg(payload))
        except (ValueError, struct.error, OSError):
            out.skipped += 1
    return out, False, 0


# ---------------------------------------------------------------------------
# ProcFS: the only code that opens files under /proc
# ---------------------------------------------------------------------------

READ_CHUNK = 1 << 20
CAP_SYS_PTRACE = 19     # include/uapi/linux/capability.h: another uid's fds, ns links


# A /proc/net seq file read stops short of what was asked only at the end,
# or when the next record did not fit the kernel's buffer (a page, >= 4096
# bytes).  No record of the files netsnoop reads under net/ comes near 512
# bytes, so a chunk shorter than this is the end: the read that would
# return nothing is skipped, and with it a second walk of the whole TCP hash
# (~2.5 ms for tcp and again for tcp6, even with no socket).
SEQ_END_BELOW = 4096 - 512


def _open_ro(path):
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def read_fd_all(fd, end_below=0):
    """Read an open file to the end in large chunks (seq files fill what they can).

    end_below: a chunk shorter than this ends the file (SEQ_END_BELOW for
    /proc/net seq files); 0 reads until the kernel returns nothing.
    """
    parts = []
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            parts.append(chunk)
        if len(chunk) < end_below or not chunk:
            return b"".join(parts)


class ProcFS(object):
    """Owns the procfs root (`--proc DIR`) and the opening of files.

    OSErrors become ProcessGone / AccessDenied / ReadError here and nowhere else; a net
    file that does not exist (IPv6 off, arp_cache outside the host
    namespace) reads as None.
    """

    def __init__(self, root="/proc"):
        self.root = root

    def path(self, *parts):
        return os.path.join(self.root, *[str(p) for p in parts])

    def read_bytes(self, *parts, end_below=0):
        fd = _open_ro(self.path(*parts))
        try:
            return read_fd_all(fd, end_below)
        finally:
            os.close(fd)

    def read(self, *parts, end_below=0):
        return decode(self.read_bytes(*parts, end_below=end_below))

    def check_root(self):
        """The root must be a readable directory (`--proc DIR` may be wrong)."""
        try:
            os.listdir(self.root)
        except OSError as err:
            raise NetsnoopError("cannot read %s: %s" % (self.root, err.strerror))

    def _gone(self, pid, err, what):
        if err.errno in (errno.EACCES, errno.EPERM):
            return AccessDenied("process %d: cannot read %s: permission denied"
                                % (pid, what))
        if err.errno == errno.EINVAL:
            return ZombieError("process %d is a zombie: its %s is unavailable"
                               % (pid, what))
        if not os.path.exists(self.path(pid)):
            return ProcessGone(self._missing_reason(pid))
        return None

    def _missing_reason(self, pid):
        if self.hidepid() and not self.sees_every_process():
            return ("process %d does not exist or is hidden from you "
                    "(%s is mounted with hidepid)" % (pid, self.root))
        return "process %d does not exist" % pid

    def is_live(self):
        """True when the root is the running kernel's /proc, not a tree of files
        (--proc DIR): only then do the kernel's other sources (sock_diag, inotify on
        the program directories, the clock) speak of the same processes."""
        return os.path.realpath(self.root) == "/proc"

    def sys_ptrace(self):
        """True when netsnoop has CAP_SYS_PTRACE in effect (self/status CapEff),
        False when not, None when that cannot be read."""
        try:
            status = self.read("self", "status")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("CapEff:"):
                try:
                    return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
                except (IndexError, ValueError):
                    return None
        return None

    def in_child_user_namespace(self):
        """True when netsnoop's uids are not the whole range mapped 1:1 (self/uid_map): it
        runs in a user namespace of its own, whose root has no power outside it."""
        try:
            uid_map = self.read("self", "uid_map").split()
        except OSError:
            return False
        return uid_map != ["0", "0", "4294967295"]

    def sees_every_process(self):
        """Root with CAP_SYS_PTRACE, in the first user namespace: hidepid hides nothing from
        it, and every process's fds and ns links are open to it (unless a security module)."""
        return (os.geteuid() == 0 and self.sys_ptrace() is not False
                and not self.in_child_user_namespace())

    def refusal(self, short=False):
        """Why another process's fds or ns links are refused to us (EACCES), in words."""
        if os.geteuid() != 0:
            if short:
                return "another user's process"
            return ("another user's process, or one that is not dumpable; run as its user "
                    "or root")
        if self.in_child_user_namespace():
            if short:
                return "root of a user namespace"
            return ("even to root: this root is that of a user namespace, with no power over "
                    "a process outside it that is another user's or not dumpable")
        if self.sys_ptrace() is False:
            if short:
                return "root without CAP_SYS_PTRACE"
            return ("even to root: it lacks CAP_SYS_PTRACE here (containers drop it), which "
                    "a process of another user or one that is not dumpable needs")
        if short:
            return "refused even to root"
        return "even to root: a security module (AppArmor, SELinux) refuses"

    def hidepid(self):
        """True when this procfs hides other users' processes (mount option hidepid)."""
        try:
            mounts = self.read("self", "mountinfo")
        except OSError:
            return False
        root = os.path.realpath(self.root)
        for line in mounts.splitlines():
            f = line.split()
            if len(f) > 4 and f[4] == root and "hidepid=" in line \
                    and not re.search(r"hidepid=(0|off)\b", line):
                return True
        return False

    def pid_read(self, pid, *parts):
        """/proc/PID/<parts> -> str; ProcessGone / AccessDenied / ReadError on failure."""
        try:
            return self.read(pid, *parts)
        except OSError as err:
            exc = self._gone(pid, err, "/".join(str(p) for p in parts))
            if exc is None:
                exc = ReadError("process %d: cannot read %s: %s"
                                % (pid, "/".join(parts), err.strerror))
            raise exc from err

    def net_read(self, pid, name):
        """/proc/PID/net/NAME -> str, or None when the file does not exist."""
        try:
            return self.read(pid, "net", name, end_below=SEQ_END_BELOW)
        except OSError as err:
            exc = self._gone(pid, err, "net/" + name)
            if exc is not None:
                raise exc from err
            if err.errno == errno.ENOENT:
                # A zombie's net/* files vanish (ENOENT) while net/ itself fails
                # with EINVAL: tell "file absent here" from "process died".
                self._check_net_dir(pid)
                return None
            raise ReadError("process %d: cannot read net/%s: %s"
                            % (pid, name, err.strerror)) from err

    def process_status(self, pid):
        """-> (comm, state letter, start ticks or None); raises ProcessGone for a
        missing PID or a zombie, ReadError for a damaged stat."""
        text = self.pid_read(pid, "stat")
        try:
            comm, rest = parse_stat_line(text)
            state = rest[0]
        except (ValueError, IndexError):
            raise ReadError("process %d: damaged stat (no state after the name)" % pid)
        if state in ("Z", "X"):
            raise ZombieError("process %d is a zombie: its network view is gone" % pid)
        start = rest[19] if len(rest) > 19 and rest[19].isdigit() else None   # field 22
        return comm, state, start

    def check_net(self, pid):
        """Fail early, with the message the README's exit statuses give, when PID's net
        view cannot be read."""
        comm = self.process_status(pid)[0]
        self._check_net_dir(pid)
        return comm

    def _check_net_dir(self, pid):
        try:
            os.listdir(self.path(pid, "net"))
        except OSError as err:
            exc = self._gone(pid, err, "net")
            if exc is None:
                exc = ReadError("process %d: cannot read net: %s" % (pid, err.strerror))
            raise exc from err

    def netns(self, pid):
        """"net:[4026531840]", or None when the link cannot be read (another user's process)."""
        try:
            return os.readlink(self.path(pid, "ns", "net"))
        except OSError:
            return None

    def netns_reason(self, pid):
        """Why netns(pid) is None, in a few words ("another user's process"), or None."""
        try:
            os.readlink(self.path(pid, "ns", "net"))
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM):
                return self.refusal(short=True)
            if err.errno == errno.ENOENT:
                return "no ns/net link"
            return err.strerror
        return None

    def netns_text(self, pid):
        """"net:[4026531840]", or "netns unknown (why)" for a heading or status line."""
        netns = self.netns(pid)
        if netns is not None:
            return netns
        return "netns unknown (%s)" % (self.netns_reason(pid) or "it changed while read")

    def socket_inodes(self, pid):
        """-> (set of socket inodes PID holds open, None) or (None, reason)."""
        try:
            dir_fd = os.open(self.path(pid, "fd"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return fd_socket_inodes(dir_fd), None
            finally:
                os.close(dir_fd)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM):
                return None, ("cannot read /proc/%d/fd (permission denied: %s)"
                              % (pid, self.refusal()))
            exc = self._gone(pid, err, "fd")
            if exc is not None:
                raise exc from err
            return None, "cannot read /proc/%d/fd: %s" % (pid, err.strerror)


def fd_socket_inodes(dir_fd):
    """Socket inodes among the fd links of an open /proc/PID/fd -> set.

    The C scanner does the same walk without the GIL, when it is built: then
    the scan truly runs beside the parsing (bench_net: 20,000 fds).
    """
    module = fast_fd_scanner()
    if module is not None:
        return fast_fd_socket_inodes(module, dir_fd)
    return python_fd_socket_inodes(dir_fd)


def fast_diag_parser():
    """The C scanner, for the tcp tab's --json rows (FastSocketRows), or None."""
    return _load_fastscan()[0]


def fast_fd_scanner():
    """The C scanner if it has the fd scan (a .so built before it was added has not)."""
    module = _load_fastscan()[0]
    return module if module is not None and hasattr(module.lib, "fs_socket_inodes") else None


def fast_fd_socket_inodes(module, dir_fd):
    cap = max(os.fstat(dir_fd).st_size, 1024) + 64
    while True:
        out = module.ffi.new("uint64_t[]", cap)
        n = module.lib.fs_socket_inodes(dir_fd, out, cap)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        if n <= cap:
            return set(module.ffi.unpack(out, n))
        cap = n + 1024              # fds opened meanwhile: again, with room


def _raise_if_refused(err):
    """A refused readlink (a process that is not dumpable, or the listing allowed and
    the links not) leaves ownership unknown: never read it as "no such fd"."""
    if err.errno in (errno.EACCES, errno.EPERM):
        raise err


def python_fd_socket_inodes(dir_fd):
    """fd_socket_inodes in Python.

    One readlink per fd, relative to dir_fd (no path walk).  On Linux 6.2+
    stat() of the directory counts the open fds, so while they are dense the
    names 0, 1, 2... are tried without reading the directory (a readdir of
    20,000 fds costs a quarter of the readlinks); past too many gaps, or
    with no count (older kernels, a --proc tree), the listing gives the rest.
    """
    targets = []
    readlink = os.readlink
    count = os.fstat(dir_fd).st_size
    fd = 0
    gaps_left = 64 + count // 8
    while len(targets) < count and gaps_left > 0:
        try:
            targets.append(readlink(str(fd), dir_fd=dir_fd))
        except OSError as err:      # no such fd: a gap, or closed meanwhile
            _raise_if_refused(err)
            gaps_left -= 1
        fd += 1
    if len(targets) < count or count <= 0:
        probed = set(map(str, range(fd)))
        for name in os.listdir(dir_fd):
            if name not in probed:
                try:
                    targets.append(readlink(name, dir_fd=dir_fd))
                except OSError as err:
                    _raise_if_refused(err)
                    continue        # closed since the listing
    inodes = set()
    for target in targets:
        # a --proc tree may hold anything: only well-formed links count
        if target.startswith("socket:[") and target.endswith("]"):
            digits = target[8:-1]
            if digits.isdigit() and digits.isascii():
                inode = int(digits)
                if 0 < inode < 1 << 64:
                    inodes.add(inode)
    return inodes


# ---------------------------------------------------------------------------
# Net collection: one tab's data as a JSON-ready dict
# ---------------------------------------------------------------------------

SOCKET_KEYS = Socket._fields + ("owned",)


def socket_dict(sock, owned):
    return dict(zip(SOCKET_KEYS, sock + (owned,)))


# CPU time used by the helper threads of a collection (fd scan, read-ahead): the
# session counts it into a refresh's cost with its own thread's (timed_refresh).
_HELPER_CPU = [0.0]
_HELPER_CPU_LOCK = threading.Lock()


def helper_cpu_seconds():
    return _HELPER_CPU[0]


def _count_helper_cpu(seconds):
    with _HELPER_CPU_LOCK:
        _HELPER_CPU[0] += seconds


class Ownership(object):
    """Which socket inodes PID holds; read once per snapshot.

    The fd scan (a readlink per fd: ~50 ms at 20,000 fds, nearly all of it
    in the kernel) starts in a thread at once, so that it overlaps the
    reading of the /proc/PID/net files; the first question waits for it and
    re-raises its error (ProcessGone) in the asking thread.  Done by the C
    scanner it holds no GIL and may run beside the parsing too
    (beside_parsing); done in Python it would fight the parsing for the GIL.
    """

    def __init__(self, procfs, pid):
        self._result = None
        self._everyone = None               # SocketOwners, after PID's own scan
        self.beside_parsing = fast_fd_scanner() is not None
        self._scan = threading.Thread(target=self._run_scan, args=(procfs, pid),
                                      name="netsnoop-fd-scan")
        self._scan.daemon = True            # never keeps a failing netsnoop alive
        self._scan.start()

    def _run_scan(self, procfs, pid):
        started = time.thread_time()
        try:
            self._result = procfs.socket_inodes(pid) + (None,)
            inodes = self._result[0]
            # every other process's sockets too, for the owner of each row
            self._everyone = SocketOwners(procfs).scan(
                given={pid: inodes} if inodes is not None else None)
        except Exception as err:            # handed to the asking thread
            self._result = (None, None, err)
        _count_helper_cpu(time.thread_time() - started)

    def _wait(self):
        if self._scan is not None:
            self._scan.join()
            self._scan = None
        inodes, reason, err = self._result
        if err is not None:
            raise err
        return inodes, reason

    @property
    def inodes(self):
        return self._wait()[0]

    @property
    def everyone(self):
        """SocketOwners of every process netsnoop may read."""
        self._wait()
        return self._everyone

    @property
    def reason(self):
        return self._wait()[1]

    @property
    def known(self):
        return self.inodes is not None

    def owns(self, inode):
        return inode in self.held()

    def held(self):
        """The inodes to test rows against: empty when unknown, never 0."""
        inodes = self.inodes
        if not inodes:
            return frozenset()
        return inodes - {0} if 0 in inodes else inodes


def read_ahead(read, names):
    """Yield (name, read(name)) in order, each file read in a thread while the
    caller handles the one before (tcp6 is read while tcp is parsed).  An
    error of read() is raised here, at its file's turn."""
    results = [None] * len(names)
    ready = threading.Semaphore(0)

    def reader():
        for i, name in enumerate(names):
            started = time.thread_time()
            try:
                results[i] = (read(name), None)
            except Exception as err:        # handed to the caller
                results[i] = (None, err)
            _count_helper_cpu(time.thread_time() - started)
            ready.release()

    thread = threading.Thread(target=reader, name="netsnoop-read-ahead")
    thread.daemon = True                    # never keeps a failing netsnoop alive
    thread.start()
    for i, name in enumerate(names):
        ready.acquire()
        text, err = results[i]
        if err is not None:
            raise err
        yield name, text


def collect_sockets(procfs, pid, tab, owners, json_rows=False):
    """Socket tab data; with json_rows the rows stay records (SocketRows) for --json.
    The tcp tab comes from one sock_diag dump when the kernel answers (rows and
    bytes, as ss reads them), from /proc/PID/net/tcp[6] otherwise."""
    diag = reason = None
    module = fast_diag_parser() if json_rows and tab == "tcp" else None
    if module is not None:
        fast, reason = diag_in_namespace(procfs, pid, lambda entry: fast_diag_rows(module, entry))
        if fast is not None:
            data = collections.OrderedDict(sockets=FastSocketRows(module, fast, owners, pid))
            return _socket_notes(data, owners, True, None, fast.skipped, [])
    elif tab == "tcp":
        diag, reason = tcp_diag_rows(procfs, pid)
    if diag is not None:
        records, tcp_bytes, skipped = diag
        # inet_ntop and the state table: strings JSON writes as they are (~10 ms
        # of checking saved at 20,000 rows)
        return _socket_data(records, owners, tcp_bytes, None, skipped, [], json_rows,
                            plain=True)
    return _socket_data_from_files(procfs, pid, tab, owners, reason, json_rows)


def _socket_data_from_files(procfs, pid, tab, owners, bytes_reason, json_rows):
    names = SOCKET_FILES[tab]
    if owners.beside_parsing:
        files = read_ahead(lambda name: procfs.net_read(pid, name), names)
    else:
        # A scan in Python waits until the files are read: running it beside
        # the parsing would only fight over the GIL.
        files = [(name, procfs.net_read(pid, name)) for name in names]
        owners.held()
    records, skipped, missing = [], 0, []
    for name, text in files:
        if text is None:
            missing.append(name)
            continue
        parsed = parse_sockets(text, name)
        skipped += parsed.skipped
        records.extend(parsed)
    return _socket_data(records, owners, None, bytes_reason if tab == "tcp" else None,
                        skipped, missing, json_rows)


def _socket_data(records, owners, tcp_bytes, bytes_reason, skipped, missing, json_rows,
                 plain=False):
    """The tab's dict; tcp_bytes None with a bytes_reason: a tcp tab without bytes."""
    # the rows' JSON up to "owned" is written while the fd scan still runs (its C
    # code holds no GIL): at 20,000 sockets ~30 ms off the critical path
    heads = socket_json_heads(records, plain) if json_rows else None
    everyone = owners.everyone
    rows = SocketRows(records, owners.held(), everyone,
                      {} if tcp_bytes is None and bytes_reason else tcp_bytes, plain, heads)
    data = collections.OrderedDict(sockets=rows if json_rows else rows.dicts())
    bytes_known = None if tcp_bytes is None and not bytes_reason else tcp_bytes is not None
    return _socket_notes(data, owners, bytes_known, bytes_reason, skipped, missing)


def _socket_notes(data, owners, bytes_known, bytes_reason, skipped, missing):
    """The keys after "sockets": what is known of owners and bytes, what was skipped.
    bytes_known None: a tab without bytes (udp, raw, icmp)."""
    everyone = owners.everyone
    data["owned_known"] = owners.known
    if not owners.known:
        data["owned_reason"] = owners.reason
    data["owners_known"] = everyone.known
    if not everyone.known:
        data["owners_reason"] = everyone.reason()
    if bytes_known is not None:
        data["bytes_known"] = bytes_known
        if not bytes_known:
            data["bytes_reason"] = bytes_reason
    data["skipped_lines"] = skipped
    data["files_missing"] = missing
    return data


def _socket_json_template(drops):
    """'{"proto": "%s", "local_port": %s, ...}' in SOCKET_KEYS order, as json.dumps writes it."""
    quoted = ("proto", "local_address", "remote_address", "state")
    parts = []
    for key in SOCKET_KEYS:
        if key == "drops" and not drops:
            parts.append('"drops": null')
        else:
            parts.append('"%s": %s' % (key, '"%s"' if key in quoted else "%s"))
    return "{" + ", ".join(parts) + "%s}"     # the owner (and bytes) as JSON text


def _socket_json_head(drops):
    """The template above up to "owned" (its value and the rest come later)."""
    full = _socket_json_template(drops)
    return full[:full.index('"owned": ')]


SOCKET_HEAD = _socket_json_head(drops=True)
SOCKET_HEAD_NO_DROPS = _socket_json_head(drops=False)


def socket_json_heads(records, plain=False):
    """Each row's JSON text up to "owned" (SocketRows.json_text ends them); None
    when a text field is not JSON-safe as it is (then json.dumps writes the rows)."""
    if not plain and not SocketRows(records, frozenset()).plain_strings():
        return None
    full, no_drops = SOCKET_HEAD, SOCKET_HEAD_NO_DROPS
    return [full % s if s[14] is not None else no_drops % s[:14] for s in records]


# Text json.dumps writes as it is (ensure_ascii): no quote, backslash, control or non-ASCII.
_PLAIN_JSON_TEXT = re.compile(r'[^"\\\x00-\x1f\x7f-\U0010ffff]*\Z')


class SocketRows(object):
    """Socket records and the inodes PID holds: rows as dicts, or as JSON text.

    At 20,000 sockets, building the dicts and json.dumps of them cost over
    twice formatting the JSON text straight from the tuples.  The template
    needs strings that JSON writes as they are: proto, state and addresses
    (inet_ntop) are, and json_text() checks every distinct one.
    """

    TEMPLATE = _socket_json_template(drops=True)
    TEMPLATE_NO_DROPS = _socket_json_template(drops=False)

    def __init__(self, records, held, owners=None, tcp_bytes=None, plain=False, heads=None):
        self.records = records
        self.plain = plain              # known JSON-safe (rows of a sock_diag dump)
        self.heads = heads              # socket_json_heads(records), or None
        self.held = held
        self.owners = owners            # SocketOwners, or None: no owner keys
        self.tcp_bytes = tcp_bytes      # {inode: (sent, received)}, or None: no bytes keys

    def _extra(self, sock):
        extra = collections.OrderedDict()
        if self.owners is not None:
            found = self.owners.owner(sock.inode) if sock.inode else None
            extra["pid"], extra["process"], extra["holders"] = found or (None, None, None)
        if self.tcp_bytes is not None:
            counts = self.tcp_bytes.get(sock.inode) if sock.inode else None
            extra["bytes_sent"], extra["bytes_received"] = counts or (None, None)
        return extra

    def dicts(self):
        held, keys = self.held, SOCKET_KEYS
        if self.owners is None and self.tcp_bytes is None:
            return [dict(zip(keys, s + (s.inode in held,))) for s in self.records]
        out = []
        for s in self.records:
            row = dict(zip(keys, s + (s.inode in held,)))
            row.update(self._extra(s))
            out.append(row)
        return out

    def _extra_json(self):
        """inode -> the JSON text after "owned" (owner, bytes), and the text for the rest."""
        inodes = set(s.inode for s in self.records) - {0}
        default = ""
        texts = dict.fromkeys(inodes, "")
        if self.owners is not None:
            default = NO_OWNER_JSON
            known = owners_json(self.owners, inodes)
            texts = {i: known.get(i, NO_OWNER_JSON) for i in inodes}
        if self.tcp_bytes is not None:
            for inode in inodes:
                counts = self.tcp_bytes.get(inode)
                texts[inode] += (', "bytes_sent": %d, "bytes_received": %d' % counts
                                 if counts else NO_BYTES_JSON)
            default += NO_BYTES_JSON
        return texts, default

    def plain_strings(self):
        """True when every text field is JSON-safe as it is (no quote, backslash, control)."""
        texts = set()
        for field in (0, 1, 3, 5):      # proto, local_address, remote_address, state
            texts.update(s[field] for s in self.records)
        return all(_PLAIN_JSON_TEXT.match(t) for t in texts)

    def json_text(self):
        """The JSON array json.dumps would write for dicts()."""
        if self.heads is None and not self.plain and not self.plain_strings():
            return json.dumps(self.dicts(), check_circular=False)
        held, full, no_drops = self.held, self.TEMPLATE, self.TEMPLATE_NO_DROPS
        flag = ("false", "true")
        extra, default = self._extra_json()
        if self.heads is not None:
            rows = ['%s"owned": %s%s}' % (head, flag[s.inode in held],
                                          extra.get(s.inode, default))
                    for head, s in zip(self.heads, self.records)]
        else:
            rows = [full % (s + (flag[s.inode in held], extra.get(s.inode, default)))
                    if s[14] is not None
                    else no_drops % (s[:14] + (flag[s.inode in held],
                                               extra.get(s.inode, default)))
                    for s in self.records]
        if not rows:
            return "[]"
        # Brackets on the end rows: one copy of the megabytes, not three.
        rows[0] = "[" + rows[0]
        rows[-1] += "]"
        return ", ".join(rows)


class FastSocketRows(object):
    """The tcp tab's rows for --json as the C scanner writes them (fs_diag_json):
    the same text as SocketRows.json_text, from a dump parsed in C (FastDiagRows).

    At 20,000 sockets (medians on a slow 2-core VM, docs/conns.md): the dump and
    its parse 178 ms in Python, 54 ms in C (the kernel's walk ~45 of them); the
    rows' text 139 ms against 28.  A lone `--once --tab tcp --json` went from 1.29
    to 0.94 of `ss -tanp`'s time.  The Python twin stays for everything else (the
    session's dicts, no C scanner) and the tests hold both to the same bytes."""

    def __init__(self, module, diag, ownership, pid):
        self.module = module
        self.diag = diag                # FastDiagRows
        self.ownership = ownership      # Ownership: its fd scans end before json_text
        self.pid = pid

    def json_text(self):
        ffi, lib = self.module.ffi, self.module.lib
        everyone = self.ownership.everyone
        inodes, ends, pids, comms, comm_at = array.array("Q"), [], [], [], []
        at = 0
        for pid, (_size, held) in everyone.fds.items():
            if held:
                inodes.extend(held)
                ends.append(len(inodes))
                pids.append(pid)
                comm = json.dumps(everyone.comms.get(pid))      # ASCII: ensure_ascii
                comms.append(comm)
                comm_at.append(at)
                at += len(comm) + 1
        comm_text = "\0".join(comms).encode("ascii") + b"\0"
        bound = lib.fs_diag_json_bound(self.diag.count, max(map(len, comms), default=0))
        out = ffi.new("char[]", bound)
        length = lib.fs_diag_json(
            self.diag.rows, self.diag.count, ffi.from_buffer("uint64_t[]", inodes),
            ends, pids, len(pids), comm_text, comm_at, self.pid, out)
        if length < 0:
            raise MemoryError("no memory for the socket rows")
        return ffi.unpack(out, length).decode("ascii")


def _read_parsed(procfs, pid, name, parser, data, empty):
    """Read and parse one net file, noting a missing file and skipped lines in `data`."""
    text = procfs.net_read(pid, name)
    if text is None:
        data.setdefault("files_missing", []).append(name)
        return empty
    parsed = parser(text)
    data["skipped_lines"] = data.get("skipped_lines", 0) + parsed.skipped
    return parsed


def collect_icmp(procfs, pid, owners):
    data = collect_sockets(procfs, pid, "icmp", owners)
    snmp = _read_parsed(procfs, pid, "snmp", parse_snmp, data, Sections())
    snmp6 = _read_parsed(procfs, pid, "snmp6", parse_snmp6, data, Sections())
    counters = collections.OrderedDict()
    for section in ("Icmp", "IcmpMsg"):
        counters[section] = snmp.get(section, collections.OrderedDict())
    if "Icmp6" in snmp6:
        counters["Icmp6"] = snmp6["Icmp6"]
    data["counters"] = counters
    return data


def collect_arp(procfs, pid):
    data = collections.OrderedDict()
    entries = _read_parsed(procfs, pid, "arp", parse_arp, data, Records())
    data["entries"] = [dict(e._asdict(), state=arp_state(e.flags)) for e in entries]
    rows = _read_parsed(procfs, pid, "stat/arp_cache", parse_hex_table, data, Records())
    data["stats"] = sum_arp_cache(rows)
    data["stats_available"] = bool(rows)
    if not rows:
        data["stats_note"] = ("stat/arp_cache exists only in the host network "
                              "namespace")
    return data


def collect_traffic(procfs, pid):
    data = collections.OrderedDict()
    data["interfaces"] = list(_read_parsed(procfs, pid, "dev", parse_dev, data, Records()))
    return add_process_traffic(procfs, pid, data)


def collect_stats(procfs, pid):
    """netstat's sections, {SECTION: {COUNTER: int}} as the kernel names them, then
    skipped_lines and files_missing as in every tab (lower case: no section is so named)."""
    notes = collections.OrderedDict()
    data = collections.OrderedDict(
        _read_parsed(procfs, pid, "netstat", parse_snmp, notes, Sections()))
    return _read_notes_last(data, notes)


def collect_routing(procfs, pid):
    data = collections.OrderedDict()
    data["ipv4"] = list(_read_parsed(procfs, pid, "route", parse_route, data, Records()))
    data["ipv6"] = list(_read_parsed(procfs, pid, "ipv6_route", parse_ipv6_route,
                                     data, Records()))
    return data


def collect_analysis(procfs, pid):
    data = collections.OrderedDict()
    data["snmp"] = _read_parsed(procfs, pid, "snmp", parse_snmp, data, Sections())
    data["snmp6"] = _read_parsed(procfs, pid, "snmp6", parse_snmp6, data, Sections())
    data["netstat"] = _read_parsed(procfs, pid, "netstat", parse_snmp, data, Sections())
    data["softnet"] = list(_read_parsed(procfs, pid, "softnet_stat", parse_softnet,
                                        data, Records()))
    data["softnet_note"] = "softnet_stat is global: per CPU, the same in every namespace"
    data["interfaces"] = list(_read_parsed(procfs, pid, "dev", parse_dev, data, Records()))
    rows = _read_parsed(procfs, pid, "stat/arp_cache", parse_hex_table, data, Records())
    data["arp_cache"] = sum_arp_cache(rows)
    data["findings"] = findings(data)
    return data


def _read_notes_last(data, notes=None):
    """data with skipped_lines and files_missing (from notes, or its own) as its last keys,
    present even when nothing was skipped or missing: every net tab has both."""
    notes = data if notes is None else notes
    skipped, missing = notes.pop("skipped_lines", 0), notes.pop("files_missing", [])
    data["skipped_lines"], data["files_missing"] = skipped, missing
    return data


def collect_tab(procfs, pid, tab, owners=None):
    """One tab's data for PID, as a JSON-ready dict (the same dict the views draw)."""
    if tab in SOCKET_FILES:
        if owners is None:
            owners = Ownership(procfs, pid)
        if tab == "icmp":
            return collect_icmp(procfs, pid, owners)
        return collect_sockets(procfs, pid, tab, owners)
    if tab == "procs":
        return collect_procs(procfs, pid)
    if tab == "stats":
        return collect_stats(procfs, pid)
    return _read_notes_last({
        "arp": collect_arp, "traffic": collect_traffic,
        "routing": collect_routing, "analysis": collect_analysis,
    }[tab](procfs, pid))


def snapshot(procfs, pid, tabs, json_rows=False):
    """The --json object for PID and the given tabs (the README's JSON table).

    json_rows: tcp/udp/raw rows stay SocketRows, for snapshot_json only.
    """
    comm = procfs.check_net(pid)
    out = collections.OrderedDict()
    out["pid"] = pid
    out["comm"] = comm
    out["netns"] = procfs.netns(pid) or "unknown"
    if out["netns"] == "unknown":
        out["netns_reason"] = procfs.netns_reason(pid) or "it changed while read"
    out["time"] = time.time()
    try:
        owners = None
        if any(t in SOCKET_FILES for t in tabs):
            owners = Ownership(procfs, pid)     # the fd scan starts now, in a thread
        out["tabs"] = collections.OrderedDict()
        for tab in tabs:
            if json_rows and tab in ("tcp", "udp", "raw"):
                out["tabs"][tab] = collect_sockets(procfs, pid, tab, owners, json_rows=True)
            else:
                out["tabs"][tab] = collect_tab(procfs, pid, tab, owners)
    except (ProcessGone, ReadError) as err:
        # fd/ and net/ too can vanish mid-snapshot
        if os.path.exists(procfs.path(pid)) and not isinstance(err, ZombieError):
            raise
        raise ProcessGone("process %d exited while being read" % pid) from err
    return out


def snapshot_json(snap):
    """json.dumps(snap), with SocketRows written from their template.

    json.dumps has no way to take text made elsewhere: each SocketRows goes in as a
    marker string, then its text replaces the marker.  Gain: a 20,000-socket
    `--once --tab tcp --json` takes 300 ms instead of 265 wall, 1.20x (dicts and one
    json.dumps; bench/bench_net.py's set-up, 25 alternating rounds, Python 3.11).
    """
    texts = {}

    def mark(obj):
        if not isinstance(obj, (SocketRows, FastSocketRows)):
            raise TypeError("not JSON serializable: %r" % type(obj))
        marker = "socket-rows-%s-%d" % (nonce, len(texts))
        texts[json.dumps(marker)] = obj
        return marker

    nonce = os.urandom(8).hex()         # no text from /proc can guess it
    # No cycles are possible in a snapshot: skip the encoder's id() bookkeeping.
    text = json.dumps(snap, check_circular=False, default=mark)
    parts = []
    for marker, rows in texts.items():
        head, found, text = text.partition(marker)
        if not found:
            raise ValueError("lost a socket-rows marker")
        parts.extend((head, rows.json_text()))
    parts.append(text)
    return "".join(parts)


# ---------------------------------------------------------------------------
# Socket owners and TCP bytes: collection
# ---------------------------------------------------------------------------
# Owns: which process holds each socket inode (the fd links of every process
# netsnoop may read, as `ss -p` finds them), the sock_diag dumps of a network
# namespace (root enters another one in a thread that ends at once), and the
# cgroup id -> path map.  May call ProcFS, fd_socket_inodes, the sock_diag
# parsers.  docs/conns.md says why each piece is as it is.

CLONE_NEWNET = 0x40000000
DIAG_RECV = 1 << 17         # a dump's reply comes in chunks of at most ~32 KiB
DIAG_SOCKETS_KEPT = 8       # netlink sockets kept open, one per namespace seen
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_REWALK = 10.0        # an unknown cgroup id walks the tree again at most this often


class SocketOwners(object):
    """inode -> the processes holding it, from the fd links of every process
    netsnoop may read (all of them as root, its own user's otherwise).

    scan(changed_only=True) rescans only the processes that are new or whose fd
    directory changed size (on Linux 6.2+ the size is the count of open fds), so
    the connection feed never walks every fd of every process per event.
    """

    def __init__(self, procfs):
        self.procfs = procfs
        self.fds = {}           # pid -> (fd directory size, frozenset of socket inodes)
        self.refused = 0        # processes whose fds could not be read
        self.first = {}         # inode -> lowest pid holding it
        self.multi = {}         # inode -> number of holders, when more than one
        self.comms = {}         # pid -> comm, for the pids in first

    def scan(self, given=None, changed_only=False, pids=None):
        """Walk /proc/N/fd.  given: {pid: inodes} already read (PID's own scan);
        pids: only these processes (the feed's: those of its network namespace)."""
        fds, refused = {}, 0
        if pids is None:
            try:
                pids = PythonBackend().list_pids(self.procfs.root)
            except OSError:
                pids, refused = [], -1          # no listing: every owner unknown
        for pid in pids:
            if given and pid in given:
                fds[pid] = (-1, frozenset(given[pid]))
                continue
            found = self._scan_pid(pid, self.fds.get(pid) if changed_only else None)
            if found is False:
                refused += 1
            elif found is not None:
                fds[pid] = found
        self.fds, self.refused = fds, refused
        self._index()
        return self

    def _scan_pid(self, pid, old):
        """-> (size, inodes); None when gone; False when refused."""
        try:
            dir_fd = os.open(self.procfs.path(pid, "fd"),
                             os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            return False if err.errno in (errno.EACCES, errno.EPERM) else None
        try:
            size = os.fstat(dir_fd).st_size
            if old is not None and old[0] == size and size > 0:
                return old
            return size, frozenset(fd_socket_inodes(dir_fd))
        except OSError as err:
            return False if err.errno in (errno.EACCES, errno.EPERM) else None
        finally:
            os.close(dir_fd)

    def _index(self):
        first, multi, seen = {}, {}, set()
        # highest pid first, so the lowest one is written last and stays
        for pid in sorted(self.fds, reverse=True):
            inodes = self.fds[pid][1]
            if not inodes:
                continue
            for inode in inodes & seen:
                multi[inode] = multi.get(inode, 1) + 1
            seen |= inodes
            first.update(dict.fromkeys(inodes, pid))
        first.pop(0, None)
        comms = {}
        for pid in set(first.values()):
            comms[pid] = self.comms.get(pid) or self._comm(pid)
        self.first, self.multi, self.comms = first, multi, comms

    def rescan(self, pids):
        """Read the fds of these processes again, whatever their size; the index is
        patched (not rebuilt: cheap at 20,000 sockets).  -> True if any changed."""
        changed = False
        for pid in pids:
            old = self.fds.get(pid, (0, frozenset()))[1]
            found = self._scan_pid(pid, None)
            new = found[1] if found else frozenset()
            if found:
                self.fds[pid] = found
            else:
                self.fds.pop(pid, None)
            if new == old:
                continue
            changed = True
            for inode in old - new:
                if self.first.get(inode) == pid:
                    del self.first[inode]
            for inode in new - old:
                if inode and (inode not in self.first or self.first[inode] > pid):
                    self.first[inode] = pid
            if new and pid not in self.comms:
                self.comms[pid] = self._comm(pid)
        return changed

    def pids_of_uid(self, uid, pids):
        """Those of pids whose /proc/N belongs to uid (their effective uid)."""
        out = []
        for pid in pids:
            try:
                if os.stat(self.procfs.path(pid)).st_uid == uid:
                    out.append(pid)
            except OSError:
                continue
        return out

    def _comm(self, pid):
        try:
            return parse_stat_line(self.procfs.read(pid, "stat"))[0]
        except (OSError, ValueError):
            return None

    def owner(self, inode):
        """-> (pid, comm, holders) or None when no readable process holds it."""
        pid = self.first.get(inode)
        if pid is None:
            return None
        return pid, self.comms.get(pid), self.multi.get(inode, 1)

    @property
    def known(self):
        return self.refused == 0

    def reason(self):
        if self.refused == 0:
            return None
        if self.refused < 0:
            return "cannot list the processes in %s" % self.procfs.root
        why = ("not dumpable, or of another user namespace" if os.geteuid() == 0
               else "another user's, or not dumpable; root sees them")
        return ("the fds of %d process%s cannot be read (%s): the sockets only they "
                "hold show no owner" % (self.refused, "" if self.refused == 1 else "es", why))


def in_thread(function, *args):
    """Run function(*args) in a thread at once; -> a callable that waits for its
    result (an exception is raised in the caller).  Its CPU counts as a helper's."""
    result = []

    def run():
        started = time.thread_time()
        try:
            result.append((function(*args), None))
        except Exception as err:            # handed to the caller
            result.append((None, err))
        _count_helper_cpu(time.thread_time() - started)

    thread = threading.Thread(target=run, name="netsnoop-helper")
    thread.daemon = True                    # never keeps a failing netsnoop alive
    thread.start()

    def wait():
        thread.join()
        value, err = result[0]
        if err is not None:
            raise err
        return value
    return wait


def owners_json(owners, inodes):
    """inode -> ', "pid": N, "process": "comm", "holders": N' for the inodes given."""
    out, texts = {}, {}
    first, multi, comms = owners.first, owners.multi, owners.comms
    for inode in inodes:
        pid = first.get(inode)
        if pid is None:
            continue
        key = (pid, multi.get(inode, 1))
        text = texts.get(key)
        if text is None:
            text = texts[key] = ', "pid": %d, "process": %s, "holders": %d' % (
                pid, json.dumps(comms.get(pid)), key[1])
        out[inode] = text
    return out


NO_OWNER_JSON = ', "pid": null, "process": null, "holders": null'
NO_BYTES_JSON = ', "bytes_sent": null, "bytes_received": null'


# --- sock_diag: a namespace's sockets with uid, cookie, cgroup and tcp_info ----

_DIAG_SOCKETS = {}      # "net:[N]" -> (netlink socket in that namespace, lock)


def open_diag_socket():
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_SOCK_DIAG)


def open_diag_socket_in(ns_path):
    """A sock_diag socket of another network namespace (root).  A netlink socket
    stays in the namespace it was made in, so a thread enters the namespace,
    makes it and ends: setns changes only the calling thread, and netsnoop's
    other threads never leave their own namespace.  os.setns exists only from
    Python 3.12: libc's setns through ctypes (standard library)."""
    result = []

    def enter():
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            finally:
                os.close(fd)
            result.append(open_diag_socket())
        except Exception as err:        # handed to the caller
            result.append(err)

    thread = threading.Thread(target=enter, name="netsnoop-setns")
    thread.start()
    thread.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def diag_socket_for(procfs, pid):
    """-> ((socket, lock), None) for PID's network namespace, or (None, reason)."""
    if not procfs.is_live():
        return None, "TCP bytes come from the kernel (sock_diag), not from a --proc tree"
    theirs = procfs.netns(pid)
    if theirs is None and shares_netns(procfs, pid):
        theirs = procfs.netns("self")
    if theirs is None:
        return None, ("cannot read /proc/%d/ns/net (another user's process) and its "
                      "network namespace is not netsnoop's: TCP bytes need the same "
                      "namespace, or root" % pid)
    entry = _DIAG_SOCKETS.get(theirs)
    if entry is not None:
        return entry, None
    try:
        if theirs == procfs.netns("self"):
            sock = open_diag_socket()
        elif os.geteuid() == 0:
            sock = open_diag_socket_in(procfs.path(pid, "ns", "net"))
        else:
            return None, ("TCP bytes need PID in netsnoop's own network namespace, or "
                          "root: sock_diag answers only for the caller's namespace")
    except OSError as err:
        return None, "cannot open sock_diag in PID's network namespace: %s" % (
            err.strerror or err)
    if len(_DIAG_SOCKETS) >= DIAG_SOCKETS_KEPT:
        close_diag_sockets()
    entry = _DIAG_SOCKETS[theirs] = (sock, threading.Lock())
    return entry, None


def shares_netns(procfs, pid):
    """Is PID in netsnoop's network namespace, when its ns/net link cannot be read
    (another user's process)?  Each namespace has its own /proc/net entries, so
    /proc/PID/net/tcp is the very inode of /proc/self/net/tcp exactly then."""
    try:
        return os.stat(procfs.path(pid, "net", "tcp")).st_ino == \
            os.stat(procfs.path("self", "net", "tcp")).st_ino
    except OSError:
        return False


def close_diag_sockets():
    for sock, _ in _DIAG_SOCKETS.values():
        sock.close()
    _DIAG_SOCKETS.clear()


_DIAG_SEQ = [0]


def _next_diag_seq():
    _DIAG_SEQ[0] = _DIAG_SEQ[0] % 0x7FFFFFFF + 1
    return _DIAG_SEQ[0]


def _raise_dump_error(family, err):
    """The kernel's error for a family's dump, as OSError; none for IPv6 where the
    kernel has no IPv6 (ENOENT, EAFNOSUPPORT): that dump is simply empty."""
    if err and not (family == socket.AF_INET6 and err in (errno.ENOENT, errno.EAFNOSUPPORT)):
        raise OSError(err, os.strerror(err))


def diag_dump(entry, states=DIAG_LIVE_STATES, families=(socket.AF_INET, socket.AF_INET6)):
    """Every TCP socket of the families in the states of the bitmask -> Records of
    DiagSocket; the kernel filters the states.  OSError on failure.  Each family
    costs a walk of the kernel's whole TCP hash (~2 ms here, sockets or not)."""
    sock, lock = entry
    out = Records()
    with lock:
        for family in families:
            seq = _next_diag_seq()
            sock.send(inet_diag_request(family, states, seq))
            done = False
            while not done:
                part, done, err = parse_diag_dump(sock.recv(DIAG_RECV), seq)
                out.extend(part)
                out.skipped += part.skipped
            _raise_dump_error(family, err)
    return out


def diag_lookup(entry, socks):
    """The sockets as they are now, looked up one by one -> {cookie: DiagSocket};
    a socket gone since is missing from it."""
    sock, lock = entry
    found = {}
    with lock:
        for wanted in socks:
            seq = _next_diag_seq()
            sock.send(inet_diag_lookup(wanted, seq))
            while True:
                part, done, _err = parse_diag_dump(sock.recv(DIAG_RECV), seq)
                for rec in part:
                    found[rec.cookie] = rec
                if part or done:        # one message, or the error (ENOENT: gone)
                    break
    return found


def diag_in_namespace(procfs, pid, dump):
    """dump(entry) on PID's namespace's sock_diag socket -> (its result, None), or
    (None, reason) when that socket cannot be had or the dump fails."""
    entry, reason = diag_socket_for(procfs, pid)
    if entry is None:
        return None, reason
    try:
        return dump(entry), None
    except OSError as err:
        return None, "sock_diag dump failed: %s" % (err.strerror or err)


def tcp_diag(procfs, pid):
    """-> (Records of DiagSocket, None) or (None, reason): PID's namespace's TCP sockets."""
    return diag_in_namespace(procfs, pid, diag_dump)


DIAG_ROW_STATES = DIAG_LIVE_STATES | (1 << TCP_TIME_WAIT)    # what /proc/net/tcp lists


def _dump_rows(entry, read_chunk):
    """Ask for each family's TCP sockets in every state /proc/net/tcp lists, and hand
    each chunk of the reply to read_chunk(sock, seq) -> (finished, errno or 0)."""
    sock, lock = entry
    with lock:
        for family in (socket.AF_INET, socket.AF_INET6):
            seq = _next_diag_seq()
            sock.send(inet_diag_request(family, DIAG_ROW_STATES, seq))
            done, err = False, 0
            while not done:
                done, err = read_chunk(sock, seq)
            _raise_dump_error(family, err)


def diag_rows(entry):
    """Both families' TCP sockets, every state /proc/net/tcp lists -> (Records of
    Socket, {inode: (bytes_acked, bytes_received)}, damaged messages skipped)."""
    rows, tcp_bytes, names, skipped = Records(), {}, {}, [0]

    def read_chunk(sock, seq):
        # a cache per family (per request): 0.0.0.0 and :: are the same 16 raw bytes
        cache = names.setdefault(seq, {})
        done, err, bad = parse_diag_rows(sock.recv(DIAG_RECV), seq, rows, tcp_bytes, cache)
        skipped[0] += bad
        return done, err
    _dump_rows(entry, read_chunk)
    return rows, tcp_bytes, skipped[0]


class FastDiagRows(object):
    """A dump's rows parsed by the C scanner (fs_diag_parse), kept as C structs:
    no Python object per socket (FastSocketRows writes them as JSON)."""

    def __init__(self, module):
        self.module = module
        self.rows = module.ffi.new("struct fs_diag_row[]", 1024)
        self.cap, self.count, self.skipped = 1024, 0, 0

    def add(self, data, length, seq):
        """Parse a chunk (data[:length]) -> (finished, errno or 0)."""
        ffi, lib = self.module.ffi, self.module.lib
        # no message of a row is shorter than 88 bytes: room for length // 88 more
        need = self.count + length // 88 + 1
        if need > self.cap:
            cap = max(need, 2 * self.cap)
            rows = ffi.new("struct fs_diag_row[]", cap)
            ffi.memmove(rows, self.rows, self.count * ffi.sizeof("struct fs_diag_row"))
            self.rows, self.cap = rows, cap
        count, err, skipped = ffi.new("int *", self.count), ffi.new("int *"), ffi.new("int *")
        done = lib.fs_diag_parse(ffi.from_buffer(data), length, seq, self.rows, self.cap,
                                 count, err, skipped)
        self.count = count[0]
        self.skipped += skipped[0]
        if done < 0:
            raise OSError(-done, os.strerror(-done))
        return bool(done), err[0]


def fast_diag_rows(module, entry):
    """diag_rows parsed in C -> FastDiagRows (for --json: see FastSocketRows)."""
    out = FastDiagRows(module)
    chunk = bytearray(DIAG_RECV)
    _dump_rows(entry, lambda sock, seq: out.add(chunk, sock.recv_into(chunk), seq))
    return out


def tcp_diag_rows(procfs, pid):
    """-> ((rows, tcp_bytes, skipped), None), or (None, reason): the tcp tab then
    reads /proc/PID/net/tcp[6] and has no bytes."""
    return diag_in_namespace(procfs, pid, diag_rows)


# --- cgroups: id -> path ------------------------------------------------------

class CgroupNames(object):
    """cgroup id (as sock_diag gives it) -> path under /sys/fs/cgroup.

    On cgroup2 the id is the inode number of the cgroup's directory, so one walk
    of the tree (its readdir gives the inodes, no stat) maps them all; an id
    not found walks again, at most every CGROUP_REWALK seconds."""

    def __init__(self, root=CGROUP_ROOT):
        self.root = root
        self.paths = None
        self.walked = None

    def _walk(self):
        paths = {}
        try:
            paths[os.stat(self.root).st_ino] = "/"
        except OSError:
            return paths
        todo = [(self.root, "")]
        while todo:
            top, rel = todo.pop()
            try:
                entries = list(os.scandir(top))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        path = rel + "/" + entry.name
                        paths[entry.inode()] = path
                        todo.append((entry.path, path))
                except OSError:
                    continue
        return paths

    def path(self, cgroup_id):
        if cgroup_id is None:
            return None
        now = time.monotonic()
        if self.paths is None or (cgroup_id not in self.paths
                                  and now - self.walked >= CGROUP_REWALK):
            self.paths, self.walked = self._walk(), now
        return self.paths.get(cgroup_id)


_CGROUPS = CgroupNames()


# --- the traffic tab's processes and cgroups ---------------------------------

class ProcessTraffic(list):
    """[{pid, comm, uid, cgroup, sockets, bytes_sent, bytes_received}] plus, unseen
    by JSON, .sockets: {cookie: (row key, sent, received)} for the session's rates."""
    sockets = None


def traffic_by_owner(diag, owners, cgroups=_CGROUPS):
    """TCP sockets summed per owning process (per uid under pid null when the
    owner is unknown) -> (ProcessTraffic, [per cgroup path]), busiest first."""
    rows, groups = collections.OrderedDict(), collections.OrderedDict()
    per_socket = {}
    for sock in diag:
        if sock.bytes_sent is None:
            continue
        found = owners.owner(sock.inode) if sock.inode else None
        key = ("pid", found[0]) if found else ("uid", sock.uid)
        cgroup = cgroups.path(sock.cgroup)
        row = rows.get(key)
        if row is None:
            row = rows[key] = collections.OrderedDict(
                (("pid", found[0] if found else None), ("comm", found[1] if found else None),
                 ("uid", sock.uid), ("cgroup", cgroup), ("sockets", 0),
                 ("bytes_sent", 0), ("bytes_received", 0)))
        group = groups.get(cgroup)
        if group is None:
            group = groups[cgroup] = collections.OrderedDict(
                (("cgroup", cgroup), ("sockets", 0), ("bytes_sent", 0),
                 ("bytes_received", 0)))
        for out in (row, group):
            out["sockets"] += 1
            out["bytes_sent"] += sock.bytes_sent
            out["bytes_received"] += sock.bytes_received
        per_socket[sock.cookie] = (key, cgroup, sock.bytes_sent, sock.bytes_received)

    def busiest(r):
        return -(r["bytes_sent"] + r["bytes_received"])

    processes = ProcessTraffic(sorted(rows.values(), key=busiest))
    processes.sockets = per_socket
    return processes, sorted(groups.values(), key=busiest)


def add_process_traffic(procfs, pid, data, owners=None):
    """The traffic tab's `processes` and `cgroups` (or bytes_known false + reason).

    owners: a SocketOwners the caller keeps up to date (the dashboard's sampler),
    used as it is; else every process's fds are read now."""
    diag, reason = tcp_diag(procfs, pid)
    data["bytes_known"] = diag is not None
    if diag is None:
        data["bytes_reason"] = reason
        data["processes"], data["cgroups"] = [], []
        return data
    if owners is None:
        owners = SocketOwners(procfs).scan()
    data["processes"], data["cgroups"] = traffic_by_owner(diag, owners)
    data["owners_known"] = owners.known
    if not owners.known:
        data["owners_reason"] = owners.reason()
    return data


# ---------------------------------------------------------------------------
# Findings: plain-language anomalies from the counters
# ---------------------------------------------------------------------------

# Thresholds (documented in the README).  Ratios need a minimum of traffic
# so that three segments on an idle box do not raise an alarm.
RETRANS_WARN, RETRANS_ALERT, RETRANS_MIN_SEGS = 0.01, 0.05, 1000
IFACE_DROP_WARN = 0.01


def _delta(cur, prev, *path):
    """Counter at `path` in cur, minus prev's when prev is given (never negative).

    A counter prev lacks (file missing at the last refresh) has no baseline:
    its whole value is not "since the last refresh", so it counts 0.
    """
    def get(tree):
        for key in path:
            if not isinstance(tree, dict):
                return None
            tree = tree.get(key)
        return tree if isinstance(tree, int) else None
    value = get(cur) or 0
    if prev is not None:
        before = get(prev)
        value = 0 if before is None else max(0, value - before)
    return value


def _udp_rules():
    for group, sec in (("snmp", "Udp"), ("snmp", "UdpLite"),
                       ("snmp6", "Udp6"), ("snmp6", "UdpLite6")):
        for counter, what in (("RcvbufErrors", "datagrams dropped: receive buffer full"),
                              ("SndbufErrors", "datagrams dropped: send buffer full"),
                              ("InErrors", "datagrams received in error"),
                              ("MemErrors", "datagrams dropped for lack of memory")):
            yield group, sec, counter, sec + " " + what + ": {n}", "warn", None
        yield (group, sec, "NoPorts", sec + " datagrams to ports nobody listens on: {n}",
               "info", None)


def _ip_rules():
    for counter, what, severity in (
            ("InHdrErrors", "packets with header errors", "warn"),
            ("InAddrErrors", "packets with invalid addresses", "info"),
            ("InDiscards", "packets discarded on input", "warn"),
            ("OutDiscards", "packets discarded on output", "warn"),
            ("ReasmFails", "reassembly failures", "warn")):
        yield "snmp", "Ip", counter, "IP " + what + ": {n}", severity, None
        yield "snmp6", "Ip6", counter, "IPv6 " + what + ": {n}", severity, None


# Counters that are an anomaly whenever they move: (file group, section,
# counter, text with the count as {n} or as {times} ("1 time", "5 times"),
# severity, count from which it is an alert or None).  Listed in the order
# findings are reported.
COUNTER_RULES = (
    ("netstat", "TcpExt", "ListenOverflows", "accept queue overflowed {times}", "warn", 100),
    ("netstat", "TcpExt", "ListenDrops", "listening sockets dropped SYNs {times}", "warn", 100),
    ("netstat", "TcpExt", "TCPAbortOnMemory",
     "TCP connections aborted for lack of memory: {n}", "warn", None),
    ("netstat", "TcpExt", "TCPBacklogDrop",
     "TCP segments dropped from a full socket backlog: {n}", "warn", None),
    ("netstat", "TcpExt", "PruneCalled",
     "TCP receive queues pruned under memory pressure: {n}", "warn", None),
    ("snmp", "Tcp", "InErrs", "TCP segments received in error: {n}", "warn", None),
    ("snmp", "Tcp", "InCsumErrors", "TCP segments with bad checksums: {n}", "warn", None),
) + tuple(_udp_rules()) + tuple(_ip_rules())

ARP_RULES = (
    ("arp_cache", None, "res_failed", "ARP resolutions failed: {n}", "info", None),
    ("arp_cache", None, "unresolved_discards",
     "packets discarded waiting for ARP: {n}", "warn", None),
    ("arp_cache", None, "table_fulls", "times the ARP table was full: {n}", "alert", None),
)


def findings(cur, prev=None):
    """Analysis data (snmp, netstat, softnet, interfaces, arp_cache) -> [{severity, text}].

    With `prev`, counters are compared as deltas since that snapshot.
    """
    since = " since the last refresh" if prev is not None else " since boot"
    found = _retransmit_findings(cur, prev)
    found += _counter_findings(cur, prev, COUNTER_RULES)
    found += _softnet_findings(cur, prev)
    found += _interface_findings(cur, prev)
    found += _counter_findings(cur, prev, ARP_RULES)
    if not found:
        found = [("info", "no anomalies in the counters")]
    return [collections.OrderedDict(severity=severity, text=text + since)
            for severity, text in found]


def _retransmit_findings(cur, prev):
    out_segs = _delta(cur, prev, "snmp", "Tcp", "OutSegs")
    retrans = _delta(cur, prev, "snmp", "Tcp", "RetransSegs")
    min_segs = RETRANS_MIN_SEGS if prev is None else 100
    if out_segs < min_segs or not retrans:
        return []
    ratio = float(retrans) / out_segs
    if ratio < RETRANS_WARN:
        return []
    return [("alert" if ratio >= RETRANS_ALERT else "warn",
             "TCP retransmitted %.1f%% of segments (%d of %d)"
             % (100 * ratio, retrans, out_segs))]


def _counter_findings(cur, prev, rules):
    out = []
    for group, section, counter, text, severity, alert_at in rules:
        path = (group, section, counter) if section else (group, counter)
        n = _delta(cur, prev, *path)
        if n:
            if alert_at is not None and n >= alert_at:
                severity = "alert"
            text = text.format(n=n, times=plural(n, "time"))
            out.append((severity, "%s (%s %s)" % (text, section or group, counter)))
    return out


def _softnet_findings(cur, prev):
    rows = list(_pairs(cur, prev, "softnet", "cpu"))
    dropped = sum(_delta(c, p, "dropped") for c, p in rows)
    squeezed = sum(_delta(c, p, "time_squeeze") for c, p in rows)
    out = []
    if dropped:
        out.append(("alert", "softnet backlog full: %s dropped (softnet_stat "
                    "dropped; raise net.core.netdev_max_backlog)" % plural(dropped, "packet")))
    if squeezed:
        out.append(("info", "softirq ran out of budget %s (softnet_stat "
                    "time_squeeze; net.core.netdev_budget)" % plural(squeezed, "time")))
    return out


def _interface_findings(cur, prev):
    out = []
    for c, p in _pairs(cur, prev, "interfaces", "name"):
        if p is not None and any(c.get(k, 0) < p.get(k, 0) for k in DEV_FIELDS):
            continue        # recreated since the last refresh: no baseline for the ratio
        errs = _delta(c, p, "rx_errs") + _delta(c, p, "tx_errs")
        drops = _delta(c, p, "rx_drop") + _delta(c, p, "tx_drop")
        pkts = _delta(c, p, "rx_packets") + _delta(c, p, "tx_packets")
        name = c.get("name")        # raw like every string in the data; the views escape it
        if errs:
            out.append(("warn", "interface %s: %s (rx_errs+tx_errs)"
                        % (name, plural(errs, "error"))))
        if drops:
            ratio = float(drops) / max(pkts, 1)
            out.append(("warn" if ratio >= IFACE_DROP_WARN else "info",
                        "interface %s: %s dropped (%.2f%% of %d)"
                        % (name, plural(drops, "packet"), 100 * ratio, pkts)))
    return out


def _pairs(cur, prev, key, ident):
    """Match rows of cur[key] with prev[key] by their `ident` field."""
    before = {}
    if prev is not None:
        before = {row.get(ident): row for row in prev.get(key, [])}
    for row in cur.get(key, []):
        yield row, (before.get(row.get(ident), row) if prev is not None else None)


# ---------------------------------------------------------------------------
# Process scanner (--procs): fast (C, _fastscan) and python backends
# ---------------------------------------------------------------------------
#
# How new processes are caught without root (the why, the figures and the traps:
# docs/scanner.md):
# - the last field of /proc/loadavg is the last PID allocated; a pread() of a
#   kept-open fd costs ~0.6 us, so it is polled: every 1 ms while a newborn has
#   not exec'd yet, every 5 ms for 2 s after a birth, every 50 ms (--interval)
#   when quiet;
# - inotify IN_OPEN on /etc/ld.so.cache and the PATH directories wakes the loop
#   early: a dynamically linked program opens the cache right after execve,
#   when its new command line is already readable;
# - every PID the counter passed over is probed directly (/proc/N/stat and
#   cmdline, held open), without listing /proc; threads (exit_signal -1) are
#   skipped; a child still showing its parent's name and arguments has not
#   exec'd yet and stays under watch until it does (or for FORK_WAIT);
# - a full listing reconciles now and then, only when the counter moved;
# - a process gone before its command line was read is still reported, as a
#   partial record, when its zombie's name or its program file's open (the
#   names inotify gives) tells what it ran; an open never names a PID (which
#   lost process ran it cannot be told: "pid": null);
# - the scanner asks for a short scheduling slice, to run as soon as it wakes
#   while a build keeps both cores busy;
# - the fast backend adds a catcher thread in C that reads each newborn's new
#   command line the moment it execs; Python asks it for those gone before it
#   got a CPU (a build's millisecond programs).
# The two backends share all of this but the catcher; they differ in the
# listing and the wait (C: getdents64 and a poll loop run without the GIL).

FAST_PERIOD = 0.001     # poll period while a newborn has not exec'd yet
ACTIVE_PERIOD = 0.005   # ... for ACTIVE_FOR seconds after a birth
ACTIVE_FOR = 2.0
SLOW_PERIOD = 0.05      # when quiet (--interval overrides)
MAX_WAIT = 1.0          # longest single wait (--duration, sweeps)
STOP_CHECK = 0.25       # --procs looks at its stop flag at least this often: a signal
                        # interrupts the C wait, but Python's poll resumes after it
VISIBLE_GRACE = 0.05    # the counter moves before /proc/N appears (docs/scanner.md,
                        # "Trap: the counter runs ahead of /proc")
FORK_WAIT = 0.03        # a child that has not exec'd by then is reported as is
SWEEP_PERIOD = 0.02     # how often reported newborns are re-checked for exec
EXEC_WATCH = 0.5        # how long an exec'd newborn is watched for another exec
FORKED_WATCH = 30.0     # ... and a fork-only child (docs/scanner.md, "Trap: the late exec")
MAX_WATCHED = 1000      # cap on reported processes under watch (fds)
RECONCILE_EVERY = 1.0   # full listing at most this often, when the counter moved
MAX_SPAN = 4096         # more new PIDs than this at once: list /proc instead
STEP_EVENTS = 8192      # a step stops catching up with newborns past this many events
PF_KTHREAD = 0x00200000  # include/linux/sched.h
IN_OPEN, IN_IGNORED, IN_ISDIR = 0x20, 0x8000, 0x40000000   # include/uapi/linux/inotify.h
IN_Q_OVERFLOW = 0x4000
PROGRAM_KEEP = 1.0      # how long a program file's open waits to be claimed by a report
MAX_PROGRAMS = 512      # opens of program files kept for partial records
LOST_SLACK = 0.01       # an exec's open may be drained this long before its fork is seen
CAUGHT_SLACK = 0.5      # a catcher's reading is of a PID's newest process when taken
                        # at most this long before the counter showed the PID to Python
EXEC_SPIN = 0.0005      # after an exec's wake-up, newborns are re-read this long ...
EXEC_SPIN_STEP = 0.0001  # ... this often, for the new command line
LD_CACHE = "/etc/ld.so.cache"
WAKE_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
WAIT_TIMEOUT, WAIT_MOVED, WAIT_NOTIFY = "timeout", "moved", "notify"     # what a wait saw
WAIT_REWATCH = "rewatch"    # quiet: events dropped, one of them ended a watch

# One /proc/N/stat line, the fields the scanner uses (man 5 proc: state 3,
# ppid 4, flags 9, starttime 22, exit_signal 38, processor 39: the CPU it last ran on).
ProcStat = collections.namedtuple("ProcStat", "comm state ppid flags start exit_signal cpu")


def parse_proc_stat(data):
    """b"42 (a) b) S 1 ..." -> ProcStat(comm="a) b", state="S", ppid=1, ...); ValueError if damaged."""
    comm, rest = parse_stat_line(decode(data))
    exit_signal = int(rest[35]) if len(rest) > 35 else 0
    cpu = int(rest[36]) if len(rest) > 36 else -1
    return ProcStat(comm, rest[0], int(rest[1]), int(rest[6]), int(rest[19]), exit_signal, cpu)


def parse_cmdline(data):
    """b"ls\\0-l\\0" -> ["ls", "-l"]; b"" -> [] (kernel thread, zombie, or inside execve)."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [decode(arg) for arg in data.split(b"\0")]


def parse_status_number(status_text, name):
    """/proc/N/status -> the first number of line NAME ("Uid": the real uid,
    "Tgid": the process of a thread), or None."""
    for line in status_text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def parse_cgroup(text):
    """/proc/N/cgroup -> the cgroup v2 path ("0::/x"), else the first hierarchy's path."""
    first = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        if first is None:
            first = parts[2]
    return first


def read_proc_stat(procfs, pid):
    """/proc/PID/stat -> ProcStat, or None when the process is gone or the line damaged."""
    try:
        return parse_proc_stat(procfs.read_bytes(pid, "stat"))
    except (OSError, ValueError, IndexError):
        return None


def read_proc_cmdline(procfs, pid):
    """/proc/PID/cmdline -> [args], or None when the process is gone."""
    try:
        return parse_cmdline(procfs.read_bytes(pid, "cmdline"))
    except OSError:
        return None


def _pread_all(fd):
    """The whole content of a kept-open /proc file, regenerated (docs/scanner.md, "Trap:
    a kept-open file reads empty the second time"): one small
    pread as a rule (it runs every ms for a newborn), read_fd_all from the start
    for a long one."""
    data = os.pread(fd, 4096, 0)
    if len(data) < 4096:
        return data
    os.lseek(fd, 0, os.SEEK_SET)
    return read_fd_all(fd)


def _close(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def read_counter(fd):
    """Last-PID field of a kept-open /proc/loadavg ("0.00 0.01 0.05 1/80 4242")."""
    return int(os.pread(fd, 128, 0).rsplit(None, 1)[-1])


# --- backends: the listing and the wait ------------------------------------

_FASTSCAN = []      # [module or None, why not] once looked for


def _load_fastscan():
    """The built C scanner (_fastscan_cffi*.so beside this file, or installed) or None."""
    if not _FASTSCAN:
        import importlib.machinery
        import importlib.util
        module, reason = None, ""
        me = globals().get("__file__")
        if me and me.startswith("<"):       # "<stdin>": python3 - <netsnoop.py
            me = None
        # beside this file, or beside the file it links to (/usr/local/bin/netsnoop.py -> ...);
        # no file: only where imports look
        here = [os.path.dirname(os.path.abspath(me))] if me else []
        if me and os.path.dirname(os.path.realpath(me)) not in here:
            here.append(os.path.dirname(os.path.realpath(me)))
        # then, installed: where imports look, but never the working directory
        try:
            cwd = os.getcwd()
        except OSError:             # removed meanwhile: nothing to leave out
            cwd = None
        here += [p for p in sys.path if p and p != cwd and p not in here]
        try:
            spec = importlib.machinery.PathFinder.find_spec("_fastscan_cffi", here)
            if spec is None:
                raise ImportError("No module named '_fastscan_cffi'")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if not hasattr(module.lib, "fs_catcher_start"):     # the newest function
                raise ImportError("built from an older _fastscan.c: build it again")
        except ImportError as err:
            module, reason = None, str(err) or "not built"
        _FASTSCAN[:] = [module, reason]
    return _FASTSCAN[0], _FASTSCAN[1]


class PythonBackend(object):
    """Listing with os.scandir, waiting with select.poll / time.sleep, inotify via ctypes."""
    name = "python"
    aside_root = None       # the fast backend's wait may step aside (ProcScanner._step_aside)
    stepped_aside = False

    def __init__(self):
        self._libc = None
        self._pollers = {}

    def start_catcher(self, root, paths):
        """No catcher: in a Python thread it would wait for the GIL and run the cold
        interpreter (docs/scanner.md, "Tried and dropped")."""

    def caught(self, pid):
        return None

    def stop_catcher(self):
        pass

    def list_pids(self, root):
        pids = []
        for entry in os.scandir(root):
            name = entry.name
            if name.isdigit() and name.isascii() and entry.is_dir(follow_symlinks=False):
                pid = int(name)
                if 0 < pid <= 0x7FFFFFFF:
                    pids.append(pid)
        return pids

    def _poller(self, fd):
        poller = self._pollers.get(fd)
        if poller is None:
            poller = self._pollers[fd] = select.poll()
            poller.register(fd, select.POLLIN)
        return poller

    def wait(self, counter_fd, notify_fd, last, timeout, step, quiet=False):
        """-> (WAIT_*, counter): the same loop as fs_wait() in _fastscan.c."""
        deadline = time.monotonic() + timeout
        while True:
            cur = read_counter(counter_fd)
            if cur != last:
                return WAIT_MOVED, cur
            left = deadline - time.monotonic()
            if left <= 0:
                return WAIT_TIMEOUT, cur
            nap = min(step, left)
            if notify_fd >= 0:
                if self._poller(notify_fd).poll(max(1, int(nap * 1000 + 0.5))):
                    if not quiet or read_counter(counter_fd) != last:
                        return WAIT_NOTIFY, cur
                    if _drop_events(notify_fd):
                        return WAIT_REWATCH, cur
            else:
                time.sleep(nap)

    def _inotify(self):
        if self._libc is None:
            try:
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                if hasattr(libc, "inotify_init1") and hasattr(libc, "inotify_add_watch"):
                    self._libc = libc
                else:
                    self._libc = False
            except (OSError, AttributeError, ImportError):
                self._libc = False
        return self._libc

    def inotify_init(self):
        libc = self._inotify()
        if not libc:
            return -errno.ENOSYS
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        return fd if fd >= 0 else -1

    def inotify_add(self, fd, path, mask):
        return self._inotify().inotify_add_watch(fd, os.fsencode(path), mask)


def _drop_events(fd):
    """Quiet: read and drop the queued inotify events (fs_drop_events() in _fastscan.c)
    -> True when one ended a watch (IN_IGNORED) or events were lost (IN_Q_OVERFLOW)."""
    rewatch = False
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return rewatch
        if not data:
            return rewatch
        offset = 0
        while offset + 16 <= len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
            rewatch = rewatch or bool(mask & (IN_IGNORED | IN_Q_OVERFLOW))
            offset += 16 + size


# sched_setattr(2) by architecture (os.uname().machine); glibc has no wrapper.
SCHED_SETATTR_NR = {"x86_64": 314, "aarch64": 274, "i686": 351, "i386": 351,
                    "armv7l": 380, "riscv64": 274, "ppc64le": 355, "s390x": 345}
SHORT_SLICE_NS = 100000     # the shortest slice a fair task may ask for (0.1 ms)


def request_short_slice():
    """Ask the kernel (EEVDF, Linux >= 6.12) for a 0.1 ms slice for this thread, as any
    user may: a task with a short slice preempts a busy CPU at once when it wakes, where
    a default one may wait for the running compiler's slice to end (docs/scanner.md,
    "Real builds").  Measured gain: with two CPU hogs on 2 cores, wake-ups later than
    1 ms after an exec's inotify event fell from 42% to 33% of execs.
    Nice and policy stay as they are.  -> True when the kernel took it."""
    number = SCHED_SETATTR_NR.get(os.uname().machine)
    if number is None:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # struct sched_attr, first version (56 bytes): size, policy SCHED_OTHER, flags,
        # nice, priority, runtime (the slice), deadline, period, util_min, util_max
        attr = ctypes.create_string_buffer(struct.pack(
            "IIQiIQQQII", 56, 0, 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
            SHORT_SLICE_NS, 0, 0, 0, 0))
        return libc.syscall(number, 0, attr, 0) == 0
    except (OSError, AttributeError, ImportError, ValueError):
        return False


def _micros(seconds):
    """Seconds -> whole microseconds for a C int (clamped to 0..INT_MAX)."""
    return max(0, min(int(seconds * 1e6), 0x7FFFFFFF))


# What the catcher thread read of a newborn as it exec'd (FastBackend.caught): when
# (time.monotonic()), the owner of /proc/PID, the stat line and the raw command line.
Caught = collections.namedtuple("Caught", "t uid stat cmdline")


class FastBackend(object):
    """The C scanner: getdents64 listing, and a wait loop that runs without the GIL.
    With aside_root set, the wait steps aside from a newborn on its own CPU itself,
    as soon as it wakes (fs_step_aside()); stepped_aside then says so."""
    name = "fast"
    aside_root = None
    stepped_aside = False

    def __init__(self, module):
        self.ffi, self.lib = module.ffi, module.lib
        lib = self.lib
        self._woke = {lib.FS_TIMEOUT: WAIT_TIMEOUT, lib.FS_MOVED: WAIT_MOVED,
                      lib.FS_NOTIFY: WAIT_NOTIFY, lib.FS_REWATCH: WAIT_REWATCH,
                      # a signal: back in Python its handler runs; the caller then
                      # looks at its stop flag as after any timeout
                      lib.FS_INTERRUPTED: WAIT_TIMEOUT}
        self._cap = 4096
        self._buf = self.ffi.new("int[]", self._cap)
        self._counter = self.ffi.new("int *")
        self._aside = self.ffi.new("int *")
        self._catcher = self.ffi.NULL
        self._snapshot = self.ffi.new("struct fs_snapshot *")

    def start_catcher(self, root, paths):
        """Start the catcher thread on the /proc at root, woken by opens of paths
        (fs_catcher_start(): it reads newborns' new command lines as they exec)."""
        if not self._catcher:
            names = [os.fsencode(path) for path in paths]
            self._catcher = self.lib.fs_catcher_start(
                os.fsencode(root), b"".join(name + b"\0" for name in names), len(names))

    def caught(self, pid):
        """The catcher's newest reading of PID showing an exec -> Caught, or None."""
        if not self._catcher or not self.lib.fs_catcher_find(self._catcher, pid,
                                                              self._snapshot):
            return None
        snap = self._snapshot
        if snap.cmdline_len < 0:
            return None             # longer than the catcher's buffer: not the whole of it
        return Caught(snap.t, snap.uid, self.ffi.unpack(snap.stat, snap.stat_len),
                      self.ffi.unpack(snap.cmdline, snap.cmdline_len))

    def stop_catcher(self):
        if self._catcher:
            self.lib.fs_catcher_stop(self._catcher)
            self._catcher = self.ffi.NULL

    def list_pids(self, root):
        path = os.fsencode(root)
        while True:
            n = self.lib.fs_list_pids(path, self._buf, self._cap)
            if n < 0:
                raise OSError(-n, os.strerror(-n), root)
            if n <= self._cap:
                return list(self.ffi.unpack(self._buf, n))
            self._cap = n * 2       # /proc grew: retry with room to spare
            self._buf = self.ffi.new("int[]", self._cap)

    def wait(self, counter_fd, notify_fd, last, timeout, step, quiet=False):
        # fs_wait takes int microseconds: a step past the timeout is useless, and a
        # timeout past ~2147 s would overflow (it ends early instead: a WAIT_TIMEOUT)
        step = min(step, timeout)
        root = os.fsencode(self.aside_root) if self.aside_root else self.ffi.NULL
        got = self.lib.fs_wait(counter_fd, notify_fd, last, _micros(timeout),
                               max(1, _micros(step)), int(quiet), self._counter,
                               root, self._aside)
        if got < 0:
            raise OSError(-got, os.strerror(-got), "/proc/loadavg")
        self.stepped_aside = bool(self._aside[0])
        return self._woke[got], self._counter[0]

    def inotify_init(self):
        return self.lib.fs_inotify_init()

    def inotify_add(self, fd, path, mask):
        return self.lib.fs_inotify_add(fd, os.fsencode(path), mask)


def available_backend():
    """"fast" when the C scanner imports, else "python" (what --backend auto takes)."""
    return "fast" if _load_fastscan()[0] is not None else "python"


def make_backend(name="auto"):
    """--backend NAME -> a backend object; NetsnoopError when "fast" is asked but not built."""
    if name == "python":
        return PythonBackend()
    module, reason = _load_fastscan()
    if module is not None:
        return FastBackend(module)
    if name == "fast":
        raise NetsnoopError("the fast backend is not available (%s): build it with "
                            "python3 build_fastscan.py" % reason)
    return PythonBackend()


class Notifier(object):
    """inotify IN_OPEN on ld.so.cache and the PATH directories: an early wake-up on exec."""

    def __init__(self, backend, dirs, cache=LD_CACHE):
        self.backend = backend
        self.fd = backend.inotify_init()
        self.paths = {}          # wd -> path
        self.cache = cache
        self.cache_lost = False
        self.opens = 0           # IN_OPEN events so far: any exec of a dynamic program adds some
        self.program_opens = 0   # ... of those, opens of a file in the PATH directories
        # (path, when drained) of the files opened in the PATH directories: an exec opens
        # its program file, so a process gone before it was read may still be named
        self.programs = collections.deque(maxlen=MAX_PROGRAMS)
        self.wanted = list(dirs)
        if self.fd >= 0:
            self.rewatch()

    def rewatch(self):
        """Watch the cache and the directories, again after a quiet wait dropped the
        event that ended a watch (adding a watch that exists keeps its number)."""
        self.paths = {}
        self.cache_lost = not self.add(self.cache)
        for path in self.wanted:
            self.add(path)

    def add(self, path):
        wd = self.backend.inotify_add(self.fd, path, IN_OPEN)
        if wd >= 0:
            self.paths[wd] = path
        return wd >= 0

    def drain(self):
        """Read every queued event; ldconfig replaces the cache, so its watch is re-added."""
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            now = time.monotonic()
            offset = 0
            while offset + 16 <= len(data):
                wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + size].split(b"\0", 1)[0]
                offset += 16 + size
                self.opens += 1
                if mask & IN_IGNORED and self.paths.pop(wd, None) == self.cache:
                    self.cache_lost = True
                elif name and not mask & IN_ISDIR and self.paths.get(wd, self.cache) != self.cache:
                    self.programs.append((os.path.join(self.paths[wd], os.fsdecode(name)), now))
                    self.program_opens += 1
            self.watch_cache_again()

    def forget_programs(self, before):
        """Drop the program opens drained before `before` (monotonic)."""
        while self.programs and self.programs[0][1] < before:
            self.programs.popleft()

    def dirs(self):
        return [path for path in self.paths.values() if path != self.cache]

    def watch_cache_again(self):
        """After the cache was replaced (its watch dropped), watch the new file."""
        if self.cache_lost:
            self.cache_lost = not self.add(self.cache)

    def close(self):
        _close(self.fd)
        self.fd = -1


def wake_dirs():
    """PATH directories and the usual bin dirs, each real directory once (at most 16)."""
    seen, out = set(), []
    for path in os.environ.get("PATH", "").split(os.pathsep) + list(WAKE_DIRS):
        if not path.startswith("/"):
            continue
        real = os.path.realpath(path)
        if real not in seen and os.path.isdir(real):
            seen.add(real)
            out.append(real)
    return out[:16]


# --- describing a process ----------------------------------------------------

class ProcContext(object):
    """What every record needs: boot time, clock ticks, user names, our own namespaces."""

    def __init__(self, procfs):
        self.procfs = procfs
        self.ticks = float(os.sysconf("SC_CLK_TCK"))
        self.boot = self._boot_time()
        self.users = {}
        self.own_ns = (self.pid_ns("self"), procfs.netns("self"))

    def _boot_time(self):
        """btime of /proc/stat; refined from CLOCK_BOOTTIME (btime is whole seconds)."""
        btime = None
        try:
            for line in self.procfs.read("stat").splitlines():
                if line.startswith("btime "):
                    btime = float(line.split()[1])
        except (OSError, ValueError, IndexError):
            btime = None        # a damaged --proc tree: the clock, else times from 0
        clock = getattr(time, "CLOCK_BOOTTIME", None)
        if clock is not None and self.procfs.is_live():
            precise = time.time() - time.clock_gettime(clock)
            if btime is None or abs(precise - btime) < 2:
                return precise
        return btime if btime is not None else 0.0

    def start_time(self, ticks):
        return round(self.boot + ticks / self.ticks, 3)

    def user(self, uid):
        """uid -> login name, cached; an unknown uid -> the number as a string."""
        if uid is None:
            return "?"
        name = self.users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                name = str(uid)
            if len(self.users) < 4096:
                self.users[uid] = name
        return name

    def pid_ns(self, pid):
        """"pid:[4026531836]" or None when unreadable (as ProcFS.netns for the net one)."""
        try:
            return os.readlink(self.procfs.path(pid, "ns", "pid"))
        except OSError:
            return None

    def read(self, pid, name):
        """ProcFS.read, or None: a process that is gone or hidden gets null fields."""
        try:
            return self.procfs.read(pid, name)
        except OSError:
            return None

    def uid(self, pid, stat_fd=None):
        text = self.read(pid, "status")
        if text:
            try:
                return parse_status_number(text, "Uid")
            except (ValueError, IndexError):
                pass
        try:        # the /proc/N inode belongs to the effective uid
            return os.fstat(stat_fd).st_uid if stat_fd is not None \
                else os.stat(self.procfs.path(pid)).st_uid
        except OSError:
            return None

    def record(self, pid, st, cmdline, stat_fd=None):
        """The fields the feed and the procs tab share, as an ordered dict."""
        rec = collections.OrderedDict()
        rec["start_time"] = self.start_time(st.start)
        rec["pid"] = pid
        rec["ppid"] = st.ppid
        rec["uid"] = self.uid(pid, stat_fd)
        rec["user"] = self.user(rec["uid"])
        rec["comm"] = st.comm
        rec["cmdline"] = cmdline
        try:
            rec["exe"] = os.readlink(self.procfs.path(pid, "exe"))
        except OSError:
            rec["exe"] = None
        rec["kernel_thread"] = bool(st.flags & PF_KTHREAD)
        cgroup = self.read(pid, "cgroup")
        rec["cgroup"] = parse_cgroup(cgroup) if cgroup else None
        rec["pid_ns"] = self.pid_ns(pid)
        rec["net_ns"] = self.procfs.netns(pid)
        rec["container"] = self.in_container(rec["pid_ns"], rec["net_ns"])
        return rec

    def in_container(self, pid_ns, net_ns):
        """True when a readable pid or net namespace differs from netsnoop's own."""
        known = [(theirs, ours) for theirs, ours in zip((pid_ns, net_ns), self.own_ns)
                 if theirs is not None and ours is not None]
        if not known:
            return None
        return any(theirs != ours for theirs, ours in known)


# --- the scanner ---------------------------------------------------------------

class Watch(object):
    """A newborn under watch: its stat and cmdline held open, immune to PID reuse."""
    __slots__ = ("pid", "stat_fd", "cmd_fd", "born", "st", "fork_comm", "fork_cmdline",
                 "cmdline", "forked_only", "next_check", "opens", "checked", "uid")

    def __init__(self, pid, stat_fd, born):
        self.pid, self.stat_fd, self.born = pid, stat_fd, born
        self.st = self.cmd_fd = self.uid = None   # uid: the catcher's, once /proc/N is gone
        self.fork_comm = self.fork_cmdline = self.cmdline = None
        self.forked_only = False
        self.next_check = self.checked = born     # checked: last seen alive
        self.opens = -1         # Notifier.opens when last seen alive, not exec'd

    def read_stat(self):
        """Fresh ProcStat, or None once the process has been reaped."""
        try:
            self.st = parse_proc_stat(os.pread(self.stat_fd, 2048, 0))
        except (OSError, ValueError, IndexError):
            return None
        return self.st

    def read_cmdline(self, procfs):
        try:
            if self.cmd_fd is None:
                self.cmd_fd = _open_ro(procfs.path(self.pid, "cmdline"))
            return parse_cmdline(_pread_all(self.cmd_fd))
        except OSError:
            return None

    def close(self):
        _close(self.stat_fd)
        _close(self.cmd_fd)
        self.stat_fd = self.cmd_fd = None


# A PID lost before its command line was read: pid and watch None when /proc/N was
# never seen (it may even have been a thread); kind is the count it was added to
# (None: a reported fork-only child reaped, perhaps after an exec).
Lost = collections.namedtuple("Lost", "pid watch since kind")


class ProcScanner(object):
    """Finds new processes; step() waits for activity and returns event dicts.

    seen: processes reported; missed = vanished (PIDs allocated but gone before
    /proc/N could be read: very short processes, threads or failed forks) +
    lost_cmdline (exec'd, but gone before the new command line could be read).
    partial: processes gone before their command line was read but reported with
    their program, from their zombie's name or their program file's open (inotify),
    as {"cmdline": null, "partial": true}; they count in neither seen nor missed.
    """

    def __init__(self, procfs, backend="auto", slowest=None):
        self.procfs = procfs
        self.io = make_backend(backend)
        self.backend = self.io.name
        self.slowest = slowest or SLOW_PERIOD
        self.seen = self.vanished = self.lost_cmdline = self.threads = self.partial = 0
        self.lost = []          # [Lost] since things last settled, for partial records
        self.undescribed = []   # [(event, watch, ProcStat, cmdline)] of this step: _describe
        self.real_names = {}    # program name -> the file name it resolves to in PATH
        self.known = {}         # pid -> start ticks: present at start, or reported
        self.newborns = {}      # pid -> Watch, not reported yet
        self.watched = {}       # pid -> Watch, reported, watched for a later exec
        self.pending = {}       # pid -> when the counter showed it (not visible yet)
        self.counter_fd = self.notifier = self.ctx = None
        self.last = 0
        self.last_birth = self.last_listing = self.next_sweep = 0.0
        self.moved = self.full_listing = False
        self.short_slice = None     # asked for by the first step(), in the thread that runs it
        self.cpus = None            # the CPUs this thread may run on, when it may step aside
        self.own_stat_fd = None     # /proc/thread-self/stat: the CPU this thread is on
        self.aside = False          # moved off a newborn's CPU (_step_aside)

    @property
    def missed(self):
        return self.vanished + self.lost_cmdline

    def start(self):
        """Open the counter, note the processes already present, set up inotify."""
        self.ctx = ProcContext(self.procfs)
        if self.procfs.is_live():
            # not for a --proc tree: the machine's program opens are not its processes'
            # (they would wake the scanner for nothing and make partial records of strangers)
            self.notifier = Notifier(self.io, wake_dirs())
            # before the counter is read: the catcher's own thread is no new PID
            self.io.start_catcher(self.procfs.root, [LD_CACHE] + self.notifier.dirs())
        try:
            self.counter_fd = _open_ro(self.procfs.path("loadavg"))
            self.last = read_counter(self.counter_fd)
        except (OSError, ValueError, IndexError) as err:
            self.io.stop_catcher()
            if self.notifier is not None:
                self.notifier.close()
            raise NetsnoopError("cannot read the last-PID counter %s: %s" % (
                self.procfs.path("loadavg"), getattr(err, "strerror", None) or err))
        _raise_fd_limit()
        now = time.monotonic()
        for pid in self.io.list_pids(self.procfs.root):
            st = read_proc_stat(self.procfs, pid)
            if st is not None:
                self.known[pid] = st.start
        self.last_listing = now
        return len(self.known)

    def close(self):
        self.io.stop_catcher()
        if self.aside:
            self._come_back()
        for watch in list(self.newborns.values()) + list(self.watched.values()):
            watch.close()
        self.newborns.clear()
        self.watched.clear()
        if self.notifier is not None:
            self.notifier.close()
        _close(self.counter_fd)
        _close(self.own_stat_fd)
        self.counter_fd = self.own_stat_fd = None

    # -- the loop --

    def step(self, limit=MAX_WAIT):
        """Wait for activity (at most `limit` seconds) and return the new events."""
        if self.short_slice is None:
            self.short_slice = request_short_slice()
            self._prepare_step_aside()
        timeout, step = self._pace(time.monotonic(), limit)
        notify_fd = self.notifier.fd if self.notifier is not None else -1
        woke, cur = self.io.wait(self.counter_fd, notify_fd, self.last, timeout, step,
                                 quiet=self._quiet())
        now = time.monotonic()
        self.aside = self.aside or self.io.stepped_aside
        if woke == WAIT_REWATCH:
            self.notifier.rewatch()
        programs = self.notifier.program_opens if self.notifier is not None else 0
        if woke == WAIT_NOTIFY:
            # the counter was read before the nap: the fork of the process whose exec
            # woke us is seen now, not one step (a record or two) later
            cur = read_counter(self.counter_fd)
        events = []
        if cur != self.last:
            self._counter_moved(cur, now)
        # the newborns first, the inotify events after: the exec that woke us may be
        # waiting for this CPU (_step_aside)
        self._probe_pending(now, events)
        if woke == WAIT_NOTIFY:
            self.notifier.drain()
        opened = self.notifier.program_opens - programs if self.notifier is not None else 0
        self._check_newborns(now, events)
        if opened and (self.newborns or self.pending):
            self._catch_exec(events)
        if self.watched and (now >= self.next_sweep or woke == WAIT_NOTIFY):
            self._sweep(now, events, full=now >= self.next_sweep)
        if self.full_listing or (self.moved and now - self.last_listing >= RECONCILE_EVERY):
            self._reconcile(now, events)
        self._describe(events)
        if self.lost and not self.pending and not self.newborns:
            self._name_the_lost(now, events)
            self._describe(events)      # its re-checks may have found an exec
        if self.aside and not self.pending and not self.newborns:
            self._come_back()
        return events

    # -- sharing the CPUs with a newborn --

    def _prepare_step_aside(self):
        try:
            cpus = os.sched_getaffinity(0)
            if len(cpus) > 1 and self.procfs.is_live():
                self.own_stat_fd = _open_ro("/proc/thread-self/stat")
                self.cpus = cpus
                self.io.aside_root = self.procfs.root
        except (OSError, AttributeError):
            pass

    def _step_aside(self, st):
        """A newborn inside its execve, on the CPU this thread runs on, cannot finish it
        while we read it; and once we sleep, it runs its whole (short) life before we
        are let back on that CPU.  So this thread moves to another CPU until no newborn
        is pending (any thread may set its own affinity).  The fast backend's wait makes
        the same check in C the moment it wakes on a new PID (fs_step_aside()), ~0.3 ms
        before this Python, cold after a quiet spell, gets here."""
        if self.cpus is None or st.state != "R" or st.cpu < 0:
            return
        try:
            mine = parse_proc_stat(os.pread(self.own_stat_fd, 2048, 0)).cpu
            others = self.cpus - {mine}
            if mine == st.cpu and others:
                os.sched_setaffinity(0, others)
                self.aside = True
        except (OSError, ValueError, IndexError):
            self.cpus = None

    def _come_back(self):
        self.aside = False
        try:
            os.sched_setaffinity(0, self.cpus)
        except OSError:
            self.cpus = None

    def _quiet(self):
        """Nothing under watch: an exec that does not move the counter (another PID
        namespace's, or an old process's) cannot concern us, and the wait drops its
        inotify events without returning (docs/scanner.md, "Idle")."""
        return not (self.pending or self.newborns or self.watched or self.lost)

    def _catch_exec(self, events):
        """A program file's open woke us, but the newborn that exec'd it still shows its
        parent: the new command line shows ~0.1 ms later, as the loader starts, where the
        next wake-up (the loader's open of ld.so.cache) comes ~0.3 ms later, when a short
        program may be gone.  So the newborns are re-read for up to EXEC_SPIN."""
        deadline = time.monotonic() + EXEC_SPIN
        while (self.newborns or self.pending) and time.monotonic() < deadline:
            time.sleep(EXEC_SPIN_STEP)
            now = time.monotonic()
            self._probe_pending(now, events)
            self._check_newborns(now, events)

    def _pace(self, now, limit):
        """-> (timeout, poll step): fast while something is happening, relaxed when quiet."""
        if self.pending or self.newborns:
            return min(FAST_PERIOD, limit), FAST_PERIOD
        quiet = min(self.slowest, MAX_WAIT)     # a wait never lasts longer anyway
        step = ACTIVE_PERIOD if now - self.last_birth < ACTIVE_FOR else quiet
        timeout = min(limit, MAX_WAIT)
        if self.watched:
            timeout = min(timeout, max(self.next_sweep - now, 0.0))
        return max(timeout, 0.0), step

    def _counter_moved(self, cur, now):
        """Queue the PIDs allocated since the last read (a wrap or a flood: list /proc)."""
        last, self.last = self.last, cur
        self.moved = True
        self.last_birth = now
        if cur < last or cur - last > MAX_SPAN:
            self.full_listing = True        # wrapped at pid_max, or too many to probe
            # the newest may not be in /proc yet when the listing is taken ("Trap: the
            # counter runs ahead of /proc"): probed until it shows, as any new PID
            self.pending.setdefault(cur, now)
            return
        for pid in range(last + 1, cur + 1):
            self.pending.setdefault(pid, now)

    def _probe_pending(self, now, events):
        for pid, since in list(self.pending.items()):
            found = self._probe(pid, since, events)
            if found or now - since > VISIBLE_GRACE:
                del self.pending[pid]
                if not found and not self._caught_gone(pid, since, events):
                    self.vanished += 1
                    self.lost.append(Lost(None, None, since, "vanished"))

    def _probe(self, pid, born, events):
        """Start watching a new PID; False when /proc/N does not exist (yet)."""
        try:
            fd = _open_ro(self.procfs.path(pid, "stat"))
        except OSError:
            return False
        watch = Watch(pid, fd, born)
        st = watch.read_stat()
        if st is None:
            watch.close()
            return False
        if st.exit_signal == -1:            # a thread: not a process (docs/scanner.md,
                                            # "Trap: threads take PIDs too")
            self.threads += 1
            watch.close()
            return True
        old = self.newborns.get(pid) or self.watched.get(pid)
        # Already known: not new.  After a wrap the counter steps over PIDs still in
        # use, so a PID in its range may be an old process: its start time tells.
        if self.known.get(pid) == st.start or (old and old.st.start == st.start):
            watch.close()
            return True
        self._step_aside(st)
        if old is not None:
            self._pid_reused(old, events)
        self._adopt(watch, st, events)
        return True

    def _pid_reused(self, old, events):
        """The PID is another process now: the one watched under it ended unnoticed."""
        if self.newborns.get(old.pid) is old:
            self._newborn_died(old, None, events)
        else:
            del self.watched[old.pid]
            old.close()

    def _adopt(self, watch, st, events):
        """Note what the child looked like at fork: its parent's name and arguments."""
        pid = watch.pid
        self.known.pop(pid, None)
        if st.flags & PF_KTHREAD:
            self._report(watch, [], events)
            watch.close()
            return
        watch.fork_comm = st.comm
        parent = self.newborns.get(st.ppid) or self.watched.get(st.ppid)
        if parent is not None:
            watch.fork_comm, watch.fork_cmdline = parent.st.comm, parent.cmdline
        else:
            parent_stat = read_proc_stat(self.procfs, st.ppid)
            if parent_stat is not None:
                watch.fork_comm = parent_stat.comm
                watch.fork_cmdline = read_proc_cmdline(self.procfs, st.ppid)
        self.newborns[pid] = watch
        self._check_newborn(watch, time.monotonic(), events)

    def _check_newborns(self, now, events):
        for watch in list(self.newborns.values()):
            self._check_newborn(watch, now, events)

    def _check_newborn(self, watch, now, events):
        """Report a newborn once it has exec'd (its own command line is readable)."""
        st = watch.read_stat()
        if st is None or st.state in ("Z", "X"):
            self._newborn_died(watch, st, events)
            return
        cmdline = watch.read_cmdline(self.procfs)
        if cmdline is None:
            return self._newborn_died(watch, None, events)
        if not cmdline and now - watch.born < FORK_WAIT:
            self._step_aside(st)
            return                  # inside execve: arguments not set up yet (docs/scanner.md,
                                    # "Trap: the empty command line inside execve")
        if watch.fork_cmdline is None:
            watch.fork_cmdline = cmdline
        new_args = cmdline != watch.fork_cmdline
        if new_args and st.comm == watch.fork_comm and cmdline != watch.cmdline:
            watch.cmdline = cmdline     # execve sets the arguments before the name:
            return                      # look again next tick
        watch.cmdline = cmdline
        execed = new_args or st.comm != watch.fork_comm
        if not execed:
            watch.opens = self._exec_hints()
            self._step_aside(st)
        if execed or now - watch.born >= FORK_WAIT:
            watch.forked_only = not execed
            self._report(watch, cmdline, events)
            self._move_to_watched(watch, now)

    def _exec_hints(self):
        """How many exec hints (inotify opens) so far; -1 without inotify."""
        if self.notifier is None or self.notifier.fd < 0:
            return -1
        self.notifier.drain()
        return self.notifier.opens

    def _never_execed(self, watch, st):
        """A zombie keeps its name (docs/scanner.md, "Trap: the zombie that kept only its
        name"); a reaped child did not exec if nothing
        was exec'd anywhere since it was last seen unchanged (no inotify open)."""
        if st is not None:
            return st.comm == watch.fork_comm
        return watch.opens >= 0 and self._exec_hints() == watch.opens

    def _newborn_died(self, watch, st, events):
        """Gone before it was reported: a fork-only child is reported, else missed."""
        del self.newborns[watch.pid]
        new_args = watch.cmdline != watch.fork_cmdline
        if watch.cmdline and (new_args or self._never_execed(watch, st)):
            watch.forked_only = not new_args
            self._report(watch, watch.cmdline, events)
        elif self._caught_exec(watch, st, events):
            pass
        elif st is not None:
            # a zombie keeps its program's name (docs/scanner.md): a partial record; it stays
            # listed, so it is known, not counted twice
            self.known[watch.pid] = st.start
            self._partial_exec(watch, st, events, "new")
        else:
            self.lost_cmdline += 1
            self.lost.append(Lost(watch.pid, watch, watch.born, "lost_cmdline"))
        watch.close()

    # -- what the catcher thread read (the fast backend: FastBackend.caught) --

    def _caught_exec(self, watch, st, events):
        """A newborn gone (or a zombie) before Python read its new command line: the
        catcher thread's reading of its exec, when that is of this very process (same
        start time) and shows arguments other than its parent's -> reported, True."""
        reading = self._catcher_reading(watch.pid)
        if reading is None:
            return False
        caught, seen, cmdline = reading
        if seen.start != watch.st.start or cmdline == watch.fork_cmdline:
            return False
        watch.st = st if st is not None else seen   # a zombie's name is its last program's
        watch.uid, watch.cmdline = caught.uid, cmdline
        self._report(watch, cmdline, events)
        return True

    def _caught_gone(self, pid, since, events):
        """A PID the counter showed and Python never found in /proc: the catcher may
        have read it as it exec'd (its reading taken after the PID was allocated).
        -> reported, True."""
        reading = self._catcher_reading(pid)
        if reading is None or reading[0].t < since - CAUGHT_SLACK:
            return False
        caught, seen, cmdline = reading
        watch = Watch(pid, None, since)
        watch.st, watch.uid, watch.cmdline = seen, caught.uid, cmdline
        self._report(watch, cmdline, events)
        return True

    def _catcher_reading(self, pid):
        """-> (Caught, its ProcStat, its command line), or None."""
        caught = self.io.caught(pid)
        if caught is None:
            return None
        try:
            seen = parse_proc_stat(caught.stat)
        except (ValueError, IndexError):
            return None
        cmdline = parse_cmdline(caught.cmdline)
        return (caught, seen, cmdline) if cmdline else None

    def _move_to_watched(self, watch, now):
        del self.newborns[watch.pid]
        if len(self.watched) >= MAX_WATCHED:
            watch.close()
            return
        _close(watch.cmd_fd)
        watch.cmd_fd = None
        watch.checked = now
        watch.next_check = now + SWEEP_PERIOD
        self.watched[watch.pid] = watch
        if len(self.watched) == 1 or watch.next_check < self.next_sweep:
            self.next_sweep = watch.next_check

    def _sweep(self, now, events, full):
        """Re-check reported processes for a later exec; young ones on every inotify wake."""
        next_sweep = now + MAX_WAIT
        for watch in list(self.watched.values()):
            age = now - watch.born
            limit = FORKED_WATCH if watch.forked_only else EXEC_WATCH
            if age > limit:
                del self.watched[watch.pid]
                watch.close()
                continue
            if now >= watch.next_check or (not full and age < SWEEP_PERIOD):
                self._recheck(watch, events)
                watch.next_check = now + max(SWEEP_PERIOD, min(age / 4.0, MAX_WAIT))
            if watch.pid in self.watched:
                next_sweep = min(next_sweep, watch.next_check)
        self.next_sweep = next_sweep

    def _recheck(self, watch, events):
        st = watch.read_stat()
        if st is None or st.state in ("Z", "X"):
            del self.watched[watch.pid]
            if st is not None and st.comm != watch.fork_comm:
                # exec'd since it was reported, and gone before it was read again:
                # its zombie still names the program
                self._partial_exec(watch, st, events)
            elif st is None and watch.forked_only and not self._never_execed(watch, None):
                # reaped: it may have exec'd (something did meanwhile); an open of a
                # program file may still tell what (not counted: it was seen)
                self.lost.append(Lost(watch.pid, watch, watch.checked, None))
            watch.close()
            return
        if st.comm == watch.fork_comm and not watch.forked_only:
            return
        watch.checked = time.monotonic()
        if watch.forked_only and st.comm == watch.fork_comm:
            watch.opens = self._exec_hints()
        cmdline = watch.read_cmdline(self.procfs)
        _close(watch.cmd_fd)
        watch.cmd_fd = None
        if cmdline and (cmdline != watch.cmdline or st.comm != watch.fork_comm):
            watch.fork_comm, watch.cmdline, watch.forked_only = st.comm, cmdline, False
            watch.born = time.monotonic()       # watch the new program afresh
            events.append(self._event("exec", watch, cmdline))

    def _report(self, watch, cmdline, events):
        self.seen += 1
        self.known[watch.pid] = watch.st.start
        watch.fork_comm = watch.st.comm
        events.append(self._event("new", watch, cmdline))

    def _event(self, kind, watch, cmdline):
        """An event dict, its record filled by _describe(); cmdline None: partial."""
        event = collections.OrderedDict(event=kind, time=round(time.time(), 6))
        self.undescribed.append((event, watch, watch.st, cmdline))
        return event

    def _describe(self, events):
        """Fill in the records of this step's events, once every newborn has been read:
        a record takes ~10 reads of /proc (~0.1 ms), time in which the next newborn
        could end before its command line is read.  So between two records the
        newborns are read again, and the PIDs the counter shows meanwhile probed
        (their reports join the list being filled).  150 "sleep 0" back to back, 4
        alternating runs: python backend reported 119-133 -> 131-139 of 150 (medians
        125 -> 134); fast unchanged (125-141 -> 130-131).

        In a fork storm catching up never ends: the step holds the storm's events
        (~4 KB each) and they are printed when it ends.  Reading first and printing
        later is what catches a storm: 2,000 forks/s for 5 s (bench_load.py), 8,145
        reports, against 2,740 when a step returned after 0.25 s and 4,474 after
        2,048 events (each pause to print ~2,000 events, their findings and JSON,
        leaves the storm unread for ~0.6 s).  So only memory bounds it: past
        STEP_EVENTS (~32 MB) the step stops catching up and returns."""
        for event, watch, st, cmdline in self.undescribed:
            if len(events) < STEP_EVENTS and (self.newborns or self.pending
                                               or read_counter(self.counter_fd) != self.last):
                self._catch_up(events)
            event.update(self.ctx.record(watch.pid, st, cmdline, watch.stat_fd))
            if event["uid"] is None and watch.uid is not None:    # gone: the catcher's
                event["uid"], event["user"] = watch.uid, self.ctx.user(watch.uid)
            if cmdline is None:
                # a zombie: its program file's open, if unclaimed, is its exe
                event["exe"] = self._claim_program(st.comm, None) or event["exe"]
                partial_record(event)
            elif not event["kernel_thread"]:
                self._claim_program(st.comm, cmdline)
        del self.undescribed[:]

    def _catch_up(self, events):
        now = time.monotonic()
        cur = read_counter(self.counter_fd)
        if cur != self.last:
            self._counter_moved(cur, now)
        self._probe_pending(now, events)
        self._check_newborns(now, events)

    # -- partial records: what the kernel's traces tell of a process gone too soon --

    def _partial_exec(self, watch, st, events, kind="exec"):
        """A zombie that exec'd before its command line was read: its name, and its
        program file when an open of that name is unclaimed; counted partial, not lost."""
        self.partial += 1
        events.append(self._event(kind, watch, None))

    def _claim_program(self, comm, cmdline):
        """Take the open of the program file a reported process ran out of the queue
        (so it names no lost process) -> its path, or None."""
        if self.notifier is None or self.notifier.fd < 0:
            return None
        # an exec opens its program file before its new name and arguments show, so
        # its open is queued by now: drained first, it cannot be left for a lost PID
        self.notifier.drain()
        if not self.notifier.programs:
            return None
        names = {comm}
        if cmdline:
            names.add(os.path.basename(cmdline[0]))
        # the names as they are first; links resolved only when none matches (each
        # new name costs a lookup in every PATH directory: 150 "sleep 0" under
        # unique argv[0]s spent ~80 us each on it)
        return self._take_program(names) or self._take_program(
            set(self._real_name(name) for name in names) - names)

    def _take_program(self, names):
        for entry in self.notifier.programs:
            base = os.path.basename(entry[0])
            if base in names or base[:15] in names:     # comm is cut at 15 bytes
                self.notifier.programs.remove(entry)
                return entry[0]
        return None

    def _real_name(self, name):
        """"sh" -> "dash" when /usr/bin/sh links to dash: the open names the target."""
        real = self.real_names.get(name)
        if real is None:
            real = name
            for directory in self.notifier.dirs():
                path = os.path.join(directory, name)
                if os.path.lexists(path):
                    real = os.path.basename(os.path.realpath(path))
                    break
            if len(self.real_names) < 4096:
                self.real_names[name] = real
        return real

    def _name_the_lost(self, now, events):
        """Once no newborn is pending, match the PIDs lost since the last time with the
        program files opened meanwhile and claimed by no report.  No more opens than
        lost PIDs: a partial record with "pid": null for each (which ran which cannot
        be told).  More opens than lost PIDs: nothing is invented.  A PID is never
        named from an open: one lost PID and one unclaimed open named the wrong
        program in 2 of 10 zlib builds (another user's exec, or a claim by name that
        took a sibling's open), docs/scanner.md "Real builds"."""
        notifier = self.notifier
        if notifier is None or notifier.fd < 0:
            self.lost = []
            return
        if read_counter(self.counter_fd) != self.last:
            del self.lost[:-MAX_PROGRAMS]   # a machine never quiet: keep the newest
            return          # a newborn not probed yet may own one of the opens
        lost, self.lost = self.lost, []
        notifier.drain()
        since = min(item.since for item in lost) - LOST_SLACK
        opens = self._unclaimed_since(since, events)
        if not opens or len(opens) > len(lost):
            notifier.forget_programs(now - PROGRAM_KEEP)
            return
        events.extend(self._lost_event(path) for path, _ in opens)
        for item, _ in zip(lost, opens):
            if item.kind is not None:
                setattr(self, item.kind, getattr(self, item.kind) - 1)
        self.partial += len(opens)
        for entry in opens:
            notifier.programs.remove(entry)
        notifier.forget_programs(now - PROGRAM_KEEP)

    def _unclaimed_since(self, since, events):
        """The program opens since `since` no report claims, once the watched children
        reported less than PROGRAM_KEEP ago were re-checked for a later exec, which
        claims its own open."""
        programs = self.notifier.programs
        if any(entry[1] >= since for entry in programs):
            now = time.monotonic()
            for watch in list(self.watched.values()):
                if now - watch.born < PROGRAM_KEEP:
                    self._recheck(watch, events)
        return [entry for entry in programs if entry[1] >= since]

    def _lost_event(self, path):
        """A partial record from a program file's open: the PID is unknown."""
        event = collections.OrderedDict(event="new", time=round(time.time(), 6))
        event["start_time"] = None
        event["pid"] = None
        event["ppid"] = None
        event["uid"] = None
        event["user"] = None
        # comm is the name the program was exec'd by (a link's own name, "cc"); the
        # open names the file it leads to (/usr/bin/x86_64-linux-gnu-gcc-12): exe
        event["comm"] = None
        event["cmdline"] = None
        event["exe"] = path
        event["kernel_thread"] = False
        for key in ("cgroup", "pid_ns", "net_ns", "container"):
            event[key] = None
        return partial_record(event)

    def _reconcile(self, now, events):
        """List /proc: report what the counter missed, forget what is gone."""
        verify, self.full_listing = self.full_listing, False
        self.moved = False
        self.last_listing = now
        try:
            pids = self.io.list_pids(self.procfs.root)
        except OSError:
            return
        alive = set(pids)
        for pid in [p for p in self.known if p not in alive]:
            del self.known[pid]
        for pid in pids:
            if pid in self.pending:
                continue
            # a watched PID too: _probe tells a reused one by its start time
            if pid not in self.known or verify:
                self._probe(pid, now, events)
        if self.notifier is not None:
            self.notifier.watch_cache_again()


def partial_record(event):
    """Mark an event as partial: "partial": true right after its null command line."""
    items = list(event.items())
    event.clear()
    for key, value in items:
        event[key] = value
        if key == "cmdline":
            event["partial"] = True
    return event


def _raise_fd_limit():
    """Newborns are held open: allow up to 4096 fds when the hard limit permits."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


# --- the feed for the curses session -------------------------------------------

class SessionFeed(object):
    """Non-blocking feed for the curses session: a daemon thread steps a scanner
    (ProcScanner, ConnScanner: the C wait releases the GIL, the Python ones sleep in
    select.poll) and queues its events; poll() only drains that queue, so it never
    blocks.  .error holds the message if the scanner stopped on an error.  Call
    close() when done.  Subclasses say what the feed is and may turn each event
    (take)."""
    what = "feed"

    def __init__(self, scanner, name):
        self.scanner = scanner
        self._queue = collections.deque(maxlen=10000)
        self._stop = threading.Event()
        self.error = None
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.daemon = True
        try:
            scanner.start()
            self._thread.start()
        except BaseException:
            scanner.close()         # whatever it opened before the failure
            raise

    def take(self, event):
        return event

    def _run(self):
        try:
            while not self._stop.is_set():
                self._queue.extend(self.take(e) for e in self.scanner.step(0.1))
        except Exception as err:    # noqa: BLE001 -- a thread's traceback would garble curses
            self.error = "%s stopped: %s" % (self.what, err)
        finally:
            # closed here, by the only thread using it: close() need not outwait a slow step
            self.scanner.close()

    def poll(self):
        """The events found since the last call (a list of --json event dicts)."""
        out = []
        while self._queue:
            out.append(self._queue.popleft())
        return out

    def close(self):
        """Stop the thread; it closes the scanner's fds as it ends (at once, or after its step)."""
        self._stop.set()
        self._thread.join(1.0)


class ProcFeed(SessionFeed):
    """New-process events for the session, with their findings as in --procs.
    .seen / .missed / .partial / .backend as in the --procs summary."""
    what = "process feed"

    def __init__(self, procfs, backend="auto"):
        self._rules = ProcRules(procfs)
        scanner = ProcScanner(procfs, backend)
        self.backend = scanner.backend
        SessionFeed.__init__(self, scanner, "netsnoop-procs")

    def take(self, event):
        return self._rules.apply(event)

    @property
    def seen(self):
        return self.scanner.seen

    @property
    def missed(self):
        return self.scanner.missed

    @property
    def partial(self):
        return self.scanner.partial


# --- output ---------------------------------------------------------------------

def event_matches(event, regex):
    """--filter: the regex searched in the command line, the name and the user (a
    partial record: its name and program file)."""
    if regex is None:
        return True
    if event["cmdline"] is None:
        return bool(regex.search(event["comm"] or "") or regex.search(event["exe"] or "")
                    or regex.search(event["user"] or ""))
    return bool(regex.search(" ".join(event["cmdline"])) or regex.search(event["comm"])
                or regex.search(event["user"]))


def open_log(path):
    """--log FILE: append-only fd, created 0600, never through a symlink, never a directory."""
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
             | os.O_CLOEXEC)
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise NetsnoopError("cannot log to %s: it is a directory" % path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise NetsnoopError("cannot log to %s: %s" % (path, err.strerror))
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NetsnoopError("cannot log to %s: it is a symbolic link (refused)" % path)
        raise NetsnoopError("cannot log to %s: %s" % (path, err.strerror))
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise NetsnoopError("cannot log to %s: it is a directory" % path)
    os.set_blocking(fd, True)
    return fd


class FeedOutput(object):
    """Where --procs events go: stdout (text or JSON lines) and the --log file."""

    def __init__(self, args):
        self.json = args.json
        self.regex = getattr(args, "filter_re", None)
        self.log_path = args.log
        self.log_fd = open_log(args.log) if args.log else None
        self.hidden = False         # hidepid hides other users' processes from us
        self.ecs = getattr(args, "ecs", False)
        self.rules = self.delivery = None   # findings and outputs, set by run_procs

    def emit(self, event):
        if not event_matches(event, self.regex):
            return
        self.write(event_json(event, self.ecs) if self.json
                   else format_event(event) + findings_suffix(event))
        if self.delivery is not None:
            self.delivery.submit(event)

    def write(self, line):
        write_stdout(line + "\n")      # escapes what an ASCII stdout cannot take
        if self.log_fd is not None:
            self._log(line + "\n")

    def _log(self, text):
        data = text.encode("utf-8", "surrogateescape")
        try:
            while data:
                data = data[os.write(self.log_fd, data):]
        except OSError as err:
            raise NetsnoopError("cannot write to log %s: %s (events before this one "
                                "were kept)" % (self.log_path, err.strerror))

    def summary(self, scanner):
        """--json: the last line, {"event": "summary", ...}."""
        if self.json:
            summary = collections.OrderedDict((
                ("event", "summary"), ("seen", scanner.seen), ("missed", scanner.missed),
                ("partial", scanner.partial), ("backend", scanner.backend),
                ("missed_unreadable", scanner.vanished),
                ("missed_cmdline", scanner.lost_cmdline), ("threads", scanner.threads)))
            if self.rules is not None:
                summary["findings_cost_us"] = self.rules.cost_us
            if self.delivery is not None:
                summary["delivery"] = self.delivery.counts()
            self.write(event_json(summary, self.ecs))

    def report(self, scanner):
        """The counts on stderr; also after an error, so they are never lost."""
        try:
            sys.stderr.write(
                "%s: %s seen, %d partial (gone before their command line could be read, "
                "program known), %d missed (%d gone%s before they could be read, "
                "%d exec'd but gone before their command line could be read); %s "
                "skipped; backend %s\n" % (
                    PROG, plural(scanner.seen, "new process", "new processes"), scanner.partial,
                    scanner.missed,
                    scanner.vanished, " or hidden by hidepid" if self.hidden else "",
                    scanner.lost_cmdline, plural(scanner.threads, "thread"),
                    scanner.backend))
            for line in self.delivery.report_lines() if self.delivery is not None else ():
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass            # no stderr: nothing to tell, and the error in flight matters more

    def finish_delivery(self):
        """Let the outputs drain (DRAIN_AT_EXIT at most): their counts are then final."""
        if self.delivery is not None:
            self.delivery.close()

    def close(self):
        _close(self.log_fd)
        self.log_fd = None


class _StopFlag(object):
    """SIGINT, SIGTERM and SIGHUP end the feed cleanly, with the summary."""

    def __init__(self):
        self.stopped = False
        self.saved = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stopped = True

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def run_procs(args, procfs):
    """--procs: stream new processes until Ctrl+C, SIGTERM/SIGHUP or --duration."""
    output = FeedOutput(args)
    scanner = None
    started = False
    try:
        output.rules = ProcRules(procfs, getattr(args, "baseline", None))
        output.rules.start()
        output.delivery = make_delivery(args) if hasattr(args, "webhook_url") else None
        scanner = ProcScanner(procfs, args.backend, args.interval)
        with _StopFlag() as stop:
            present = scanner.start()
            started = True
            sys.stderr.write("%s: watching for new processes (backend %s, %d present); "
                             "Ctrl+C ends\n" % (PROG, scanner.backend, present))
            if not procfs.sees_every_process() and procfs.hidepid():
                # another user's new process then looks like one gone before it was read
                output.hidden = True
                sys.stderr.write("%s: %s is mounted with hidepid: other users' processes are "
                                 "hidden from you and count as missed\n" % (PROG, procfs.root))
            sys.stderr.flush()
            deadline = time.monotonic() + args.duration if args.duration else None
            while not stop.stopped:
                left = MAX_WAIT if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                for event in scanner.step(min(left, STOP_CHECK)):
                    output.emit(output.rules.apply(event))
        output.finish_delivery()
        output.summary(scanner)
    finally:
        output.finish_delivery()
        if started:         # a failing --log or stdout ends the feed: the counts still go out
            output.report(scanner)
        if scanner is not None:
            scanner.close()
        try:
            if output.rules is not None:
                output.rules.close()        # the baseline is saved
        finally:
            output.close()
    return EXIT_OK


# --- the procs tab (--once --tab procs) -------------------------------------------

def thread_group(procfs, pid):
    """The process a thread ID belongs to (Tgid), or pid itself: a child's ppid
    names the process, never one of its threads."""
    try:
        tgid = parse_status_number(procfs.read(pid, "status"), "Tgid")
    except (OSError, ValueError, IndexError):
        return pid
    return tgid if tgid and tgid > 0 else pid


def collect_procs(procfs, pid):
    """--once --tab procs: PID's descendants (depth-first), with the feed's fields."""
    pid = thread_group(procfs, pid)
    ctx = ProcContext(procfs)
    rules = ProcRules(procfs)
    stats = {}
    for child in PythonBackend().list_pids(procfs.root):
        st = read_proc_stat(procfs, child)
        if st is not None:      # else exited since the listing
            stats[child] = st
    children = collections.defaultdict(list)
    for child, st in stats.items():
        children[st.ppid].append(child)
    processes = []
    visited = {pid}         # parent links read at different moments (or a damaged --proc) can loop
    todo = [(child, 1) for child in sorted(children.get(pid, ()), reverse=True)]
    while todo:
        child, depth = todo.pop()
        if child in visited:
            continue
        visited.add(child)
        # the feed's keys: "new" (as the feed reports a process first seen) and when it was read
        rec = collections.OrderedDict(event="new", time=round(time.time(), 6))
        rec.update(ctx.record(child, stats[child], read_proc_cmdline(procfs, child) or []))
        rules.apply(rec)
        rec["depth"] = depth
        processes.append(rec)
        todo.extend((c, depth + 1) for c in sorted(children.get(child, ()), reverse=True))
    return collections.OrderedDict(processes=processes)


# ---------------------------------------------------------------------------
# Findings on new processes: rules run on each --procs event
# ---------------------------------------------------------------------------
# Owns the rules that give a new or exec'd process its `findings`, the
# --baseline file of programs seen, and a LISTEN-only sock_diag query.  Reads
# the live process through ProcFS paths (fd links, the exe link, a socket's
# protocol name) and may call the ProcFS readers and parsers above; calls
# nothing of the output or delivery below.  What each rule reads, what it
# means and what it can tell without root: docs/alerts.md.

SEVERITIES = ("info", "warn", "alert")          # lowest first
SHELLS = frozenset((
    "sh", "bash", "rbash", "dash", "ash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "yash",
    "fish", "csh", "tcsh", "busybox"))
# interpreter name (version digits dropped) -> the options that take a program text
ONE_LINER_FLAGS = {
    "python": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",), "php": ("-r",),
    "node": ("-e", "--eval", "-p", "--print"), "nodejs": ("-e", "--eval"), "lua": ("-e",),
    "tclsh": (), "awk": (), "gawk": (), "mawk": (),
}
# Servers known by name, for a shell whose parent's listening socket cannot be seen.
KNOWN_SERVERS = frozenset((
    "nginx", "httpd", "apache2", "lighttpd", "caddy", "haproxy", "php-fpm", "mysqld",
    "mariadbd", "postgres", "redis-server", "tomcat", "vsftpd", "proftpd", "smbd", "named"))
BASELINE_SAVE_EVERY = 10.0      # seconds between saves of a changed --baseline
STDIO_NAMES = ("stdin", "stdout", "stderr")


def finding(severity, rule, text):
    return collections.OrderedDict((("severity", severity), ("rule", rule), ("text", text)))


def cannot_tell(rule, why):
    """A fact that could not be read is said, never left as silence."""
    return finding("info", rule, "cannot tell: " + why)


def event_level(event):
    """The highest severity among an event's findings, or None without findings."""
    ranks = [SEVERITIES.index(f["severity"]) for f in event.get("findings") or ()]
    return SEVERITIES[max(ranks)] if ranks else None


def program_name(event):
    """The program's base name: from exe when readable, else the kernel's comm."""
    exe = event.get("exe")
    if exe:
        return os.path.basename(strip_deleted(exe))
    return event.get("comm") or ""


def strip_deleted(exe):
    return exe[:-len(" (deleted)")] if exe.endswith(" (deleted)") else exe


def interpreter_kind(name):
    """"python3.11" -> "python"; None for anything not in ONE_LINER_FLAGS."""
    base = re.sub(r"[0-9.]+\Z", "", name)
    return base if base in ONE_LINER_FLAGS else None


def is_shell_like(event):
    """A shell, or an interpreter given its program on the command line (-c, -e)."""
    name = program_name(event)
    if name in SHELLS or event.get("comm") in SHELLS:
        return True
    kind = interpreter_kind(name) or interpreter_kind(event.get("comm") or "")
    if kind is None:
        return False
    flags = ONE_LINER_FLAGS[kind]
    args = event.get("cmdline") or []
    return not flags or any(arg in flags for arg in args[1:4])


def listening_inodes(procfs, pid):
    """{inode: port} of the TCP sockets in LISTEN in PID's network namespace.

    Asked of the kernel through sock_diag (LISTEN only: ~40 us, the kernel skips
    its table of connections) when PID shares netsnoop's namespace; else read
    from /proc/PID/net/tcp{,6}, which walks that whole table (25 ms each on a
    host with a large one): only for a shell whose parent holds sockets."""
    if procfs.netns(pid) is not None and procfs.netns(pid) == procfs.netns("self") \
            and procfs.is_live():
        try:
            return sock_diag_listening()
        except OSError:
            pass            # no sock_diag here (a sandbox): the files tell the same
    out = {}
    for proto in ("tcp", "tcp6"):
        try:
            text = procfs.net_read(pid, proto)
        except NetsnoopError:
            continue
        for sock in parse_sockets(text or "", proto):
            if sock.state == "LISTEN":
                out[sock.inode] = sock.local_port
    return out


def sock_diag_listening():
    """{inode: port} of the TCP sockets in LISTEN in netsnoop's network namespace:
    one dump per family, filtered by the kernel to LISTEN (diag_dump)."""
    sock = open_diag_socket()
    try:
        listeners = diag_dump((sock, threading.Lock()), states=1 << TCP_LISTEN)
    finally:
        sock.close()
    return {s.inode: s.local_port for s in listeners}


def parent_socket_inodes(procfs, pid, limit=4096):
    """Socket inodes among PID's fd links (at most `limit` fds read) -> (set, None)
    or (None, why not).  A plain walk: a parent holds few fds as a rule."""
    try:
        dir_fd = os.open(procfs.path(pid, "fd"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return None, "another user's process is not readable without root"
        return None, "it exited before its sockets could be read"
    inodes = set()
    try:
        for name in os.listdir(dir_fd)[:limit]:
            try:
                inode = socket_inode(os.readlink(name, dir_fd=dir_fd))
            except OSError:
                continue            # closed since the listing
            if inode is not None:
                inodes.add(inode)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return None, "another user's process is not readable without root"
    finally:
        os.close(dir_fd)
    return inodes, None


NETWORK_PROTOCOLS = ("TCP", "UDP", "MPTCP", "SCTP", "UDP-Lite", "UDPLITE")


def socket_protocol(procfs, pid, fd):
    """"TCP", "TCPv6", "UNIX-STREAM"... as the kernel names the socket behind fd
    (the xattr system.sockprotoname of a socket inode), or None."""
    try:
        name = os.getxattr(procfs.path(pid, "fd", fd), "system.sockprotoname")
    except (OSError, AttributeError):
        return None
    return name.rstrip(b"\0").decode("ascii", "replace")


def is_network_protocol(name):
    return bool(name) and name.rstrip("v6") in NETWORK_PROTOCOLS


def read_stdio(procfs, pid):
    """-> ([link of fd 0, 1, 2 or None when closed], None) or (None, why unreadable).
    Read relative to the open fd directory: one path walk, not four (~half the cost)."""
    try:
        dir_fd = os.open(procfs.path(pid, "fd"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return None, ("the file descriptors of another user's process are not "
                          "readable without root")
        return None, "the process exited before its file descriptors could be read"
    links = []
    try:
        for fd in ("0", "1", "2"):
            try:
                links.append(os.readlink(fd, dir_fd=dir_fd))
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EPERM):
                    return None, ("the file descriptors of another user's process are not "
                                  "readable without root")
                links.append(None)      # that fd is closed (or the process just exited)
    finally:
        os.close(dir_fd)
    return links, None


def socket_inode(link):
    """"socket:[1234]" -> 1234, anything else -> None."""
    if link and link.startswith("socket:[") and link.endswith("]") and link[8:-1].isdigit():
        return int(link[8:-1])
    return None


def network_stdio(procfs, pid):
    """-> (names of fds 0-2 on a network socket, its protocol, None) or (None, None, why)."""
    links, why = read_stdio(procfs, pid)
    if links is None:
        return None, None, why
    on, protocol = [], None
    for fd, (name, link) in enumerate(zip(STDIO_NAMES, links)):
        if socket_inode(link) is not None:
            proto = socket_protocol(procfs, pid, fd)
            if is_network_protocol(proto):
                on.append(name)
                protocol = protocol or proto
    return on, protocol, None


def stdio_text(on, protocol):
    """["stdin", "stdout"], "TCP" -> "stdin and stdout are a TCP socket"."""
    names = on[0] if len(on) == 1 else "%s and %s" % (", ".join(on[:-1]), on[-1])
    return "%s %s a %s socket" % (names, "is" if len(on) == 1 else "are", protocol)


def rule_socket_stdio(procfs, event):
    """stdin or stdout is a network socket (TCP, UDP...): a shell so is a reverse shell.
    A shell on a pseudo-terminal whose parent's stdio is a network socket is one too
    (python's pty.spawn after dup2).  Unix sockets (journald's stdout) stay silent."""
    on, protocol, why = network_stdio(procfs, event["pid"])
    if on is None:
        return [cannot_tell("socket-stdio", why)]
    shell = is_shell_like(event)
    if "stdin" in on or "stdout" in on:
        if shell:
            return [finding("alert", "socket-stdio", stdio_text(on, protocol)
                            + ": a reverse shell")]
        return [finding("warn", "socket-stdio", stdio_text(on, protocol))]
    if not shell:
        return []
    on, protocol, why = network_stdio(procfs, event["ppid"])
    if on is None:
        return [cannot_tell("socket-stdio", "its parent %d: %s" % (event["ppid"], why))]
    if "stdin" in on or "stdout" in on:
        return [finding("alert", "socket-stdio", "its parent %d has %s: a reverse shell "
                        "through a pseudo-terminal" % (event["ppid"], stdio_text(on, protocol)))]
    return []


def exe_unknown_reason(procfs, event):
    """Why exe is null: another user's process (EACCES) or gone."""
    try:
        os.readlink(procfs.path(event["pid"], "exe"))
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return "the program of another user's process is not readable without root"
    return "the process exited before its program could be read"


def rule_exe(procfs, event):
    """memfd-exe, deleted-exe and writable-dir-exe: what the exe link says."""
    exe = event.get("exe")
    if not exe:
        why = exe_unknown_reason(procfs, event)
        return [cannot_tell(rule, why) for rule in ("memfd-exe", "deleted-exe", "writable-dir-exe")]
    if exe.startswith("/memfd:"):
        return [finding("alert", "memfd-exe", "runs from memory, not from a file (%s): a "
                        "fileless program" % strip_deleted(exe))]
    out = []
    path = strip_deleted(exe)
    if path != exe:
        out.append(finding("warn", "deleted-exe", "its program %s was deleted after it "
                           "started" % path))
    directory = os.path.dirname(path)
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return out
    if mode & stat.S_IWOTH:
        severity = "alert" if directory == "/dev/shm" or directory.startswith("/dev/shm/") \
            else "warn"
        out.append(finding(severity, "writable-dir-exe", "runs %s from %s, a directory anyone "
                           "can write to" % (os.path.basename(path), directory)))
    return out


def rule_shell_from_service(procfs, event):
    """A shell whose parent listens on a TCP port (or is a known server by name)."""
    if not is_shell_like(event):
        return []
    ppid = event["ppid"]
    if ppid is None:            # a partial record: gone before its stat was read
        return [cannot_tell("shell-from-service", "its parent is unknown (it ended before "
                            "it could be read)")]
    parent = read_proc_stat(procfs, ppid)
    parent_name = parent.comm if parent is not None else "?"
    known = re.sub(r"[0-9.]+\Z", "", parent_name) in KNOWN_SERVERS     # php-fpm8.2
    by_name = [finding("warn", "shell-from-service", "%s started by %s (%d), a server" % (
        program_name(event), parent_name, ppid))] if known else []
    held, why = parent_socket_inodes(procfs, ppid)
    if held is None:
        return by_name or [cannot_tell("shell-from-service", "the sockets of its parent %d: %s"
                                       % (ppid, why))]
    listening = listening_inodes(procfs, ppid) if held else {}
    ports = sorted(set(port for inode, port in listening.items() if inode in held))
    if ports:
        return [finding("alert", "shell-from-service", "%s started by %s (%d), which listens "
                        "on TCP port %s" % (program_name(event), parent_name, ppid,
                                            ", ".join(map(str, ports))))]
    return by_name


class Baseline(object):
    """--baseline FILE: the programs (exe paths) seen so far, as JSON.

    Absent FILE: this run learns (no first-seen findings) and creates it with
    the programs running at start and those seen.  Present: a program not in it
    gets a first-seen finding once and is added.  Saved (0600, replaced whole)
    every BASELINE_SAVE_EVERY seconds while it changes, and at exit.
    """

    def __init__(self, path):
        self.path = path
        self.programs = set()
        self.learning = False
        self.dirty = False
        self.saved_at = time.monotonic()

    def load(self, procfs):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self.learning = True
            self._check_writable()
            self.programs.update(running_programs(procfs))
            self.dirty = True
            return
        except OSError as err:
            raise NetsnoopError("cannot use baseline %s: %s" % (self.path, err.strerror))
        if stat.S_ISLNK(st.st_mode):
            raise NetsnoopError("cannot use baseline %s: it is a symbolic link (refused)"
                                % self.path)
        if st.st_mode & 0o022:
            raise NetsnoopError("cannot use baseline %s: others may write to it (chmod 600 %s)"
                                % (self.path, self.path))
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                data = json.load(f)
            programs = data["programs"]
            if data.get("netsnoop") != "baseline" or not isinstance(programs, list):
                raise ValueError("not a netsnoop baseline")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise NetsnoopError("cannot use baseline %s: %s" % (
                self.path, getattr(err, "strerror", None) or err))
        self.programs.update(p for p in programs if isinstance(p, str))
        self._check_writable()

    def _check_writable(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.access(directory, os.W_OK | os.X_OK):
            raise NetsnoopError("cannot use baseline %s: cannot write to %s" % (
                self.path, directory))

    def check(self, event):
        exe = event.get("exe")
        if event.get("kernel_thread"):
            return []
        if not exe:
            return [cannot_tell("first-seen", "the program is unknown (not readable)")]
        if exe.startswith("/memfd:") or exe.endswith(" (deleted)"):
            return []           # said by memfd-exe / deleted-exe; not a program to keep
        if exe in self.programs:
            return []
        self.programs.add(exe)
        self.dirty = True
        if self.learning:
            return []
        return [finding("warn", "first-seen", "%s is not in the baseline (added)" % exe)]

    def save_if_due(self, now):
        if self.dirty and now - self.saved_at >= BASELINE_SAVE_EVERY:
            self.save()

    def save(self):
        """Write the whole file anew beside the old one, then rename it over (atomic)."""
        self.saved_at = time.monotonic()
        if not self.dirty:
            return
        text = json.dumps(collections.OrderedDict((
            ("netsnoop", "baseline"), ("version", 1),
            ("programs", sorted(self.programs)))), indent=1) + "\n"
        tmp = "%s.%d.tmp" % (self.path, os.getpid())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                data = text.encode("utf-8", "surrogateescape")
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            self.dirty = False
        except OSError as err:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise NetsnoopError("cannot write baseline %s: %s" % (self.path, err.strerror))


def running_programs(procfs):
    """The exe of every process readable now (a new baseline starts with them)."""
    out = set()
    for pid in PythonBackend().list_pids(procfs.root):
        try:
            exe = os.readlink(procfs.path(pid, "exe"))
        except OSError:
            continue
        if not exe.startswith("/memfd:") and not exe.endswith(" (deleted)"):
            out.add(exe)
    return out


class ProcRules(object):
    """Gives each --procs event its `findings`; times itself (cost per event)."""

    def __init__(self, procfs, baseline_path=None):
        self.procfs = procfs
        self.baseline = Baseline(baseline_path) if baseline_path else None
        self.checked = 0
        self.seconds = 0.0

    def start(self):
        if self.baseline is not None:
            self.baseline.load(self.procfs)

    def apply(self, event):
        began = time.perf_counter()
        event["findings"] = self.findings(event)
        self.checked += 1
        self.seconds += time.perf_counter() - began
        if self.baseline is not None:
            self.baseline.save_if_due(time.monotonic())
        return event

    def findings(self, event):
        if event.get("kernel_thread"):
            return []
        out = rule_socket_stdio(self.procfs, event)
        out += rule_exe(self.procfs, event)
        out += rule_shell_from_service(self.procfs, event)
        if self.baseline is not None:
            out += self.baseline.check(event)
        return out

    @property
    def cost_us(self):
        """Mean time the rules took per event, in microseconds."""
        return round(1e6 * self.seconds / self.checked, 1) if self.checked else 0.0

    def close(self):
        if self.baseline is not None:
            self.baseline.save()



# ---------------------------------------------------------------------------
# Delivery: webhook, syslog, mail, ECS
# ---------------------------------------------------------------------------
# Owns the outputs beside stdout and --log: the ECS form of an event, the
# webhook, syslog and mail senders, and the Courier thread each of them runs
# in (bounded queue, retries with back-off, counts), and the findings and
# delivery options of the command line.  Calls the findings above
# (event_level), printable() and cmdline_text(), and the standard library's
# urllib, smtplib and socket; the feed (FeedOutput) hands it events and never
# waits for a receiver.
# Formats and options: docs/alerts.md.

QUEUE_SIZE = 1000           # events waiting per output (--queue-size)
SEND_TIMEOUT = 5.0          # one attempt to reach a receiver
RETRIES = 3                 # attempts after the first, with back-off
BACKOFF = (0.5, 2.0, 5.0)   # seconds before each retry
DRAIN_AT_EXIT = 2.0         # at exit, how long the outputs may still deliver
ECS_VERSION = "8.11.0"
ECS_SEVERITY = {"info": 21, "warn": 47, "alert": 73}    # Elastic's risk-score steps
SYSLOG_SEVERITY = {"info": 6, "warn": 4, "alert": 1}    # RFC 5424 table 2
SYSLOG_FACILITY_USER = 1
SECRET_ENV = {"webhook": "NETSNOOP_WEBHOOK", "smtp": "NETSNOOP_SMTP_PASSWORD"}


class DeliveryError(Exception):
    """A send that failed; retry=False when trying again cannot help (HTTP 4xx)."""

    def __init__(self, text, retry=True):
        Exception.__init__(self, text)
        self.retry = retry


def iso_time(epoch):
    """1700000000.5 -> "2023-11-14T22:13:20.500000Z" (RFC 3339, UTC)."""
    whole = int(epoch)
    return "%s.%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)),
                         int(round((epoch - whole) * 1e6)) % 1000000)


def ecs_event(event):
    """A feed event -> the same facts under Elastic Common Schema names."""
    if event.get("event") == "summary":
        return ecs_summary(event)
    if "proto" in event:
        return ecs_connection(event)
    out = collections.OrderedDict()
    out["@timestamp"] = iso_time(event["time"])
    level = event_level(event)
    out["event"] = collections.OrderedDict((
        ("kind", "alert" if level in ("warn", "alert") else "event"),
        ("category", ["process"]),
        ("type", ["start"] if event["event"] == "new" else ["change"]),
        ("action", "process-started" if event["event"] == "new" else "exec"),
        ("created", iso_time(event["time"])),
        ("module", "netsnoop"), ("dataset", "netsnoop.procs")))
    if level is not None:
        out["event"]["severity"] = ECS_SEVERITY[level]
    args = event.get("cmdline") or []
    process = collections.OrderedDict()
    process["pid"] = event["pid"]
    process["parent"] = {"pid": event["ppid"]}
    process["name"] = event.get("comm")
    process["executable"] = event.get("exe")
    process["command_line"] = " ".join(shlex.quote(arg) for arg in args)
    process["args"] = args
    process["args_count"] = len(args)
    if event.get("start_time") is not None:
        process["start"] = iso_time(event["start_time"])
    out["process"] = process
    out["user"] = collections.OrderedDict((
        ("id", None if event.get("uid") is None else str(event["uid"])),
        ("name", event.get("user"))))
    out["host"] = {"hostname": socket.gethostname()}
    alerts = [f for f in event.get("findings") or () if f["severity"] != "info"]
    if alerts:
        out["rule"] = {"name": [f["rule"] for f in alerts]}
        out["message"] = "; ".join("%s: %s" % (f["rule"], f["text"]) for f in alerts)
    out["ecs"] = {"version": ECS_VERSION}
    out["netsnoop"] = collections.OrderedDict(
        (key, event.get(key)) for key in ("findings", "cgroup", "pid_ns", "net_ns",
                                          "container", "kernel_thread"))
    return out


def ecs_connection(event):
    """A --conns event (open, listen, close) -> ECS source/destination/network."""
    out = collections.OrderedDict()
    out["@timestamp"] = iso_time(event["time"])
    kind = event.get("event")
    level = event_level(event)
    out["event"] = collections.OrderedDict((
        ("kind", "alert" if level in ("warn", "alert") else "event"), ("category", ["network"]),
        ("type", {"open": ["start", "connection"], "listen": ["start"],
                  "close": ["end", "connection"]}.get(kind, ["info"])),
        ("action", "connection-%s" % kind), ("created", iso_time(event["time"])),
        ("module", "netsnoop"), ("dataset", "netsnoop.conns")))
    if level is not None:
        out["event"]["severity"] = ECS_SEVERITY[level]
    proto = event.get("proto") or ""
    out["source"] = {"ip": event.get("local_address"), "port": event.get("local_port"),
                     "bytes": event.get("bytes_sent")}
    out["destination"] = {"ip": event.get("remote_address"), "port": event.get("remote_port"),
                          "bytes": event.get("bytes_received")}
    out["network"] = {"transport": proto.rstrip("6"), "type": "ipv6" if proto.endswith("6")
                      else "ipv4"}
    out["process"] = {"pid": event.get("pid"), "name": event.get("comm"),
                      "args": event.get("cmdline")}
    out["user"] = {"id": None if event.get("uid") is None else str(event["uid"])}
    out["host"] = {"hostname": socket.gethostname()}
    alerts = [f for f in event.get("findings") or () if f["severity"] != "info"]
    if alerts:
        out["rule"] = {"name": [f["rule"] for f in alerts]}
        out["message"] = "; ".join("%s: %s" % (f["rule"], f["text"]) for f in alerts)
    out["ecs"] = {"version": ECS_VERSION}
    out["netsnoop"] = collections.OrderedDict(
        (key, event.get(key)) for key in ("state", "inode", "cookie", "cgroup", "duration",
                                          "findings"))
    return out


def ecs_summary(summary):
    out = collections.OrderedDict()
    out["@timestamp"] = iso_time(time.time())
    out["event"] = collections.OrderedDict((("kind", "metric"), ("module", "netsnoop"),
                                            ("dataset", "netsnoop.summary")))
    out["ecs"] = {"version": ECS_VERSION}
    out["netsnoop"] = {"summary": collections.OrderedDict(
        (k, v) for k, v in summary.items() if k != "event")}
    return out


def event_json(event, ecs):
    return json.dumps(ecs_event(event) if ecs else event)


def alert_text(event):
    """One line for a person: what, which process, why (escaped: it goes to chat and mail)."""
    alerts = [f for f in event.get("findings") or () if f["severity"] != "info"]
    why = "; ".join("%s %s: %s" % (f["severity"], f["rule"], f["text"]) for f in alerts)
    if "proto" in event:            # a connection event (--conns)
        return printable("netsnoop on %s: %s -- %s" % (
            socket.gethostname(), conn_summary_text(event), why or "no findings"), 2000)
    return printable("netsnoop on %s: pid %d (ppid %d, user %s) %s -- %s" % (
        socket.gethostname(), event["pid"], event["ppid"], event.get("user"),
        cmdline_text(event), why or "no findings"), 2000)


def conn_summary_text(event):
    """"listen tcp 0.0.0.0:8080 (pid 12 nc, uid 0)": a connection event for a person."""
    where = "[%s]:%s" % (event["local_address"], event["local_port"]) \
        if ":" in (event["local_address"] or "") \
        else "%s:%s" % (event["local_address"], event["local_port"])
    if event.get("remote_port"):
        where += " -> %s:%s" % (event["remote_address"], event["remote_port"])
    who = "uid %s" % event.get("uid")
    if event.get("pid") is not None:
        who = "pid %d %s, %s" % (event["pid"], event.get("comm"), who)
    return "%s %s %s (%s)" % (event["event"], event["proto"], where, who)


# --- secrets: never needed in argv ------------------------------------------------

def read_secret_file(path, what):
    """The first line of a file only its owner may read (0600), never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NetsnoopError("cannot read %s %s: it is a symbolic link (refused)"
                                % (what, path))
        raise NetsnoopError("cannot read %s %s: %s" % (what, path, err.strerror))
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise NetsnoopError("refusing %s %s: others may read it (chmod 600 %s)"
                                % (what, path, path))
        data = read_fd_all(fd)
    finally:
        os.close(fd)
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].strip():
        raise NetsnoopError("%s %s is empty" % (what, path))
    return lines[0].strip()


def redacted_url(url):
    """"https://hooks.slack.com/services/T0/B0/XYZ" -> "https://hooks.slack.com/..." (the
    path of a webhook is often its secret)."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    return "%s://%s/..." % (parts.scheme, parts.netloc.rpartition("@")[2])


# --- the senders ---------------------------------------------------------------

class WebhookSender(object):
    """One POST per event: the event's JSON (or ECS), or Slack's {"text": ...}."""
    name = "webhook"

    def __init__(self, url, form="json", ecs=False):
        # imported when asked for: urllib.request (http.client, ssl, email) adds ~7 MB of RSS (measured, Python 3.11)
        import urllib.parse
        import urllib.request
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise UsageError("--webhook needs an http:// or https:// URL, not %r"
                             % redacted_url(url))
        self.url, self.form, self.ecs = url, form, ecs
        self.request = urllib.request

    def describe(self):
        return "webhook %s" % redacted_url(self.url)

    def send(self, event):
        import urllib.error
        if self.form == "slack":
            body = json.dumps({"text": alert_text(event)})
        else:
            body = event_json(event, self.ecs)
        req = self.request.Request(self.url, data=body.encode("ascii"), method="POST",
                                   headers={"Content-Type": "application/json",
                                            "User-Agent": "netsnoop/" + __version__})
        try:
            with self.request.urlopen(req, timeout=SEND_TIMEOUT) as reply:
                reply.read(65536)
        except urllib.error.HTTPError as err:
            # 429 and 5xx may pass; any other refusal will not change by itself
            raise DeliveryError("HTTP %d" % err.code,
                                retry=err.code == 429 or err.code >= 500)
        except (OSError, ValueError) as err:
            raise DeliveryError(str(getattr(err, "reason", None) or err))

    def close(self):
        pass


def parse_syslog_target(text):
    """"unix:/dev/log" | "udp:HOST:PORT" | "tcp:[::1]:514" -> (kind, address); None: /dev/log."""
    if not text:
        return "unix", "/dev/log"
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind in ("udp", "tcp"):
        host, _, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host and port.isdigit() and 0 < int(port) < 65536:
            return kind, (host, int(port))
    raise UsageError("--syslog takes unix:PATH, udp:HOST:PORT or tcp:HOST:PORT, not %r" % text)


def syslog_message(event, ecs, hostname, procid):
    """RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG; MSG is the event's JSON
    (ASCII: json escapes the rest, so no BOM is needed)."""
    severity = SYSLOG_SEVERITY.get(event_level(event) or "info")
    return "<%d>1 %s %s netsnoop %d %s - %s" % (
        SYSLOG_FACILITY_USER * 8 + severity, iso_time(event["time"]),
        hostname or "-", procid, event.get("event") or "-", event_json(event, ecs))


class SyslogSender(object):
    """Every event to a syslog receiver: a unix socket (datagram, else stream), UDP,
    or TCP with octet-counting framing (RFC 6587: "LEN SP MSG")."""
    name = "syslog"

    def __init__(self, target, ecs=False):
        self.kind, self.address = parse_syslog_target(target)
        self.ecs = ecs
        self.sock = None
        self.stream = False
        self.hostname = socket.gethostname().split(".")[0][:255]
        if self.kind == "unix" and not os.path.exists(self.address):
            raise NetsnoopError("cannot send to syslog at %s: no such socket" % self.address)

    def describe(self):
        if self.kind == "unix":
            return "syslog unix:%s" % self.address
        return "syslog %s:%s:%d" % (self.kind, self.address[0], self.address[1])

    def _connect(self):
        if self.kind == "unix":
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(self.address)
                self.stream = False
            except OSError as err:
                sock.close()
                if err.errno != errno.EPROTOTYPE:
                    raise
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(self.address)
                self.stream = True
            return sock
        infos = socket.getaddrinfo(self.address[0], self.address[1], 0,
                                   socket.SOCK_DGRAM if self.kind == "udp"
                                   else socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.settimeout(SEND_TIMEOUT)
        try:
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        self.stream = self.kind == "tcp"
        return sock

    def send(self, event):
        data = syslog_message(event, self.ecs, self.hostname, os.getpid()).encode("ascii")
        try:
            if self.sock is None:
                self.sock = self._connect()
            if self.stream:
                self.sock.sendall(b"%d %s" % (len(data), data))
            else:
                self.sock.send(data)
        except OSError as err:
            self.close()            # connect afresh on the next attempt
            raise DeliveryError(err.strerror or str(err))

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class MailSender(object):
    """One mail per alert, through an SMTP server (STARTTLS when offered; a password is
    sent only over TLS or to a loopback server)."""
    name = "mail"

    def __init__(self, to, server, sender=None, user=None, password=None, ecs=False):
        self.host, self.port = parse_smtp_server(server)
        self.to = [addr.strip() for addr in to.split(",") if addr.strip()]
        self.sender = sender or "netsnoop@%s" % socket.gethostname()
        self.user, self.password, self.ecs = user, password, ecs

    def describe(self):
        return "mail to %s via %s:%d" % (", ".join(self.to), self.host, self.port)

    def message(self, event):
        from email.message import EmailMessage
        msg = EmailMessage()
        alerts = [f for f in event.get("findings") or () if f["severity"] != "info"]
        rules = ", ".join(sorted(set(f["rule"] for f in alerts))) or "event"
        if "proto" in event:        # a connection event (--conns)
            subject = "netsnoop %s on %s: %s" % (rules, socket.gethostname(),
                                                 conn_summary_text(event))
        else:
            subject = "netsnoop %s on %s: %s (pid %d)" % (
                rules, socket.gethostname(), event.get("comm"), event["pid"])
        msg["Subject"] = printable(subject, 200)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg.set_content(alert_text(event) + "\n\n" + json.dumps(
            ecs_event(event) if self.ecs else event, indent=1) + "\n")
        return msg

    def send(self, event):
        import smtplib
        try:
            with smtplib.SMTP(self.host, self.port, timeout=SEND_TIMEOUT) as smtp:
                smtp.ehlo()
                tls = smtp.has_extn("starttls")
                if tls:
                    import ssl
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    if not tls and not is_loopback(self.host):
                        raise DeliveryError("%s offers no STARTTLS: the password is not sent "
                                            "in clear" % self.host, retry=False)
                    smtp.login(self.user, self.password or "")
                smtp.send_message(self.message(event))
        except smtplib.SMTPResponseException as err:
            raise DeliveryError("SMTP %d" % err.smtp_code, retry=err.smtp_code < 500)
        except (smtplib.SMTPException, OSError) as err:
            raise DeliveryError(str(err) or type(err).__name__)

    def close(self):
        pass


def parse_smtp_server(text):
    """"mail.example.org" -> (host, 25); "[::1]:2525" or "127.0.0.1:2525" -> (host, 2525)."""
    host, port = text, "25"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("25" if not rest else "")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError("--smtp takes HOST[:PORT], not %r" % text)
    return host, int(port)


def findings_suffix(event):
    """The text feed's line ends with its warn and alert findings: "  !! alert rule: text"."""
    return "".join("  !! %s %s: %s" % (f["severity"], f["rule"], printable(f["text"], 300))
                   for f in event.get("findings") or () if f["severity"] != "info")


def is_loopback(host):
    try:
        import ipaddress
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the courier: a thread per output, so that one stuck receiver holds up no other --

class Courier(object):
    """Sends events through one sender in a thread of its own.

    submit() never blocks: an event that finds the queue full is dropped and
    counted.  A failed send is tried again after BACKOFF[i] (RETRIES times),
    then dropped and counted.  close() lets the queue drain for DRAIN_AT_EXIT
    seconds; what is still waiting or in flight then counts as dropped.
    """

    def __init__(self, sender, min_level=None, size=QUEUE_SIZE):
        import queue
        self.sender = sender
        self.min_level = min_level      # None: every event; else the lowest severity sent
        self.queue = queue.Queue(size)
        self.full = queue.Full
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.delivered = self.retried = self.dropped_full = self.gave_up = self.at_exit = 0
        self.pending = 0            # queued or being sent: what close() may still count
        self.closed = False
        self.last_error = None
        self.thread = threading.Thread(target=self._run, name="netsnoop-" + sender.name)
        self.thread.daemon = True
        self.thread.start()

    def wants(self, event):
        if self.min_level is None:
            return True
        level = event_level(event)
        return level is not None and SEVERITIES.index(level) >= SEVERITIES.index(self.min_level)

    def submit(self, event):
        if not self.wants(event):
            return
        with self.lock:
            try:
                self.queue.put_nowait(event)
                self.pending += 1
            except self.full:
                self.dropped_full += 1

    def _run(self):
        while not self.stopping.is_set():
            event = self.queue.get()
            if event is None:
                break
            delivered = self._deliver(event)
            with self.lock:
                if self.closed:
                    break           # close() has counted this one already
                self.pending -= 1
                if delivered:
                    self.delivered += 1
                else:
                    self.gave_up += 1

    def _deliver(self, event):
        for attempt in range(RETRIES + 1):
            try:
                self.sender.send(event)
                return True
            except DeliveryError as err:
                self.last_error = str(err)
                if not err.retry or attempt == RETRIES:
                    return False
            except Exception as err:    # noqa: BLE001 -- a sender's bug must not end the thread
                self.last_error = "%s: %s" % (type(err).__name__, err)
                return False
            with self.lock:
                self.retried += 1
            if self.stopping.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)]):
                return False
        return False

    def close(self, deadline):
        """Drain until `deadline` (monotonic), then count what is left as dropped."""
        try:
            self.queue.put_nowait(None)
        except self.full:
            pass
        while self.pending and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.closed = True
            self.at_exit = self.pending     # still queued, or being sent
        self.stopping.set()
        if not self.at_exit:
            self.sender.close()

    @property
    def dropped(self):
        return self.dropped_full + self.gave_up + self.at_exit

    def counts(self):
        return collections.OrderedDict((
            ("delivered", self.delivered), ("retried", self.retried), ("dropped", self.dropped),
            ("dropped_queue_full", self.dropped_full), ("dropped_failed", self.gave_up),
            ("dropped_at_exit", self.at_exit)))

    def report_line(self):
        line = "%s: %s: %d delivered, %d retried, %d dropped (%d queue full, %d failed, " \
               "%d left at exit)" % (PROG, self.sender.describe(), self.delivered, self.retried,
                                     self.dropped, self.dropped_full, self.gave_up, self.at_exit)
        if self.last_error:
            line += "; last error: %s" % printable(self.last_error, 200)
        return line


class Delivery(object):
    """The outputs asked for on the command line, each behind its Courier."""

    def __init__(self, couriers):
        self.couriers = couriers
        self.closed = False

    def submit(self, event):
        for courier in self.couriers:
            courier.submit(event)

    def close(self):
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + DRAIN_AT_EXIT
        for courier in self.couriers:
            courier.close(deadline)

    def counts(self):
        return collections.OrderedDict((c.sender.name, c.counts()) for c in self.couriers)

    def report_lines(self):
        return [c.report_line() for c in self.couriers]


def make_delivery(args):
    """The Delivery for --webhook, --syslog and --mail-to, or None without any."""
    couriers = []
    size = getattr(args, "queue_size", None) or QUEUE_SIZE
    try:
        if args.webhook_url:
            couriers.append(Courier(WebhookSender(args.webhook_url, args.webhook_format,
                                                  args.ecs), args.alert, size))
        if args.syslog is not None:
            couriers.append(Courier(SyslogSender(args.syslog, args.ecs), None, size))
        if args.mail_to:
            couriers.append(Courier(MailSender(args.mail_to, args.smtp, args.mail_from,
                                               args.smtp_user, args.smtp_password, args.ecs),
                                    args.alert, size))
    except BaseException:
        for courier in couriers:
            courier.close(time.monotonic())
        raise
    return Delivery(couriers) if couriers else None


def add_alert_options(p):
    """The findings and delivery options of --procs (build_parser calls this)."""
    g = p.add_argument_group("findings and where events go (with --procs or --conns)")
    g.add_argument("--baseline", metavar="FILE",
                   help="programs seen (JSON, created when absent): a new one is first-seen")
    g.add_argument("--alert", choices=SEVERITIES, default="warn", metavar="LEVEL",
                   help="lowest severity sent to --webhook and --mail-to: info, warn "
                        "(default) or alert")
    g.add_argument("--webhook", metavar="URL",
                   help="POST events at or above --alert (also NETSNOOP_WEBHOOK, "
                        "--webhook-file: keep the URL out of argv)")
    g.add_argument("--webhook-file", metavar="FILE", help="the webhook URL from FILE (0600)")
    g.add_argument("--webhook-format", choices=("json", "slack"), default="json",
                   help="json (the event, default) or slack ({\"text\": ...})")
    g.add_argument("--syslog", nargs="?", const="", metavar="TARGET",
                   help="every event to syslog (RFC 5424): unix:PATH, udp:HOST:PORT or "
                        "tcp:HOST:PORT (default unix:/dev/log)")
    g.add_argument("--mail-to", metavar="ADDR", help="mail events at or above --alert to ADDR")
    g.add_argument("--smtp", metavar="HOST[:PORT]", help="SMTP server for --mail-to")
    g.add_argument("--mail-from", metavar="ADDR", help="sender (default netsnoop@HOSTNAME)")
    g.add_argument("--smtp-user", metavar="USER",
                   help="SMTP login; the password from NETSNOOP_SMTP_PASSWORD or "
                        "--smtp-password-file")
    g.add_argument("--smtp-password-file", metavar="FILE", help="SMTP password from FILE (0600)")
    g.add_argument("--ecs", action="store_true",
                   help="JSON lines with Elastic Common Schema names (stdout, log, outputs)")
    g.add_argument("--queue-size", type=int, default=QUEUE_SIZE, metavar="N",
                   help="events waiting per output before they are dropped (default %d)"
                        % QUEUE_SIZE)


ALERT_OPTIONS = ("baseline", "webhook", "webhook_file", "syslog", "mail_to", "smtp",
                 "mail_from", "smtp_user", "smtp_password_file")


def check_alert_options(args):
    """Usage rules of the options above, and the secrets read (parse_args calls this)."""
    used = [name for name in ALERT_OPTIONS if getattr(args, name) is not None]
    feeds = args.procs or getattr(args, "conns", False)
    if args.baseline is not None and not args.procs:
        raise UsageError("--baseline goes with --procs")
    if (used or args.ecs) and not feeds:
        raise UsageError("--%s goes with --procs or --conns"
                         % (used[0] if used else "ecs").replace("_", "-"))
    if args.webhook and args.webhook_file:
        raise UsageError("give --webhook or --webhook-file, not both")
    if bool(args.mail_to) != bool(args.smtp):
        raise UsageError("--mail-to and --smtp go together")
    if (args.smtp_user or args.smtp_password_file or args.mail_from) and not args.mail_to:
        raise UsageError("--mail-from, --smtp-user and --smtp-password-file go with --mail-to")
    if args.queue_size < 1:
        raise UsageError("--queue-size must be at least 1")
    if args.syslog:
        parse_syslog_target(args.syslog)
    if args.ecs:
        args.json = True
    args.webhook_url = args.webhook
    if args.webhook_file:
        args.webhook_url = read_secret_file(args.webhook_file, "webhook file")
    elif not args.webhook and feeds and os.environ.get(SECRET_ENV["webhook"]):
        args.webhook_url = os.environ[SECRET_ENV["webhook"]].strip()
    args.smtp_password = None
    if args.smtp_password_file:
        args.smtp_password = read_secret_file(args.smtp_password_file, "SMTP password file")
    elif args.smtp_user:
        args.smtp_password = os.environ.get(SECRET_ENV["smtp"])
        if not args.smtp_password:
            raise UsageError("--smtp-user needs a password: NETSNOOP_SMTP_PASSWORD or "
                             "--smtp-password-file")


# ---------------------------------------------------------------------------
# Connection feed (--conns)
# ---------------------------------------------------------------------------
# Owns the --conns events (open, listen, close) and the loop that finds them,
# alone or interleaved with --procs.  May call the sock_diag parsers and the
# owners/bytes collection, ProcFeed, FeedOutput and event_matches.
#
# How (docs/conns.md has the measurements and the traps):
# - close: the kernel multicasts every TCP socket's destruction with its last
#   tcp_info (sock_diag groups, open to any user), so no close is missed; uid and
#   inode come zeroed, the cookie names the socket;
# - open/listen: a dump (states filtered in the kernel) compared with the one
#   before, by cookie.  A dump is taken when the TCP line of /proc/net/sockstat
#   moved (a pread of a kept-open fd, ~3 us: every connect, accept, listen and
#   close changes it), when a destroy arrived, and now and then to reconcile;
# - the owner: SocketOwners rescans only new processes and fd directories that
#   changed size; an accepted socket is in the dump before accept() returns its
#   fd, so an open without an owner waits up to OWNER_WAIT for one.

CONN_FAST = 0.001           # sockstat poll period while a dump may run at once ...
CONN_ACTIVE_FOR = 2.0       # ... for this long after a change
CONN_QUIET = 0.01           # ... when quiet (--interval overrides)
CLOSE_HOLD = 0.25           # a close waits this long for others: one wake-up per batch
                            # (at 200 closes/s: 2.0% of a core every 20 ms, 0.7% every 0.1 s
                            # on a fast VM; on a slow one 2.7-2.8% at 0.1 s, 2.2-2.3% at 0.25)
DUMP_SETTLE = 0.003         # a dump waits this long after the first open it is for, so
                            # that one dump sees a batch of opens (threads, accept)
CONN_RECONCILE = 10.0       # a dump of both families at least this often
OWNER_WAIT = 0.25           # how long an open waits for its owner's fd (a loaded machine)
# Dumps spend at most DUMP_SHARE of a core over time (CPU of the dumping thread),
# from a budget that lets DUMP_BURST seconds of them go at once.  At 100
# connections/s a dump per open would cost ~22% of a core; this holds the feed to
# ~1 dump a second there, while a burst (~27 dumps of one family) still sees
# the opens of connections living 20 ms or more (tests/test_conns.py).
DUMP_SHARE = 0.002
DUMP_BURST = 0.06
BOTH_FAMILIES = (socket.AF_INET, socket.AF_INET6)
UID_PASS = 0.05             # at most this often, every fd of a uid's processes is read again
CONN_HOLD = 0.05            # --procs --conns: events wait this long, to go out in time order
# the feed's dump: no TIME_WAIT (already destroyed) and no request sockets (a
# request's cookie is not the cookie of the socket accept() will return)
CONN_STATES = DIAG_LIVE_STATES & ~(1 << TCP_NEW_SYN_RECV) & ~(1 << 0x07)
DESTROY_GROUPS = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))
DESTROY_RCVBUF = 4 << 20


def open_destroy_listener(make=open_diag_socket):
    """A netlink socket on the TCP destroy groups of a namespace (make() opens a
    sock_diag socket in it: netsnoop's own by default)."""
    sock = make()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DESTROY_RCVBUF)
        sock.bind((0, DESTROY_GROUPS))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ConnSeen(object):
    """A socket the feed knows: its open event (or None: present at start) and owner."""
    __slots__ = ("event", "opened", "pending_until", "sock")

    def __init__(self, event, opened, pending_until=None):
        self.event, self.opened, self.pending_until = event, opened, pending_until
        self.sock = None        # the DiagSocket last seen, while waiting for an owner


def snmp_tcp_opens(data):
    """/proc/net/snmp (bytes) -> Tcp ActiveOpens + PassiveOpens.  The two Tcp lines
    (names, then values) only: parse_snmp of the whole file costs ~10 times more,
    and the feed asks after every batch of closes."""
    head = data.find(b"\nTcp: ")
    if head < 0:
        raise OSError(errno.EIO, "no Tcp line in /proc/net/snmp")
    lines = data[head + 1:].split(b"\n", 2)        # names, then values
    row = dict(zip(lines[0].split(), lines[1].split() if len(lines) > 1 else ()))
    try:
        return int(row[b"ActiveOpens"]) + int(row[b"PassiveOpens"])
    except (KeyError, ValueError):
        raise OSError(errno.EIO, "no Tcp opens in /proc/net/snmp")


def conn_proto(sock):
    return "tcp6" if sock.family == socket.AF_INET6 else "tcp"


class ConnScanner(object):
    """Finds TCP opens, listens and closes in netsnoop's network namespace.

    step() waits (at most `limit` seconds) and returns event dicts.  Counts for the
    summary: opens, listens, closes, closes_unseen (closes whose open was never
    seen), present (sockets there at start), lost (destroy messages the kernel
    dropped: ENOBUFS on a full receive buffer)."""

    def __init__(self, procfs, slowest=None, pid="self"):
        """pid: whose network namespace to watch (another one than netsnoop's needs root)."""
        self.procfs = procfs
        self.pid = pid
        self.quiet = slowest or CONN_QUIET
        self.opens = self.listens = self.closes = self.closes_unseen = 0
        self.present = self.lost = self.unbound = 0
        self.known = {}             # cookie -> ConnSeen
        self.owners = SocketOwners(procfs)
        self.cgroups = CgroupNames()
        self.diag = self.destroy = None
        self.stat_fds = {}          # "sockstat", "sockstat6", "snmp" -> kept-open fd
        self.inuse = {}             # family -> TCP inuse of sockstat / sockstat6
        self.active_opens = None    # Tcp ActiveOpens + PassiveOpens of /proc/net/snmp
        self.pending = set()        # cookies of opens waiting for their owner
        self.want = set()           # families to dump once the gap between dumps is over
        self.budget, self.budget_at = DUMP_BURST, time.monotonic()    # seconds of dumping
        self.last_change = self.last_dump = self.want_since = 0.0
        self.dumps = 0
        self.budget_spent = False   # the last poll found the dump budget spent
        self.dump_cost = 0.0
        self.recent = collections.OrderedDict()     # pids that owned the last opens
        self.netns_of = {}          # pid -> its network namespace, read once
        self.own_netns = procfs.netns(pid)
        self.uid_pass = 0.0         # when processes were last rescanned by uid
        self.short_slice = None     # asked for by the first step(), in the thread that runs it

    def start(self):
        try:
            make = self._socket_maker()
            self.destroy = open_destroy_listener(make)
            self.diag = (make(), threading.Lock())
        except OSError as err:
            self.close()
            raise NetsnoopError("cannot open sock_diag (NETLINK_SOCK_DIAG): %s"
                                % (err.strerror or err))
        for name in ("sockstat", "sockstat6", "snmp"):
            try:
                self.stat_fds[name] = _open_ro(self.procfs.path(self.pid, "net", name))
            except OSError:
                pass                # IPv6 off; without any: dumps by the clock only
        self._inuse_moved()
        self._opens_moved()
        self.owners.scan(pids=self.local_pids())
        for sock in self._dump():
            self.known[sock.cookie] = ConnSeen(self._event("open", sock), None)
            self.present += 1
        return self.present

    def _socket_maker(self):
        """-> a function opening a sock_diag socket in the watched namespace."""
        if self.pid == "self" or self.own_netns == self.procfs.netns("self"):
            return open_diag_socket
        if self.own_netns is None or os.geteuid() != 0:
            raise OSError(errno.EPERM, "the connections of another network namespace "
                          "need root (sock_diag answers for the caller's own)")
        path = self.procfs.path(self.pid, "ns", "net")
        return lambda: open_diag_socket_in(path)

    def close(self):
        for sock in (self.destroy, self.diag[0] if self.diag else None):
            if sock is not None:
                sock.close()
        for fd in self.stat_fds.values():
            _close(fd)
        self.stat_fds = {}
        self.destroy = self.diag = None

    def _dump_gap(self, now):
        """Seconds until a dump may run.  Each dump walks the kernel's whole TCP hash
        (~2.2 ms per family on a 262,144-bucket hash, however few sockets the
        namespace has), so dumps spend at most DUMP_SHARE of a core over time,
        from a budget that lets a burst of DUMP_BURST seconds of dumps go at once."""
        self.budget = min(DUMP_BURST, self.budget + (now - self.budget_at) * DUMP_SHARE)
        self.budget_at = now
        return 0.0 if self.budget >= 0 else -self.budget / DUMP_SHARE

    def _families_with_sockets(self):
        """A dump sees only sockets alive at its time: a family whose inuse is 0 has
        none (IPv6 is often unused: its walk of the hash is saved)."""
        return [f for f in BOTH_FAMILIES if self.inuse.get(f, -1) != 0]

    def _inuse_moved(self):
        """The families whose count of hashed TCP sockets grew (a connect, accept or
        listen; a close lowers it and needs no dump): "TCP: inuse 5 ..." in sockstat,
        "TCP6: inuse 3" in sockstat6."""
        moved = []
        for name, family, head in (("sockstat", socket.AF_INET, b"TCP: inuse "),
                                   ("sockstat6", socket.AF_INET6, b"TCP6: inuse ")):
            fd = self.stat_fds.get(name)
            if fd is None:
                continue
            data = os.pread(fd, 4096, 0)
            at = data.find(head)
            try:
                count = int(data[at + len(head):].split(None, 1)[0]) if at >= 0 else -1
            except (ValueError, IndexError):
                count = -1
            before = self.inuse.get(family)
            self.inuse[family] = count
            if before is not None and (count > before or count < 0):
                moved.append(family)
        return moved

    def _opens_moved(self):
        """Did Tcp ActiveOpens + PassiveOpens of /proc/net/snmp move?  (Asked only after
        a close: an open and a close between two polls leave inuse as it was.)"""
        fd = self.stat_fds.get("snmp")
        if fd is None:
            return True
        try:
            opens = snmp_tcp_opens(_pread_all(fd))
        except OSError:
            return True
        moved, self.active_opens = opens != self.active_opens, opens
        return moved

    def _dump(self, families=(socket.AF_INET, socket.AF_INET6)):
        started = time.monotonic()
        cpu = time.thread_time()        # the kernel's walk of its hash counts here
        try:
            found = diag_dump(self.diag, CONN_STATES, families)
        except OSError as err:
            raise NetsnoopError("sock_diag dump failed: %s" % (err.strerror or err))
        self.last_dump = time.monotonic()
        self.dump_cost = time.thread_time() - cpu
        self.budget -= self.dump_cost
        self.dumps += 1
        self._opens_moved()         # the opens counted so far are in this dump
        self.last_change = started
        return found

    # -- the loop --

    def step(self, limit=MAX_WAIT):
        """Wait for something to tell (at most `limit` s) -> events.  Polls sockstat
        every CONN_FAST only while the budget has a few dumps left (a steady flow of
        connections spends it, then a poll every `quiet` is enough: a dump has to
        wait for the budget anyway); closes are held CLOSE_HOLD for the others of
        their batch, so a steady flow wakes the feed ~10 times a second."""
        if self.short_slice is None:
            # as the process feed does: at a wake-up the dump that sees a new
            # connection with its owner must not wait for a busy CPU's slice to end
            self.short_slice = request_short_slice()
        now = time.monotonic()
        deadline = now + max(0.0, limit)
        events, destroyed = [], []
        families = self.want         # moved before, not dumped yet (the gap)
        hold_until = None
        waited = False
        while True:
            fresh = self._read_destroys()
            if fresh:
                destroyed.extend(fresh)
                if hold_until is None:
                    hold_until = time.monotonic() + CLOSE_HOLD
            moved = self._inuse_moved()
            now = time.monotonic()
            if moved:
                if not families:
                    self.want_since = now
                families.update(moved)
                self.last_change = now
            budget_gap = self._dump_gap(now)
            gap = max(budget_gap, self.want_since + DUMP_SETTLE - now)
            if not families and gap <= 0 and (fresh or self.budget_spent) \
                    and self._opens_moved():
                # opened (and maybe closed) between two polls, or while the budget
                # was spent: sockstat was not watched then
                families.update(self._families_with_sockets())
            self.budget_spent = budget_gap > 0
            if now - self.last_dump >= max(CONN_RECONCILE, 50 * self.dump_cost):
                families.update(BOTH_FAMILIES)
            if (families and gap <= 0) or (self.pending and waited) or now >= deadline \
                    or (hold_until is not None and now >= hold_until):
                break
            if families or budget_gap > 0:
                wait = gap          # no dump before then: nothing to poll for
            elif self.pending or (self.budget > DUMP_BURST / 10
                                  and now - self.last_change < CONN_ACTIVE_FOR):
                wait = CONN_FAST        # (each poll costs ~25 us: 1,000 a second, 2.5%)
            else:
                wait = self.quiet
            if hold_until is not None:
                wait = min(wait, hold_until - now)
            select.select([] if hold_until is not None else [self.destroy], [], [],
                          max(0.0, min(wait, deadline - now)))
            waited = True
        if families and self._dump_gap(now) <= 0 and now >= self.want_since + DUMP_SETTLE:
            self.want = set()
            known = len(self.known)
            self._compare(self._dump(sorted(families)), now, events,
                          whole=len(families) == 2)
            # a dump that found N new sockets is charged 1/N of its cost: the
            # budget holds back dumps that find nothing (connections shorter than
            # the gap), not those that pay off (a burst of longer connections)
            found = len(self.known) - known
            if found > 1:
                self.budget += self.dump_cost * (1 - 1.0 / found)
        elif self.pending:
            self._look_again(now, events)
        for sock in destroyed:
            self._closed(sock, events)
        return events

    def _read_destroys(self):
        out = []
        while True:
            try:
                data = self.destroy.recv(DIAG_RECV)
            except BlockingIOError:
                return out
            except OSError as err:
                if err.errno == errno.ENOBUFS:      # the kernel dropped some: say how many
                    self.lost += 1
                    continue
                raise
            out.extend(parse_diag_dump(data)[0])

    def _compare(self, dump, now, events, whole=True):
        """New cookies are opens (listens); an open without an owner yet waits a little.
        whole: both families were dumped, so a waiting open not in it is gone."""
        if whole and self.pending:
            present = set(sock.cookie for sock in dump)
            for cookie in [c for c in self.pending if c not in present]:
                self._emit_open(self.known[cookie], events)
        fresh = []
        for sock in dump:
            seen = self.known.get(sock.cookie)
            if seen is None:
                kind = "listen" if sock.state == TCP_LISTEN else "open"
                seen = self.known[sock.cookie] = ConnSeen(self._event(kind, sock), now)
            elif not seen.pending_until:
                continue
            # accepted but not yet taken by accept(): no inode, no fd to find yet
            seen.event["inode"] = sock.inode
            seen.sock = sock
            fresh.append((sock, seen))
        missing = [sock for sock, _ in fresh if sock.inode and not self.owners.owner(sock.inode)]
        if missing:
            self._find_owners(missing, now)
        for sock, seen in fresh:
            found = self.owners.owner(sock.inode) if sock.inode else None
            if found is not None:
                self._set_owner(seen.event, found)
            elif seen.pending_until is None:
                seen.pending_until = now + OWNER_WAIT
                self.pending.add(sock.cookie)
                continue
            elif now < seen.pending_until:
                continue
            self._emit_open(seen, events)

    def local_pids(self):
        """The processes in netsnoop's network namespace: a socket belongs to the
        namespace its maker was in, so only they are searched for owners (the
        namespace of each PID read once: ~1,000 processes of other namespaces
        would otherwise cost every search ~10 ms).  Unknown namespace: searched."""
        try:
            pids = PythonBackend().list_pids(self.procfs.root)
        except OSError:
            return []
        netns_of = {}
        for pid in pids:
            ns = self.netns_of.get(pid, False)
            if ns is False:
                ns = self.procfs.netns(pid)
            netns_of[pid] = ns
        self.netns_of = netns_of
        return [pid for pid, ns in netns_of.items() if ns is None or ns == self.own_netns]

    def _look_again(self, now, events):
        """The opens waiting for an owner, looked up one by one (a dump would walk the
        whole hash for them): an accepted socket gets its inode from accept()."""
        waiting = [self.known[c] for c in self.pending]
        try:
            current = diag_lookup(self.diag, [seen.sock for seen in waiting])
        except OSError as err:
            raise NetsnoopError("sock_diag lookup failed: %s" % (err.strerror or err))
        for seen in waiting:
            if seen.event["cookie"] not in current:
                self._emit_open(seen, events)       # gone: its close follows
        self._compare(list(current.values()), now, events, whole=False)

    def _find_owners(self, socks, now):
        """Look for the owners of new sockets at bounded cost, cheapest first: the
        processes that owned the last opens (a client in a loop reuses the same fd
        numbers, so its fd count does not move), then new processes and fd
        directories whose size changed, then (at most every UID_PASS seconds) every
        process of the sockets' uids."""
        owners = self.owners

        def all_found():
            return all(owners.owner(sock.inode) for sock in socks)

        if self.recent and owners.rescan(list(self.recent)) and all_found():
            return
        local = self.local_pids()
        owners.scan(changed_only=True, pids=local)
        if not all_found() and now - self.uid_pass >= UID_PASS:
            self.uid_pass = now
            for uid in set(sock.uid for sock in socks if not owners.owner(sock.inode)):
                owners.rescan(owners.pids_of_uid(uid, local))

    def _emit_open(self, seen, events):
        seen.pending_until = None
        self.pending.discard(seen.event["cookie"])
        if seen.event["event"] == "listen":
            self.listens += 1
        else:
            self.opens += 1
        events.append(seen.event)

    def _set_owner(self, event, found):
        pid, comm, _holders = found
        self.recent.pop(pid, None)
        self.recent[pid] = True
        if len(self.recent) > 8:
            self.recent.popitem(last=False)
        event["pid"], event["comm"] = pid, comm
        event["cmdline"] = read_proc_cmdline(self.procfs, pid)

    def _event(self, kind, sock, when=None):
        event = collections.OrderedDict(event=kind, time=round(when or time.time(), 6))
        event.update((
            ("proto", conn_proto(sock)), ("local_address", sock.local_address),
            ("local_port", sock.local_port), ("remote_address", sock.remote_address),
            ("remote_port", sock.remote_port), ("state", state_name(sock.state)),
            ("uid", sock.uid), ("inode", sock.inode), ("cookie", sock.cookie),
            ("pid", None), ("comm", None), ("cmdline", None),
            ("cgroup", self.cgroups.path(sock.cgroup)), ("bytes_sent", sock.bytes_sent),
            ("bytes_received", sock.bytes_received), ("duration", None)))
        event["findings"] = [new_listener_finding(event)] if kind == "listen" else []
        return event

    def _closed(self, sock, events):
        """A destroy message -> a close event, with the open's owner when it was seen."""
        seen = self.known.pop(sock.cookie, None)
        if seen is None and sock.local_port == 0:
            self.unbound += 1           # never bound nor connected: no connection to tell
            return
        if seen is not None and seen.pending_until:
            self._emit_open(seen, events)   # still without an owner: out before its close
        event = self._event("close", sock)
        if seen is None:
            self.closes_unseen += 1
        else:
            opened = seen.event
            for key in ("uid", "inode", "pid", "comm", "cmdline", "cgroup"):
                event[key] = opened[key]
            if seen.opened is not None:
                event["duration"] = round(event["time"] - opened["time"], 6)
        self.closes += 1
        events.append(event)


def new_listener_finding(event):
    """`new-listener`: a TCP port opened for listening; warn when other hosts can reach it."""
    address = event["local_address"]
    local = is_loopback(address)
    where = hostport(address, event["local_port"])
    if address in ("0.0.0.0", "::"):
        where += " (every address)"
    return collections.OrderedDict((
        ("severity", "info" if local else "warn"), ("rule", "new-listener"),
        ("text", "listens on %s%s" % (where, "" if local else ", reachable from other hosts"))))


def conn_text(event):
    """A connection event -> one line: time, event, endpoints, state, owner, bytes."""
    parts = [clock_text(event["time"]), "%-6s" % event["event"], event["proto"],
             hostport(event["local_address"], event["local_port"])]
    if event["remote_port"]:            # a listener has no peer
        parts += ["->", hostport(event["remote_address"], event["remote_port"])]
    parts.append(event["state"])
    if event["pid"] is not None:
        parts.append("pid %d %s" % (event["pid"], printable(event["comm"] or "?", 32)))
        if event.get("cmdline"):
            parts.append(printable(" ".join(event["cmdline"]), CELL_LIMIT))
    else:
        parts.append("uid %s" % ("?" if event["uid"] is None else event["uid"]))
    if event["event"] == "close" and event["bytes_sent"] is not None:
        parts.append("sent %s recv %s" % (human_bytes(event["bytes_sent"]),
                                          human_bytes(event["bytes_received"])))
        if event["duration"] is not None:
            parts.append("%.3fs" % event["duration"])
    return " ".join(parts)


def conn_event_matches(event, regex):
    """--filter on a connection: command line, name, addresses and ports."""
    if regex is None:
        return True
    text = " ".join([" ".join(event.get("cmdline") or []), event.get("comm") or "",
                     hostport(event["local_address"], event["local_port"]),
                     hostport(event["remote_address"], event["remote_port"])])
    return bool(regex.search(text))


class ConnFeedOutput(FeedOutput):
    """FeedOutput for --conns (and --procs --conns): each event in its own shape."""

    def emit(self, event):
        self.emit_all([event])

    def emit_all(self, events):
        """The events in one write (a flush per line costs a system call each: at
        200 closes a second, more than the rest of a close's handling)."""
        lines = []
        for event in events:
            if "proto" not in event:
                if lines:
                    self.write("\n".join(lines))
                    lines = []
                FeedOutput.emit(self, event)
                continue
            if conn_event_matches(event, self.regex):
                lines.append(event_json(event, self.ecs) if self.json
                             else conn_text(event) + findings_suffix(event))
                if self.delivery is not None:
                    self.delivery.submit(event)
        if lines:
            self.write("\n".join(lines))

    def conn_summary(self, conns, procs=None):
        if not self.json:
            return
        out = collections.OrderedDict(event="summary")
        if procs is not None:
            out.update((("seen", procs.seen), ("missed", procs.missed),
                        ("backend", procs.backend)))
            if self.rules is not None:
                out["findings_cost_us"] = self.rules.cost_us
        if self.delivery is not None:
            out["delivery"] = self.delivery.counts()
        out.update((("conns_open", conns.opens), ("conns_listen", conns.listens),
                    ("conns_close", conns.closes), ("conns_close_open_unseen", conns.closes_unseen),
                    ("conns_present", conns.present), ("conns_lost", conns.lost)))
        self.write(event_json(out, self.ecs))

    def conn_report(self, conns, alone=True):
        """The counts on stderr (alone: without --procs, whose report tells the outputs')."""
        try:
            sys.stderr.write(
                "%s: %d connection%s opened, %d listener%s, %d closed (%d whose open was not "
                "seen, %d present at start)%s\n" % (
                    PROG, conns.opens, "" if conns.opens == 1 else "s", conns.listens,
                    "" if conns.listens == 1 else "s", conns.closes, conns.closes_unseen,
                    conns.present,
                    "; %d destroy message batches lost (receive buffer full)" % conns.lost
                    if conns.lost else ""))
            if alone and self.delivery is not None:
                for line in self.delivery.report_lines():
                    sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass


def run_conns(args, procfs):
    """--conns (with --procs: both feeds in one stream, in time order)."""
    output = ConnFeedOutput(args)
    conns = ConnScanner(procfs, args.interval)
    procs = None
    started = False
    try:
        if args.procs:              # the process events' findings, as --procs
            output.rules = ProcRules(procfs, getattr(args, "baseline", None))
            output.rules.start()
        # --webhook, --syslog, --mail-to: connection events too (new-listener findings)
        output.delivery = make_delivery(args) if hasattr(args, "webhook_url") else None
        with _StopFlag() as stop:
            present = conns.start()
            started = True
            if args.procs:
                procs = ProcFeed(procfs, args.backend)
            sys.stderr.write("%s: watching TCP connections (%d present)%s; Ctrl+C ends\n" % (
                PROG, present, " and new processes" if procs else ""))
            sys.stderr.flush()
            deadline = time.monotonic() + args.duration if args.duration else None
            held = []
            while not stop.stopped:
                left = STOP_CHECK if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                events = conns.step(min(left, STOP_CHECK, CONN_HOLD if procs else 1.0))
                if procs is None:
                    output.emit_all(events)
                    continue
                if procs.error:
                    raise NetsnoopError(procs.error)
                held.extend(events + [output.rules.apply(e) for e in procs.poll()])
                held = _emit_in_order(output, held, time.time() - CONN_HOLD)
            # what the kernel sent before the stop (destroys queued meanwhile) still goes out
            last = conns.step(0)
            if procs is None:
                output.emit_all(last)
            else:
                held.extend(last + [output.rules.apply(e) for e in procs.poll()])
                _emit_in_order(output, held, float("inf"))
        output.finish_delivery()
        output.conn_summary(conns, procs.scanner if procs else None)
    finally:
        output.finish_delivery()
        if started:
            output.conn_report(conns, alone=procs is None)
            if procs is not None:
                output.report(procs.scanner)
        if procs is not None:
            procs.close()
        conns.close()
        try:
            if output.rules is not None:
                output.rules.close()        # the baseline is saved
        finally:
            output.close()
    return EXIT_OK


class ConnFeed(SessionFeed):
    """Connection events of PID's network namespace for the session (ConnScanner)."""
    what = "connection feed"

    def __init__(self, procfs, pid):
        SessionFeed.__init__(self, ConnScanner(procfs, pid=pid), "netsnoop-conns")


def _emit_in_order(output, events, until):
    """Emit the events older than `until` in time order; return the others."""
    events.sort(key=lambda e: e["time"])
    later = [e for e in events if e["time"] > until]
    output.emit_all(events[:len(events) - len(later)])
    return later


# ---------------------------------------------------------------------------
# Views: tab data to tables of text rows (pure)
# ---------------------------------------------------------------------------

Column = collections.namedtuple("Column", "title align")     # align: "<" or ">"
Row = collections.namedtuple("Row", "cells role key")         # role: None, owned, warn, alert, info
Table = collections.namedtuple("Table", "title columns rows notes")

L, R = "<", ">"
CELL_LIMIT = 200        # longest cell shown; the rest is cut visibly


def hostport(address, port):
    """("::1", 22) -> "[::1]:22"; ("10.0.0.5", 22) -> "10.0.0.5:22"."""
    if ":" in address:
        return "[%s]:%s" % (address, port)
    return "%s:%s" % (address, port)


def _ownership_notes(data):
    if data.get("owned_known", True):
        return []
    return ["ownership unknown: %s" % data.get("owned_reason", "")]


def _read_notes(data, explained=()):
    """Notes on missing files and skipped lines; `explained` files have a note of their own."""
    notes = []
    missing = data.get("files_missing") or []
    missing = [name for name in missing if name not in explained]
    if missing:
        notes.append("not present: %s" % ", ".join(missing))
    skipped = data.get("skipped_lines")
    if skipped:
        notes.append("%s skipped" % plural(skipped, "damaged line"))
    return notes


def ss_state(sock):
    """The state as ss prints it in a table: an unconnected udp/raw/icmp socket is
    UNCONN (the JSON keeps the kernel's CLOSE, as the README says)."""
    if sock["state"] == "CLOSE" and not sock["proto"].startswith("tcp"):
        return "UNCONN"
    return sock["state"]


def socket_table(tab, data, prev=None, dt=None):
    port_title = {"raw": "Proto", "icmp": "Id"}.get(tab, "Port")
    columns = [Column("Netid", L), Column("State", L), Column("Recv-Q", R),
               Column("Send-Q", R), Column("Local Address:" + port_title, L),
               Column("Peer Address:Port", L), Column("UID", R), Column("Inode", R),
               Column("Own", L), Column("Process", L)]
    byte_cells = socket_byte_cells(data, prev, dt)
    if byte_cells is not None:
        columns += byte_cells.columns
    rows = []
    for s in data["sockets"]:
        cells = [s["proto"], ss_state(s), str(s["rx_queue"]),
                 # a listener's Send-Q is "-": ss shows its backlog there, /proc does not give it
                 "-" if s["state"] == "LISTEN" else str(s["tx_queue"]),
                 hostport(s["local_address"], s["local_port"]),
                 hostport(s["remote_address"], s["remote_port"] or "*"),
                 str(s["uid"]), str(s["inode"]), "*" if s["owned"] else "",
                 owner_cell(s)]
        if byte_cells is not None:
            cells += byte_cells(s)
        rows.append(Row(
            cells,
            "owned" if s["owned"] else None,
            (s["proto"], s["local_address"], s["local_port"], s["remote_address"],
             s["remote_port"], s["inode"])))
    notes = _ownership_notes(data) + owner_notes(data) + _read_notes(data)
    count = plural(len(rows), "socket") + " in the namespace"
    if data.get("owned_known", True):
        owned = sum(1 for s in data["sockets"] if s["owned"])
        notes.insert(0, "%s, %d owned by the process (*)" % (count, owned))
    else:
        notes.insert(0, count + ", which of them the process holds is unknown")
    return Table(tab, columns, rows, notes)


def counter_table(title, counters, prev=None, nonzero=True):
    """{Counter: int} -> a two- or three-column table (with "Change" when prev is given)."""
    columns = [Column("Counter", L), Column("Value", R)]
    if prev is not None:
        columns.append(Column("Change", R))
    rows, hidden = [], 0
    for name, value in counters.items():
        if nonzero and not value:
            hidden += 1
            continue
        cells = [name, str(value)]
        role = None
        if prev is not None:
            change = value - prev.get(name, value)
            cells.append("%+d" % change if change else "")
            role = "changed" if change else None
        rows.append(Row(cells, role, (title, name)))
    notes = ["%s not shown" % plural(hidden, "zero counter")] if hidden else []
    return Table(title, columns, rows, notes)


def icmp_tables(data, prev=None):
    tables = [socket_table("icmp", data)]
    for section, counters in data["counters"].items():
        before = prev["counters"].get(section) if prev else None
        tables.append(counter_table(section, counters, before))
    return tables


def arp_tables(data, prev=None):
    columns = [Column("IP address", L), Column("HW type", L), Column("Flags", L),
               Column("HW address", L), Column("Mask", L), Column("Device", L),
               Column("State", L)]
    rows = [Row([e["ip_address"], "0x%x" % e["hw_type"], "0x%x" % e["flags"],
                 e["hw_address"] or "(none)", e["mask"], e["device"], e["state"]],
                None, (e["ip_address"], e["device"]))
            for e in data["entries"]]
    tables = [Table("arp", columns, rows, _read_notes(data, explained=("stat/arp_cache",)))]
    if data.get("stats_available"):
        before = prev.get("stats") if prev else None
        tables.append(counter_table("arp_cache (summed over CPUs)", data["stats"],
                                    before, nonzero=False))
    else:
        tables[0].notes.append(data.get("stats_note", ""))
    return tables


def human_bytes(n):
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return ("%d%s" % (n, unit)) if unit == "B" else ("%.1f%s" % (n, unit))
        n /= 1024.0


def traffic_tables(data, prev=None, dt=None, live=False):
    """live (the session): the RX/s and TX/s columns from the first refresh, blank until
    a second one gives a rate, so that columns and a chosen sort do not shift."""
    rates = prev is not None and dt is not None and dt > 0     # a clock step gives no rate
    columns = [Column("Iface", L), Column("RX bytes", R)]
    if rates or live:
        columns.append(Column("RX/s", R))
    columns += [Column("RX pkts", R), Column("errs", R), Column("drop", R),
                Column("TX bytes", R)]
    if rates or live:
        columns.append(Column("TX/s", R))
    columns += [Column("TX pkts", R), Column("errs", R), Column("drop", R)]
    before = {i["name"]: i for i in prev["interfaces"]} if prev else {}
    rows = []
    for i in data["interfaces"]:
        old = before.get(i["name"])
        cells = [i["name"], human_bytes(i["rx_bytes"])]
        if rates or live:
            cells.append(_rate(i, old, "rx_bytes", dt) if rates else "")
        cells += [str(i["rx_packets"]), str(i["rx_errs"]), str(i["rx_drop"]),
                  human_bytes(i["tx_bytes"])]
        if rates or live:
            cells.append(_rate(i, old, "tx_bytes", dt) if rates else "")
        cells += [str(i["tx_packets"]), str(i["tx_errs"]), str(i["tx_drop"])]
        role = None
        if i["rx_errs"] or i["tx_errs"]:
            role = "warn"
        elif old is not None and any(i[k] != old.get(k) for k in DEV_FIELDS):
            role = "changed"
        rows.append(Row(cells, role, i["name"]))
    notes = _read_notes(data) + ([] if data.get("bytes_known", True) else owner_notes(data))
    return [Table("traffic", columns, rows, notes)] + process_traffic_tables(data, prev, dt)


def _rate(cur, old, key, dt):
    if old is None:
        return ""
    return human_bytes(max(0, cur[key] - old[key]) / dt) + "/s"


def stats_tables(data, prev=None):
    tables = []
    for section, counters in data.items():
        if isinstance(counters, dict):          # not skipped_lines, files_missing
            before = prev.get(section) if prev else None
            tables.append(counter_table(section, counters, before))
    notes = _read_notes(data)
    if not tables:      # no netstat at all: still say why the tab is empty
        tables.append(Table("netstat", [Column("Counter", L), Column("Value", R)], [], []))
    tables[0].notes.extend(notes)
    return tables


def routing_tables(data, prev=None):
    v4 = [Row([r["destination"], r["gateway"], r["mask"], r["flags"], str(r["metric"]),
               str(r["refcnt"]), str(r["use"]), r["iface"]], None,
              ("4", r["destination"], r["mask"], r["metric"], r["iface"]))
          for r in data["ipv4"]]
    v6 = [Row(["%s/%d" % (r["destination"], r["prefix_len"]), r["next_hop"], r["flags"],
               str(r["metric"]), str(r["refcnt"]), str(r["use"]), r["iface"]], None,
              ("6", r["destination"], r["prefix_len"], r["metric"], r["iface"]))
          for r in data["ipv6"]]
    return [
        Table("IPv4 routes (main table)",
              [Column("Destination", L), Column("Gateway", L), Column("Genmask", L),
               Column("Flags", L), Column("Metric", R), Column("Ref", R),
               Column("Use", R), Column("Iface", L)], v4, _read_notes(data)),
        Table("IPv6 routes (all tables)",
              [Column("Destination", L), Column("Next Hop", L), Column("Flag", L),
               Column("Met", R), Column("Ref", R), Column("Use", R), Column("If", L)],
              v6, []),
    ]


SOFTNET_COLUMNS = ("processed", "dropped", "time_squeeze", "cpu_collision",
                   "received_rps", "flow_limit_count", "backlog_len")


def analysis_tables(data, prev=None):
    found = findings(data, prev) if prev is not None else data["findings"]
    tables = [Table("findings", [Column("Severity", L), Column("Finding", L)],
                    [Row([f["severity"], f["text"]], f["severity"], f["text"])
                     for f in found], [])]
    present = [c for c in SOFTNET_COLUMNS if any(c in r for r in data["softnet"])]
    tables.append(Table(
        "softnet_stat (global, per CPU)",
        [Column("CPU", R)] + [Column(c, R) for c in present],
        [Row([str(r["cpu"])] + [str(r.get(c, "")) for c in present],
             "warn" if r.get("dropped") else None, ("cpu", r["cpu"]))
         for r in data["softnet"]], []))
    for group in ("snmp", "snmp6"):
        for section, counters in data[group].items():
            before = prev[group].get(section) if prev else None
            tables.append(counter_table(section, counters, before))
    tables[0].notes.extend(_read_notes(data))
    return tables


# --- processes: one row shape for the --procs feed, --once and the session ------

PROC_COLUMNS = (Column("Time", L), Column("PID", R), Column("PPID", R), Column("USER", L),
                Column("CMDLINE", L))       # a tuple: every procs Table shares it


def cmdline_text(rec):
    """The command line as one string, quoted where needed ("[comm]" when empty; a
    partial record: "[comm] exe"); not escaped."""
    if rec.get("partial"):
        return " ".join(part for part in ("[%s]" % rec["comm"] if rec.get("comm") else "",
                                          rec.get("exe") or "") if part) or "[?]"
    if not rec.get("cmdline"):
        return "[%s]" % rec.get("comm")
    return " ".join(shlex.quote(arg) for arg in rec["cmdline"])


def clock_text(when):
    """Epoch seconds -> local "HH:MM:SS.mmm"; None -> "?"."""
    if when is None:
        return "?"
    return "%s.%03d" % (time.strftime("%H:%M:%S", time.localtime(when)),
                        int(when * 1000) % 1000)


def proc_marks(rec):
    """What goes before the command line: "[ct] " for another container (pid or
    net namespace), "exec> " for a reported process that ran a new program,
    "partial " for one gone before its command line could be read."""
    return ("[ct] " if rec.get("container") else "") + (
        "exec> " if rec.get("event") == "exec" else "") + (
        "partial " if rec.get("partial") else "")


def proc_row(rec):
    """A feed event or a --once record -> cells for PROC_COLUMNS (not escaped):
    [HH:MM:SS.mmm, PID, PPID, USER, marks + CMDLINE].  The time is when the
    feed saw the process, or its start time for a record without one."""
    when = rec.get("time", rec.get("start_time"))
    return proc_cells(rec, when)


def proc_cells(rec, when):
    return [clock_text(when), _number_cell(rec["pid"]), _number_cell(rec["ppid"]),
            rec["user"] or "?", proc_marks(rec) + cmdline_text(rec)]


def _number_cell(value):
    """A PID or PPID cell: "?" when a partial record could not tell it."""
    return "?" if value is None else str(value)


def format_event(event):
    """An event -> "HH:MM:SS.mmm PID PPID USER CMDLINE" (escaped, marks before CMDLINE)."""
    stamp, pid, ppid, user, command = proc_row(event)
    return "%s %7s %7s %-8s %s" % (stamp, pid, ppid, printable(user, 32),
                                   printable(command, CELL_LIMIT * 10))


def procs_tables(data):
    """--once: {"processes": [record, ...]} -> [Table]; "depth" indents the tree.

    These processes were there before netsnoop looked, so the time shown
    is when each started (the same on every run), not when it was read.
    """
    rows = []
    for rec in data.get("processes", []):
        cells = proc_cells(rec, rec.get("start_time"))
        cells[-1] = "  " * max(0, rec.get("depth", 1) - 1) + cells[-1]
        rows.append(Row(cells, None, (rec["pid"], rec.get("start_time"))))
    notes = [plural(len(rows), "process", "processes")]
    if data.get("note"):
        notes.append(data["note"])
    return [Table("procs", PROC_COLUMNS, rows, notes)]


def tab_tables(tab, data, prev=None, dt=None, live=False):
    """Tab data (from collect_tab) -> [Table]; with prev and dt, changes and rates too;
    live: drawn by the session, which keeps columns for the rates to come."""
    if tab in ("tcp", "udp", "raw"):
        return [socket_table(tab, data, prev, dt)]
    if tab == "icmp":
        return icmp_tables(data, prev)
    if tab == "traffic":
        return traffic_tables(data, prev, dt, live)
    if tab == "procs":
        return procs_tables(data)
    return {"arp": arp_tables, "stats": stats_tables, "routing": routing_tables,
            "analysis": analysis_tables}[tab](data, prev)


def _char_width(ch):
    if ch == "\xad":                    # soft hyphen: terminals draw it
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text):
    """Terminal columns of (already printable) text: CJK takes two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(_char_width(ch) for ch in text)


def column_slice(text, start=0, stop=None):
    """The part of (already printable) text between terminal columns start and
    stop; half of a wide character becomes a blank, so what follows keeps its
    column, and combining marks stay with the character they follow."""
    if text.isascii():
        return text[start:stop]
    out, col, kept = [], 0, False
    for ch in text:
        width = _char_width(ch)
        if width == 0:
            if kept:
                out.append(ch)
            continue
        if stop is not None and col + width > stop:
            out.append(" " * max(0, min(stop - col, stop - start)))
            break
        kept = col >= start
        if kept:
            out.append(ch)
        elif col + width > start:
            out.append(" " * (col + width - start))
        col += width
    return "".join(out)


def _pad(cell, width, align):
    fill = " " * (width - text_width(cell))
    return fill + cell if align == R else cell + fill


def column_widths(columns, body):
    """Terminal columns each column needs: its title, or its widest (escaped) cell."""
    widths = [len(c.title) for c in columns]
    for cells in body:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], text_width(cell))
    return widths


def aligned(cells, columns, widths):
    """Escaped cells -> one line, each padded to its column, two blanks apart."""
    parts = [_pad(cell, width, col.align) for cell, col, width in zip(cells, columns, widths)]
    return "  ".join(parts).rstrip()


def format_table(table, limit=CELL_LIMIT):
    """A Table -> aligned text lines (title, header, rows, notes), like ss / route -n."""
    header = [c.title for c in table.columns]
    body = [[printable(cell, limit) for cell in row.cells] for row in table.rows]
    widths = column_widths(table.columns, body)
    out = ["== %s ==" % printable(table.title, limit),
           aligned(header, table.columns, widths)]
    out.extend(aligned(cells, table.columns, widths) for cells in body)
    out.extend("  (%s)" % printable(note) for note in table.notes if note)
    return out


# Counter sections the icmp tab and the analysis tab both show (from snmp and snmp6).
ICMP_SECTIONS = ("Icmp", "IcmpMsg", "Icmp6")


def snapshot_tables(snap):
    """Every tab's tables, in order; a section already printed by the icmp tab is not
    printed again by analysis (--tab all), a note says where it is."""
    for tab, data in snap["tabs"].items():
        tables = tab_tables(tab, data)
        if tab == "analysis" and "icmp" in snap["tabs"]:
            shown = [t.title for t in tables if t.title in ICMP_SECTIONS]
            tables = [t for t in tables if t.title not in ICMP_SECTIONS]
            if shown:
                tables[0].notes.append("%s: in the icmp tab above" % ", ".join(shown))
        for table in tables:
            yield table


def format_snapshot(snap):
    """The --once text: a heading, then every tab's tables."""
    netns = snap["netns"]
    if "netns_reason" in snap:
        netns += " (%s)" % snap["netns_reason"]
    lines = ["netsnoop %s: pid %d (%s), netns %s, %s" % (
        __version__, snap["pid"], printable(snap["comm"]), printable(netns),
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap["time"])))]
    for table in snapshot_tables(snap):
        lines.append("")
        lines.extend(format_table(table))
    return "\n".join(lines) + "\n"


# --- owners and TCP bytes: the Process column, tcp byte columns, traffic per process ---

def owner_cell(sock):
    """"sshd/812" (" +2" more holders), or "" when no readable process holds it."""
    if sock.get("pid") is None:
        return ""
    text = "%s/%d" % (sock.get("process") or "?", sock["pid"])
    holders = sock.get("holders") or 1
    return text + (" +%d" % (holders - 1) if holders > 1 else "")


def owner_notes(data):
    """One line each for owners and bytes that could not be known, and why."""
    notes = []
    if data.get("owners_known") is False:
        notes.append("owners unknown for some sockets: %s" % data.get("owners_reason"))
    if data.get("bytes_known") is False:
        notes.append("TCP bytes unknown: %s" % data.get("bytes_reason"))
    return notes


def _per_second(delta, dt):
    return human_bytes(max(0, delta) / dt) + "/s"


class SocketByteCells(object):
    """The tcp rows' Sent and Recv columns (and per-second rates against prev)."""

    def __init__(self, prev, dt):
        self.columns = [Column("Sent", R), Column("Recv", R)]
        self.before = None
        if prev is not None and dt and prev.get("bytes_known"):
            self.dt = dt
            self.before = {s["inode"]: s for s in prev["sockets"] if s.get("inode")}
            self.columns += [Column("Sent/s", R), Column("Recv/s", R)]

    def __call__(self, sock):
        sent, received = sock.get("bytes_sent"), sock.get("bytes_received")
        if sent is None:
            return [""] * len(self.columns)
        cells = [human_bytes(sent), human_bytes(received)]
        if self.before is not None:
            old = self.before.get(sock["inode"])
            if old is None or old.get("bytes_sent") is None:
                cells += ["", ""]
            else:
                cells += [_per_second(sent - old["bytes_sent"], self.dt),
                          _per_second(received - old["bytes_received"], self.dt)]
        return cells


def socket_byte_cells(data, prev, dt):
    """SocketByteCells for the tcp tab when sock_diag answered, else None."""
    if not data.get("bytes_known"):
        return None
    return SocketByteCells(prev, dt)


def traffic_rates(data, prev, dt):
    """{row key: (sent/s, received/s)} per process and per cgroup, from the byte
    counts of each socket (by cookie) since prev: a closed socket drops out
    without making a rate negative, a new one counts from 0."""
    now = getattr(data.get("processes"), "sockets", None)
    before = getattr(prev.get("processes"), "sockets", None) if prev else None
    if now is None or before is None or not dt:
        return None
    rates = collections.defaultdict(lambda: [0, 0])
    for cookie, (key, cgroup, sent, received) in now.items():
        old = before.get(cookie)
        d_sent = sent - old[2] if old else sent
        d_received = received - old[3] if old else received
        for target in (key, ("cgroup", cgroup)):
            rates[target][0] += max(0, d_sent)
            rates[target][1] += max(0, d_received)
    return {key: (s / dt, r / dt) for key, (s, r) in rates.items()}


def process_key(row):
    return ("pid", row["pid"]) if row.get("pid") is not None else ("uid", row["uid"])


def process_traffic_tables(data, prev=None, dt=None):
    """The traffic tab's TCP bytes per process and per cgroup (busiest first: by
    rate when there is one, nethogs' order, else by bytes)."""
    if "processes" not in data or not data.get("bytes_known"):
        return []           # (the traffic table's notes say why)
    rates = traffic_rates(data, prev, dt)
    rate_cols = [Column("Sent/s", R), Column("Recv/s", R)] if rates is not None else []

    def rate_cells(key):
        sent, received = rates.get(key, (0, 0))
        return [human_bytes(sent) + "/s", human_bytes(received) + "/s"]

    def order(rows, key_of):
        if rates is None:
            return rows
        return sorted(rows, key=lambda r: -sum(rates.get(key_of(r), (0, 0))))

    columns = [Column("PID", R), Column("Process", L), Column("UID", R), Column("Sockets", R),
               Column("Sent", R), Column("Recv", R)] + rate_cols + [Column("Cgroup", L)]
    rows = []
    for p in order(data["processes"], process_key):
        cells = ["-" if p["pid"] is None else str(p["pid"]),
                 p["comm"] or "(owner unknown)", str(p["uid"]), str(p["sockets"]),
                 human_bytes(p["bytes_sent"]), human_bytes(p["bytes_received"])]
        if rates is not None:
            cells += rate_cells(process_key(p))
        rows.append(Row(cells + [p["cgroup"] or ""], None, process_key(p)))
    notes = ["live TCP sockets only: bytes acked by the peer and bytes received"]
    tables = [Table("TCP per process", columns, rows, notes + owner_notes(data))]
    columns = [Column("Cgroup", L), Column("Sockets", R), Column("Sent", R),
               Column("Recv", R)] + rate_cols
    rows = []
    for g in order(data["cgroups"], lambda g: ("cgroup", g["cgroup"])):
        cells = [g["cgroup"] or "?", str(g["sockets"]), human_bytes(g["bytes_sent"]),
                 human_bytes(g["bytes_received"])]
        if rates is not None:
            cells += rate_cells(("cgroup", g["cgroup"]))
        rows.append(Row(cells, None, ("cgroup", g["cgroup"])))
    tables.append(Table("TCP per cgroup", columns, rows, []))
    return tables


# ---------------------------------------------------------------------------
# Curses session
# ---------------------------------------------------------------------------
# Collection and drawing are kept apart (htop's way): a refresh reads only
# the visible tab (collect_tab) and turns it into a TabView; drawing paints
# the visible lines of that view; keys go through one table to handlers that
# return an action (redraw, rescan, quit).  curses is imported only here, at
# run time, so the module imports without it and a box without it falls
# back to plain snapshots.

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL, MAX_INTERVAL = 0.2, 3600.0
FEED_POLL = 0.1             # seconds between polls of the process feed while procs is shown
MESSAGE_SECONDS = 6.0       # how long a message replaces the key hint
PROCS_KEPT = 2000           # newest process events kept for the procs tab
CONNS_KEPT = 2000           # newest connection events kept for the conns tab
# the session's tabs: the snapshot tabs (keys 1..9, 0), then the connection feed (key c)
SESSION_TABS = TABS + ("conns",)
TAB_KEYS = dict([(tab, str((i + 1) % 10)) for i, tab in enumerate(TABS)], conns="c")
PARENTS_KEPT = 50000        # ppids it remembers (for descendants) before it starts afresh
HSCROLL_STEP = 8            # columns per < or > press
ALIVE_CHECK = 1.0           # with long intervals, still notice PID's exit this soon
# At the default interval, refreshing may use at most this share of one core:
# on 20,000 sockets one refresh costs ~0.2 s of CPU (mostly reading and
# parsing), so the wait stretches instead.  An interval the user set is kept.
REFRESH_SHARE = 0.04

REDRAW, REPAINT, RESCAN, QUIT, NOTHING = "redraw", "repaint", "rescan", "quit", "nothing"

SORTABLE_TABS = ("tcp", "udp", "raw", "icmp", "arp", "traffic", "stats", "routing")
OWNABLE_TABLES = ("tcp", "udp", "raw", "icmp", "procs")   # tables whose rows PID may own
ROLE_MARKS = {"owned": "*", "changed": "+", "warn": "!", "alert": "!"}

KEY_HINT = ("q quit  ? help  1-0 tabs  / filter  s sort  o owned  < > pan  "
            ":set N  :tab NAME")

HELP_LINES = (                  # fits the 21 body lines of an 80x24 terminal
    "netsnoop session keys                         (any key closes this help)",
    "  1..9, 0, c        pick a tab (0 = procs, c = conns: connection events)",
    "  Left/Right, Tab   previous/next tab (also Shift-Tab)",
    "  Up/Down j/k       scroll one line; PgUp/PgDn a page; Home/End",
    "  < >               scroll sideways (also Shift-Left/Right)",
    "  /                 filter rows by substring (Enter keeps it, Esc clears)",
    "  s / S             sort by the next column / reverse the order",
    "  o                 only rows PID owns (sockets; procs: its descendants)",
    "  :set N            refresh every N seconds (0.2 .. 3600)",
    "  :tab NAME         go to tab NAME",
    "  q, Ctrl+D         quit",
    "",
    "Only ':' opens the command line (`set 6` typed bare would sort with s);",
    "a key with no use here does nothing.",
    "Marks: * owned by PID (on procs: a descendant), + changed since the",
    "last refresh, ! warning.  Rates are per second since the last refresh.",
    "`every 2s (5.5s)`: refreshing is costly here (big tables), so the default",
    "interval is stretched to keep the CPU low; an interval you :set is kept.",
)

# role: (colour name or None, attributes with colour, attributes in monochrome)
ROLE_STYLES = {
    "title": ("COLOR_CYAN", ("A_BOLD",), ("A_BOLD",)),
    "header": (None, ("A_BOLD",), ("A_BOLD",)),
    "selected": (None, ("A_REVERSE", "A_BOLD"), ("A_REVERSE",)),
    "status": (None, ("A_REVERSE",), ("A_REVERSE",)),
    "owned": ("COLOR_GREEN", ("A_BOLD",), ("A_BOLD",)),
    "changed": ("COLOR_YELLOW", (), ("A_UNDERLINE",)),
    "warn": ("COLOR_YELLOW", ("A_BOLD",), ("A_BOLD", "A_UNDERLINE")),
    "alert": ("COLOR_RED", ("A_BOLD",), ("A_REVERSE",)),
    "info": ("COLOR_CYAN", (), ()),
    "note": (None, ("A_DIM",), ()),
    "message": ("COLOR_RED", ("A_BOLD",), ("A_BOLD",)),
}


def format_interval(seconds):
    """2.0 -> "2s"; 0.5 -> "0.5s"."""
    return "%gs" % seconds


def parse_interval(text):
    """ "6", "0.5", "6s" -> seconds; ValueError with a message for anything else."""
    word = text.strip()
    if word.endswith("s"):
        word = word[:-1]
    try:
        value = float(word)
    except ValueError:
        raise ValueError("set: %r is not a number of seconds (try :set 2)"
                         % printable(text, 40))
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:       # also false for nan
        raise ValueError("set: the interval must be %s .. %s, not %s" % (
            format_interval(MIN_INTERVAL), format_interval(MAX_INTERVAL),
            printable(text, 40)))
    return value


def session_interval(value):
    """--interval (or the default) bounded to what a session can honour -> (seconds, note)."""
    if value is None:
        return DEFAULT_INTERVAL, None
    bounded = min(MAX_INTERVAL, max(MIN_INTERVAL, value))
    if bounded != value:
        return bounded, "interval bounded to %s" % format_interval(bounded)
    return value, None


# --- sorting -----------------------------------------------------------------

_NUMBER_CELL = re.compile(r"([-+]?\d+(?:\.\d+)?)([BKMGT]?)(?:/s)?\Z")
_UNIT = {"": 1, "B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _address_bytes(text):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            raw = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return bytes([len(raw)]) + raw
    return None


def cell_sort_key(cell):
    """A cell's text -> a key that orders numbers (1.5K), addresses (host:port) and text."""
    m = _NUMBER_CELL.match(cell)
    if m:
        return (0, float(m.group(1)) * _UNIT[m.group(2)], b"", 0, "")
    host, sep, port = cell.rpartition(":")
    if sep and port.isdigit() and host:
        raw = _address_bytes(host[1:-1] if host.startswith("[") else host)
        if raw is not None:
            return (1, 0, raw, int(port), "")
    raw = _address_bytes(cell)
    if raw is not None:
        return (1, 0, raw, 0, "")
    return (2, 0, b"", 0, cell)


# --- views ready to draw -------------------------------------------------------

def safe_cells(cells):
    """A row's cells escaped for the terminal; the common all-safe row costs one regex scan."""
    joined = "".join(cells)
    if len(joined) <= CELL_LIMIT and "\\" not in joined and not _UNSAFE.search(joined):
        return cells
    return [printable(c, CELL_LIMIT) for c in cells]


class Section(object):
    """One table as drawn: title, column header, the selected rows, notes, a blank line."""

    def __init__(self, table, rows):
        self.title = printable(table.title)
        self.columns = table.columns
        self.rows = rows                       # [(cells, role)]
        self.notes = ["(%s)" % printable(n) for n in table.notes if n]
        # terminal columns, not characters: CJK takes two, combining none
        widths = column_widths(table.columns, (cells for cells, _ in rows))
        self.widths = widths
        self.width = 2 + sum(widths) + 2 * (len(widths) - 1)
        self.count = 2 + len(rows) + len(self.notes) + 1

    def _text(self, cells):
        return aligned(cells, self.columns, self.widths)

    def header(self):
        return "  " + self._text([c.title for c in self.columns]), "header"

    def line(self, n):
        """Line n of this section -> (text, role, is_row)."""
        if n == 0:
            return "== %s ==" % self.title, "title", False
        if n == 1:
            text, role = self.header()
            return text, role, False
        n -= 2
        if n < len(self.rows):
            cells, role = self.rows[n]
            return ROLE_MARKS.get(role, " ") + " " + self._text(cells), role, True
        n -= len(self.rows)
        if n < len(self.notes):
            return "  " + self.notes[n], "note", True
        return "", None, False


class TabView(object):
    """One refresh of one tab, ready to draw.

    Escaping happens once per refresh; filtering and sorting once per change
    of (filter, sort, owned_only), so scrolling through 20,000 rows only
    formats the lines on screen.
    """

    def __init__(self, tables):
        self.tables = tables
        self.total = sum(len(t.rows) for t in tables)
        self._cells = [None] * len(tables)
        self._haystacks = [None] * len(tables)
        self._key = None
        self.sections = []
        self.lines = 0
        self.width = 0
        self.shown = 0

    def columns(self):
        return self.tables[0].columns if self.tables else []

    def _rows(self, i):
        if self._cells[i] is None:
            self._cells[i] = [(safe_cells(r.cells), r.role) for r in self.tables[i].rows]
        return self._cells[i]

    def _haystack(self, i):
        if self._haystacks[i] is None:
            self._haystacks[i] = [" ".join(cells).lower() for cells, _ in self._rows(i)]
        return self._haystacks[i]

    def layout(self, text_filter="", sort=None, owned_only=False):
        key = (text_filter, sort, owned_only)
        if key == self._key:
            return self.sections
        sections = []
        first = self.columns()
        needle = text_filter.lower()
        for i, table in enumerate(self.tables):
            rows = self._rows(i)
            if owned_only and table.title in OWNABLE_TABLES:
                rows = [r for r in rows if r[1] == "owned"]
            if needle:
                matching = [r for r, hay in zip(self._rows(i), self._haystack(i))
                            if needle in hay]
                rows = matching if rows is self._rows(i) else [
                    r for r in matching if r[1] == "owned"]
            if sort is not None:
                col, reverse = sort
                if col < len(table.columns) and col < len(first) \
                        and table.columns[col].title == first[col].title:
                    rows = sorted(rows, key=lambda r: cell_sort_key(r[0][col]),
                                  reverse=reverse)
            sections.append(Section(table, rows))
        if needle or owned_only:
            # while narrowing, tables with nothing left would only push matches down
            kept = [sec for sec in sections if sec.rows]
            sections = kept or sections[:1]
        self.sections = sections
        self.width = max([s.width for s in sections] or [0])
        self.lines = sum(s.count for s in sections)
        self.shown = sum(len(s.rows) for s in sections)
        self._key = key
        return sections

    def visible(self, start, count):
        """Lines start..start+count -> [(text, role)]; when the column header has
        scrolled away, it takes the top line's place."""
        out = []
        n = start
        for section in self.sections:
            if n >= section.count:
                n -= section.count
                continue
            while n < section.count and len(out) < count:
                text, role, is_row = section.line(n)
                if not out and is_row and count > 1:
                    text, role = section.header()     # in place of the top row
                out.append((text, role))
                n += 1
            if len(out) >= count:
                break
            n = 0
        return out


# --- the procs tab -------------------------------------------------------------

class FeedPane(object):
    """A tab fed by a live feed (ProcFeed, ConnFeed), started on first view.

    A feed that cannot start (no readable last-PID counter, no sock_diag) or
    stops on an error disables its tab, with the reason shown, instead of
    ending the session.  Subclasses say what the feed is and what to do with
    its events (take)."""
    what = "feed"

    def __init__(self, procfs, pid, kept):
        self.procfs = procfs
        self.pid = pid
        self.feed = None
        self.started = False
        self.problem = None
        self.events = collections.deque(maxlen=kept)

    def start(self):
        if self.started:
            return
        self.started = True
        try:
            self.feed = self.open_feed()
        except (NetsnoopError, OSError) as err:
            self.problem = "%s failed to start: %s" % (self.what, err)

    @property
    def active(self):
        return self.feed is not None

    def poll(self):
        """Take new events from the feed -> True when there were some."""
        if self.feed is None:
            return False
        events = self.feed.poll()
        self.take(events)
        return bool(events)


class ProcsPane(FeedPane):
    """The procs tab: a ProcFeed; rows of PID's descendants are marked."""
    what = "process feed"

    def __init__(self, procfs, pid, backend="auto"):
        # a thread ID given as PID: its process
        FeedPane.__init__(self, procfs, thread_group(procfs, pid), PROCS_KEPT)
        self.backend = backend
        self.parents = {}

    def open_feed(self):
        return ProcFeed(self.procfs, backend=self.backend)

    def take(self, events):
        if len(self.parents) > PARENTS_KEPT:    # a long session: read again what is needed
            self.parents.clear()
        # every parent first: a child listed before its parent (PIDs wrapped) still
        # finds it, even when the parent has exited since and its stat is gone
        for event in events:
            self.parents[event.get("pid")] = event.get("ppid")
        for event in events:
            self.events.appendleft(dict(event, descendant=self.descends(event.get("pid"))))

    def descends(self, pid):
        """True when pid is PID or its ppid chain reaches PID.

        A chain that ends at 0 came from the kernel (kthreadd and its threads) or
        from outside the PID namespace.  A chain broken by a parent that exited
        before it could be read ends nowhere known, except when PID is the
        namespace's init (1): the orphans of its tree are re-parented within it,
        so every process but those of the kernel descends from it.
        """
        seen = set()
        while pid not in seen:
            if pid == self.pid:
                return True
            seen.add(pid)
            parent = self.parent_of(pid)
            if parent is None:
                return self.pid == 1
            if parent == 0:
                return False
            pid = parent
        return False

    def parent_of(self, pid):
        """The ppid the feed reported, or for a process born before the feed (a child
        of PID that was already running) the one in its /proc/N/stat."""
        if pid not in self.parents:
            st = read_proc_stat(self.procfs, pid)
            self.parents[pid] = st.ppid if st is not None else None
        return self.parents[pid]

    def tables(self):
        rows = [Row(proc_row(e), "owned" if e["descendant"] else None,
                    (e["pid"], e["start_time"]))
                for e in self.events]
        notes = []
        problem = self.problem or (self.feed.error if self.feed is not None else None)
        if problem:
            notes.append(problem)       # the feed's thread stores why it stopped
        if self.feed is not None:
            notes.append("newest first; * = descendant of %d; backend %s, seen %d, "
                         "missed %d" % (self.pid, self.feed.backend, self.feed.seen,
                                        self.feed.missed))
        return [Table("procs", PROC_COLUMNS, rows, notes)]

    def close(self):
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.close()


# --- the conns tab ---------------------------------------------------------------

CONN_COLUMNS = (Column("Time", L), Column("Event", L), Column("Proto", L), Column("Local", L),
                Column("Remote", L), Column("State", L), Column("PID", R), Column("Process", L),
                Column("Sent", R), Column("Recv", R), Column("Duration", R))


def conn_cells(event):
    """A connection event -> cells for CONN_COLUMNS (not escaped)."""
    closed = event["event"] == "close" and event["bytes_sent"] is not None
    return [clock_text(event["time"]), event["event"], event["proto"],
            hostport(event["local_address"], event["local_port"]),
            hostport(event["remote_address"], event["remote_port"])
            if event["remote_port"] else "",
            event["state"], "" if event["pid"] is None else str(event["pid"]),
            event["comm"] or ("uid %s" % event["uid"] if event["uid"] is not None else ""),
            human_bytes(event["bytes_sent"]) if closed else "",
            human_bytes(event["bytes_received"]) if closed else "",
            "%.3fs" % event["duration"] if event["duration"] is not None else ""]


class ConnsPane(FeedPane):
    """The conns tab: a ConnFeed on PID's network namespace, newest event first."""
    what = "connection feed"

    def __init__(self, procfs, pid):
        FeedPane.__init__(self, procfs, pid, CONNS_KEPT)

    def open_feed(self):
        return ConnFeed(self.procfs, self.pid)

    def take(self, events):
        self.events.extendleft(events)

    def tables(self):
        rows = []
        for event in self.events:
            warn = any(f["severity"] != "info" for f in event["findings"])
            role = "warn" if warn else "owned" if event["pid"] == self.pid else None
            rows.append(Row(conn_cells(event), role, (event["cookie"], event["event"])))
        notes = []
        problem = self.problem or (self.feed.error if self.feed is not None else None)
        if problem:
            notes.append(problem)
        if self.feed is not None:
            c = self.feed.scanner
            notes.append("newest first; * = PID's, ! = a listener other hosts can reach; "
                         "%d opened, %d listeners, %d closed (%d whose open was not seen), "
                         "%d present at start" % (c.opens, c.listens, c.closes,
                                                  c.closes_unseen, c.present))
        return [Table("conns", CONN_COLUMNS, rows, notes)]

    def close(self):
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.close()


# --- state -------------------------------------------------------------------

class SessionState(object):
    """Everything the session shows; changed by refreshes and key handlers, read by draw."""

    def __init__(self, pid, tab, interval, chosen=False):
        self.pid = pid
        self.comm = "?"
        self.netns = "?"
        self.start = None                      # PID's start ticks: a reused PID is not PID
        self.tab = tab
        self.interval = interval
        self.interval_chosen = chosen          # by --interval or :set: never stretched
        self.refresh_cost = 0.0                # CPU seconds of a refresh (smoothed)
        self.scroll = dict.fromkeys(SESSION_TABS, 0)
        self.hscroll = dict.fromkeys(SESSION_TABS, 0)  # columns scrolled off to the left
        self.sort = dict.fromkeys(SESSION_TABS)        # tab -> None or (column, reverse)
        self.conns = None                      # ConnsPane (the curses session's)
        self.text_filter = ""
        self.owned_only = False
        self.mode = None                       # None, "filter", "command" or "help"
        self.line = ""                         # the filter or command being typed
        self.message = None
        self.message_role = "info"
        self.message_until = 0.0
        self.view = TabView([])
        # each tab's last data and its monotonic time, for deltas, rates and findings
        # when the tab is seen again; of the big socket tabs only the last one seen
        self.last_data = {}
        self.refreshed_mono = None
        self.refreshed_at = None               # wall clock, shown
        self.owned_problem = None
        self.read_error = None                 # why the tab could not be read, or None
        self.rescan = True
        self.body_height = 1
        self.body_width = 80

    def wait(self):
        """Seconds between refreshes: the interval, stretched when refreshing is costly."""
        if self.interval_chosen:
            return self.interval
        return max(self.interval, self.refresh_cost / REFRESH_SHARE)

    def set_interval(self, seconds):
        self.interval = seconds
        self.interval_chosen = True

    def say(self, text, role="info", seconds=MESSAGE_SECONDS):
        self.message = text
        self.message_role = role
        self.message_until = time.monotonic() + seconds

    def complain(self, text):
        self.say(text, "message")

    def layout(self):
        return self.view.layout(self.text_filter, self.sort[self.tab], self.owned_only)

    def max_scroll(self):
        self.layout()
        return max(0, self.view.lines - self.body_height)

    def scroll_to(self, line):
        self.scroll[self.tab] = max(0, min(line, self.max_scroll()))

    def hscroll_to(self, column):
        self.layout()
        widest = max(0, self.view.width - self.body_width)
        self.hscroll[self.tab] = max(0, min(column, widest))


def check_target(state, procfs):
    """PID's comm; ProcessGone when it has exited, also when its number now names
    another process (a start time other than the first refresh saw)."""
    comm, _, start = procfs.process_status(state.pid)
    if state.start is None:
        state.start = start
    elif start is not None and start != state.start:
        raise ProcessGone("process %d exited" % state.pid)
    return comm


def refresh_tab(state, procfs, procs):
    """Collect the visible tab (only it) and rebuild the view.

    ProcessGone ends the session.  A file that cannot be read or makes no sense
    (ReadError, AccessDenied: an I/O error, a damaged --proc tree) takes the
    tab's place, said once at the bottom, and the session goes on: as in htop,
    only the process's exit ends it, and the other tabs may still be readable.
    """
    now = time.monotonic()
    try:
        tables = collect_view(state, procfs, procs, now)
        state.read_error = None
    except (ReadError, AccessDenied) as err:
        if not os.path.exists(procfs.path(state.pid)):
            raise ProcessGone("process %d exited" % state.pid) from err
        tables = read_error_tables(state, str(err))
    state.view = TabView(tables)
    state.refreshed_mono = now
    state.refreshed_at = time.time()
    state.rescan = False
    state.scroll_to(state.scroll[state.tab])


def read_error_tables(state, text):
    """The tab's place when it cannot be read (text not yet escaped: the view escapes
    notes); the bottom line says so when it is new."""
    if text != state.read_error:
        state.complain(printable(text))
    state.read_error = text
    state.owned_problem = None
    return [Table(state.tab, [], [], ["cannot show %s: %s" % (state.tab, text)])]


def collect_view(state, procfs, procs, now):
    """The visible tab's tables (its data kept for the next deltas and rates)."""
    state.comm = check_target(state, procfs)
    netns = procfs.netns(state.pid)
    if netns and netns != state.netns:
        if state.netns != "?" and not state.netns.startswith("netns unknown"):
            state.say("PID %d moved to another network namespace: %s"
                      % (state.pid, printable(netns, 40)))
        state.netns = netns
    state.owned_problem = None
    if state.conns is not None and state.conns.active and state.tab != "conns":
        state.conns.poll()              # started once: keeps its events while hidden
    if state.tab == "procs":
        procs.start()
        procs.poll()
        tables = procs.tables()
    elif state.tab == "conns":
        if state.conns is None:         # not in a session (snapshots cannot follow a feed)
            return [Table("conns", CONN_COLUMNS, [], ["the conns tab needs the session"])]
        state.conns.start()
        state.conns.poll()
        tables = state.conns.tables()
    else:
        if procs.active:
            procs.poll()               # started once: keep following PID's descendants
        data = collect_tab(procfs, state.pid, state.tab)
        prev, dt = state.last_data.get(state.tab, (None, None))
        if dt is not None:
            dt = now - dt
        tables = tab_tables(state.tab, data, prev, dt if dt and dt > 0 else None, live=True)
        if state.tab in SOCKET_FILES:
            for tab in SOCKET_FILES:
                state.last_data.pop(tab, None)
        state.last_data[state.tab] = (data, now)
        if data.get("owned_known") is False:
            state.owned_problem = data.get("owned_reason") or "cannot read the process's fds"
    return tables


# --- keys ----------------------------------------------------------------------

def session_keys(curses):
    """The key table: key (str for characters, int for curses KEY_*) -> (handler, args...)."""
    keys = {
        "q": ("quit",), "\x04": ("quit",), "?": ("help",),
        "/": ("start_line", "filter"), ":": ("start_line", "command"),
        "s": ("sort",), "S": ("reverse",), "o": ("owned",), "\x1b": ("clear_filter",),
        "\t": ("cycle", 1), curses.KEY_BTAB: ("cycle", -1),
        curses.KEY_RIGHT: ("cycle", 1), curses.KEY_LEFT: ("cycle", -1),
        curses.KEY_DOWN: ("scroll", 1), curses.KEY_UP: ("scroll", -1),
        "j": ("scroll", 1), "k": ("scroll", -1),
        curses.KEY_NPAGE: ("page", 1), curses.KEY_PPAGE: ("page", -1), " ": ("page", 1),
        curses.KEY_HOME: ("home",), curses.KEY_END: ("end",),
        ">": ("sideways", 1), "<": ("sideways", -1),
        curses.KEY_SRIGHT: ("sideways", 1), curses.KEY_SLEFT: ("sideways", -1),
        curses.KEY_RESIZE: ("resize",), "\x0c": ("resize",),
        "\n": ("nothing",), "\r": ("nothing",), curses.KEY_ENTER: ("nothing",),
    }
    for tab in SESSION_TABS:
        keys[TAB_KEYS[tab]] = ("select_tab", tab)
    return keys


class KeyHandler(object):
    """Keys to state changes; every handler returns an action for the loop."""

    def __init__(self, state, keys, everywhere=()):
        self.state = state
        self.keys = keys
        self.everywhere = everywhere   # keys that act in every mode (Ctrl+D, resize)

    def dispatch(self, key):
        st = self.state
        if key in self.everywhere:
            return self.call(self.keys[key])
        if st.mode == "help":
            st.mode = None             # any key closes the help
            return REDRAW
        if st.mode in ("filter", "command"):
            return self.edit_line(key)
        binding = self.keys.get(key)
        if binding is None:
            return NOTHING              # a key with no use does nothing (":" opens commands)
        return self.call(binding)

    def call(self, binding):
        return getattr(self, "key_" + binding[0])(*binding[1:])

    def edit_line(self, key):
        st = self.state
        if key == "\x1b":
            if st.mode == "filter":
                self.set_filter("")
            st.mode, st.line = None, ""
            return REDRAW
        if key in ("\n", "\r"):
            mode, line = st.mode, st.line
            st.mode, st.line = None, ""
            if mode == "command":
                return self.run_command(line)
            return REDRAW
        if key in ("\x7f", "\x08"):
            if not st.line and st.mode == "command":
                st.mode = None
            st.line = st.line[:-1]
        elif key == "\x15":                    # Ctrl+U: erase the line
            st.line = ""
        elif isinstance(key, str) and key.isprintable():
            st.line += key
        elif isinstance(key, int) and st.mode == "filter" and key in self.keys:
            st.mode = None             # an arrow ends the typing and scrolls the result
            return self.call(self.keys[key])
        else:
            return NOTHING
        if st.mode == "filter":
            self.set_filter(st.line)
        return REDRAW

    def set_filter(self, text):
        self.state.text_filter = text
        self.state.scroll[self.state.tab] = 0

    def run_command(self, line):
        st = self.state
        words = line.split()
        if not words:
            return REDRAW
        name, rest = words[0].lower(), line.strip()[len(words[0]):].strip()
        if name == "set":
            if not rest:
                st.say("the interval is %s (:set N changes it)" % format_interval(st.interval))
                return REDRAW
            try:
                st.set_interval(parse_interval(rest))
            except ValueError as err:
                st.complain(str(err))
                return REDRAW
            st.say("refreshing every %s" % format_interval(st.interval))
            return REDRAW
        if name == "tab":
            tab = rest.lower()
            if tab.isdigit() and len(tab) == 1:
                tab = TABS[(int(tab) - 1) % 10]
            if tab not in SESSION_TABS:
                st.complain("no tab %r: %s" % (printable(rest, 12), " ".join(SESSION_TABS)))
                return REDRAW
            return self.key_select_tab(tab)
        if name in ("q", "quit", "exit"):
            return QUIT
        if name == "help":
            return self.key_help()
        st.complain("unknown command %r (commands: set N, tab NAME, quit, help)"
                    % printable(words[0], 20))
        return REDRAW

    def key_nothing(self):
        return NOTHING

    def key_quit(self):
        return QUIT

    def key_help(self):
        self.state.mode = "help"
        return REDRAW

    def key_start_line(self, mode):
        self.state.mode = mode
        self.state.line = self.state.text_filter if mode == "filter" else ""
        return REDRAW

    def key_clear_filter(self):
        if self.state.text_filter:
            self.set_filter("")
        return REDRAW

    def key_select_tab(self, tab):
        st = self.state
        if tab == st.tab:
            return REDRAW
        st.tab = tab
        return RESCAN

    def key_cycle(self, step):
        tabs = SESSION_TABS
        return self.key_select_tab(tabs[(tabs.index(self.state.tab) + step) % len(tabs)])

    def key_sort(self):
        st = self.state
        if st.tab not in SORTABLE_TABS:
            st.say("%s keeps its own order (no sorting here)" % st.tab)
            return REDRAW
        columns = st.view.columns()
        if not columns:
            return REDRAW
        current = st.sort[st.tab]
        col = 0 if current is None else current[0] + 1
        if col >= len(columns):
            st.sort[st.tab] = None
            st.say("sorted as the kernel lists them")
        else:
            # numbers biggest first, text A..Z: what one looks for first
            st.sort[st.tab] = (col, columns[col].align == R)
            st.say("sorted by %s" % columns[col].title)
        st.scroll[st.tab] = 0
        return REDRAW

    def key_reverse(self):
        st = self.state
        current = st.sort[st.tab]
        if current is None:
            return self.key_sort()
        st.sort[st.tab] = (current[0], not current[1])
        return REDRAW

    def key_owned(self):
        st = self.state
        st.owned_only = not st.owned_only
        st.scroll[st.tab] = 0
        if st.owned_only and st.tab not in OWNABLE_TABLES:
            st.say("owned only: applies to tcp udp raw icmp procs")
        return REDRAW

    def key_scroll(self, step):
        self.state.scroll_to(self.state.scroll[self.state.tab] + step)
        return REDRAW

    def key_page(self, step):
        st = self.state
        st.scroll_to(st.scroll[st.tab] + step * max(1, st.body_height - 1))
        return REDRAW

    def key_sideways(self, step):
        st = self.state
        st.hscroll_to(st.hscroll[st.tab] + step * HSCROLL_STEP)
        return REDRAW

    def key_home(self):
        self.state.scroll_to(0)
        return REDRAW

    def key_end(self):
        self.state.scroll_to(self.state.max_scroll())
        return REDRAW

    def key_resize(self):
        # Terminals keep different parts of the old screen when resized: paint
        # everything again rather than only what curses thinks has changed.
        return REPAINT


# --- drawing -----------------------------------------------------------------

class Theme(object):
    """Roles to curses attributes, in one place; monochrome when there are no colours."""

    def __init__(self, curses, colour):
        self.attrs = {}
        pairs = {}
        background = -1
        if colour:
            try:
                curses.use_default_colors()
            except curses.error:
                background = curses.COLOR_BLACK
        for role, (fg, with_colour, mono) in ROLE_STYLES.items():
            names = with_colour if colour else mono
            attr = 0
            for name in names:
                attr |= getattr(curses, name, 0)
            if colour and fg is not None:
                if fg not in pairs:
                    number = len(pairs) + 1
                    try:
                        curses.init_pair(number, getattr(curses, fg), background)
                        pairs[fg] = curses.color_pair(number)
                    except curses.error:
                        pairs[fg] = 0
                attr |= pairs[fg]
            self.attrs[role] = attr

    def attr(self, role):
        return self.attrs.get(role, 0)


def start_colours(curses):
    """True when the terminal has colours and the user did not ask for none (NO_COLOR)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        if not curses.has_colors():
            return False
        curses.start_color()
        return True
    except curses.error:
        return False


class Painter(object):
    """Writes text on the window, clipped to getmaxyx(), with each role's attribute."""

    def __init__(self, win, curses, theme):
        self.win = win
        self.error = curses.error
        self.theme = theme

    def size(self):
        return self.win.getmaxyx()

    def put(self, y, x, text, role=None):
        height, width = self.win.getmaxyx()
        if y < 0 or y >= height or x < 0 or x >= width:
            return
        text = column_slice(text, 0, width - x)     # CJK takes two columns: cut by columns
        if not text:
            return
        attr = self.theme.attr(role)
        try:
            self.win.addstr(y, x, text, attr)
        except UnicodeEncodeError:          # a locale that cannot show the text
            try:
                self.win.addstr(y, x, text.encode("ascii", "backslashreplace")
                                .decode("ascii")[:width - x], attr)
            except self.error:
                pass
        except self.error:
            pass                            # the bottom-right cell: the cursor cannot advance


def screen_rows(height):
    """Which line holds what at this height -> (tabbar, status, body_top, body_height, bottom)."""
    if height >= 4:
        return 0, 1, 2, height - 3, height - 1
    if height == 3:
        return 0, 1, None, 0, 2
    if height == 2:
        return None, 0, None, 0, 1
    return None, None, None, 0, 0


def tabbar_parts(current, width):
    """[(text, role)] naming every tab, the current one bracketed; shorter when narrow:
    first without c:conns unless it is the current tab (the ten names take 79 of 80
    columns; the help names key c), then the names cut to 4 letters, then the keys."""
    def build(cut, tabs=SESSION_TABS):
        parts = []
        for tab in tabs:
            label = "%s:%s" % (TAB_KEYS[tab], tab)
            if tab == current:
                parts.append(("[%s]" % label, "selected"))
            else:
                parts.append((label[:cut], None))
        return parts
    snapshot_tabs = TABS + (("conns",) if current == "conns" else ())
    for parts in (build(None), build(None, snapshot_tabs), build(6), build(1)):
        if sum(len(t) + 1 for t, _ in parts) - 1 <= width:
            return parts
    return [p for p in parts if p[1] == "selected"]


def status_text(st, width=80):
    st.layout()
    every = "every " + format_interval(st.interval)
    if st.wait() > st.interval + 0.05:
        every += " (%.1fs)" % st.wait()     # stretched: see REFRESH_SHARE
    clock = None
    if st.refreshed_at is not None:
        clock = time.strftime("%H:%M:%S", time.localtime(st.refreshed_at))
    rows = (st.view.shown, st.view.total)
    netns = printable(st.netns, 48)
    parts = ["PID %d %s" % (st.pid, printable(st.comm, 24)), netns, every,
             clock, "rows %d/%d" % rows if rows[0] != rows[1] else "rows %d" % rows[1],
             "ownership unknown" if st.owned_problem and st.tab in OWNABLE_TABLES else None]
    parts = [p for p in parts if p]
    text = "  ".join(parts)
    if len(text) > width:               # tighter, then the least needed go whole (not cut)
        parts[parts.index(every)] = every.replace("every ", "", 1)
        for least in (clock, netns):
            if len(" ".join(parts)) <= width:
                break
            if least in parts:
                parts.remove(least)
        text = " ".join(parts)
    return text


def settings_text(st):
    """The filter, sort and owned-only settings in force, or "" when none is."""
    parts = []
    if st.text_filter:
        parts.append("filter '%s'" % printable(st.text_filter, 30))
    sort = st.sort[st.tab]
    if sort is not None and st.tab in SORTABLE_TABS:
        columns = st.view.columns()
        if sort[0] < len(columns):
            parts.append("sort %s%s" % (columns[sort[0]].title, " desc" if sort[1] else ""))
    if st.owned_only:
        parts.append("owned only")
    return "  ".join(parts)


def bottom_text(st):
    if st.mode == "filter":
        return "/" + printable(st.line) + "_", None
    if st.mode == "command":
        return ":" + printable(st.line) + "_", None
    if st.message and time.monotonic() < st.message_until:
        return st.message, st.message_role
    settings = settings_text(st)
    if settings:
        return settings + "  (Esc clears the filter; s, o change; ? help)", "info"
    return KEY_HINT, "note"


def draw(painter, st, repaint=False):
    """erase, paint the state, refresh; nothing here reads /proc."""
    if repaint:
        painter.win.clear()             # the next refresh clears the terminal first
    else:
        painter.win.erase()
    height, width = painter.size()
    tabbar, status, body_top, body_height, bottom = screen_rows(height)
    banner = ownership_banner(st, width, body_height // 2)
    body_height -= len(banner)
    st.body_height = max(1, body_height)
    st.body_width = max(1, width)
    if tabbar is not None:
        x = 0
        for text, role in tabbar_parts(st.tab, width):
            painter.put(tabbar, x, text, role)
            x += len(text) + 1
    if status is not None:
        painter.put(status, 0, status_text(st, width).ljust(width), "status")
    if body_top is not None:
        for i, text in enumerate(banner):
            painter.put(body_top + i, 0, text, "warn")
        draw_body(painter, st, body_top + len(banner), body_height)
    if bottom is not None:
        text, role = bottom_text(st)
        painter.put(bottom, 0, text, role)
    painter.win.refresh()


def ownership_banner(st, width, most):
    """Why ownership is unknown, wrapped to the width, for the top of the body (the status
    line says "ownership unknown", the key hint keeps the bottom line); at most `most`
    lines, the last cut with "..." on a screen too small for all.  [] when known."""
    if not st.owned_problem or st.tab not in OWNABLE_TABLES or st.mode == "help" \
            or most < 1 or width < 10:
        return []
    lines = textwrap.wrap("ownership unknown: " + printable(st.owned_problem), width)
    if len(lines) > most:
        lines = lines[:most]
        lines[-1] = lines[-1][:width - 3] + "..."
    return lines


def draw_body(painter, st, top, height):
    if st.mode == "help":
        lines = [(text, "title" if i == 0 else None) for i, text in enumerate(HELP_LINES)]
    else:
        st.scroll_to(st.scroll[st.tab])
        st.hscroll_to(st.hscroll[st.tab])
        lines = st.view.visible(st.scroll[st.tab], height)
    shift = st.hscroll[st.tab] if st.mode != "help" else 0
    for i, (text, role) in enumerate(lines[:height]):
        if shift and role != "title":
            text = text[:2] + column_slice(text[2:], shift)     # the mark column stays
        painter.put(top + i, 0, text, role)


# --- the loop ------------------------------------------------------------------

def read_key(win, curses):
    """Next key as str (characters) or int (KEY_*), or None when the timeout passed."""
    try:
        key = win.get_wch()
    except curses.error:
        return None
    if isinstance(key, int) and key in (curses.KEY_BACKSPACE,):
        return "\x7f"
    if isinstance(key, int) and key == curses.KEY_ENTER:
        return "\n"
    return key


def timed_refresh(state, procfs, procs):
    """refresh_tab, with its CPU cost remembered; the cyclic GC is paused meanwhile.

    A refresh allocates ~10 objects per socket while the last refresh's rows are
    still alive, so the collections it triggers walk them all: the session on
    20,000 sockets at --interval 1 takes 22% of a core with the pause, 27%
    without (Python 3.11, 6 alternating runs; bench/bench_session.py's set-up).
    (For --once the same pause saves ~3% of the CPU, unseen: it is not done there.)
    """
    # this thread and the collection's helpers only: the feed's thread is not the refresh
    started, helpers = time.thread_time(), helper_cpu_seconds()
    gc.disable()
    try:
        refresh_tab(state, procfs, procs)
    finally:
        gc.enable()
    cost = time.thread_time() - started + helper_cpu_seconds() - helpers
    state.refresh_cost = cost if not state.refresh_cost else (
        0.5 * state.refresh_cost + 0.5 * cost)


def session_loop(painter, curses, procfs, state, procs):
    """Refresh on time, draw when something changed, wait for keys until then."""
    win = painter.win
    handler = KeyHandler(state, session_keys(curses), ("\x04", curses.KEY_RESIZE))
    next_feed = 0.0
    next_alive = 0.0
    dirty = True
    repaint = False
    while True:
        now = time.monotonic()
        if state.rescan or now >= state.refreshed_mono + state.wait():
            timed_refresh(state, procfs, procs)
            dirty = True
            next_alive = now + ALIVE_CHECK
        elif now >= next_alive:
            try:
                check_target(state, procfs)     # ProcessGone ends the session
            except (ReadError, AccessDenied):
                pass                            # not an exit: the next refresh shows it
            next_alive = now + ALIVE_CHECK
        if procs.active and now >= next_feed:
            # the feed keeps its own state; between refreshes poll it only while shown
            if state.tab == "procs" and procs.poll():
                state.view = TabView(procs.tables())
                state.refreshed_at = time.time()    # the clock shown: as new as the rows
                dirty = True
            next_feed = now + FEED_POLL
        if state.conns is not None and state.conns.active and state.tab == "conns" \
                and now >= next_feed:
            if state.conns.poll():
                state.view = TabView(state.conns.tables())
                state.scroll_to(state.scroll[state.tab])
                state.refreshed_at = time.time()
                dirty = True
            next_feed = now + FEED_POLL
        if state.message and now >= state.message_until:
            state.message = None
            dirty = True
        if dirty:
            draw(painter, state, repaint)
            dirty = repaint = False
        wake = min(state.refreshed_mono + state.wait(), next_alive)
        if state.message:
            wake = min(wake, state.message_until)
        if (procs.active and state.tab == "procs") or (state.conns is not None and state.conns.active
                                                      and state.tab == "conns"):
            wake = min(wake, next_feed)
        win.timeout(max(0, int((wake - time.monotonic()) * 1000) + 1))
        key = read_key(win, curses)
        if key is None:
            continue
        action = handler.dispatch(key)
        if action == QUIT:
            return EXIT_OK
        if action == RESCAN:
            state.rescan = True
        if action == REPAINT:
            repaint = True
        if action != NOTHING:
            dirty = True


class _Signalled(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def terminal_problem():
    """Why curses cannot run here (one line), or None."""
    if not (os.isatty(0) and os.isatty(1)):
        return "no terminal (stdin or stdout is not a tty)"
    try:
        import curses
    except ImportError:
        return "the curses module is not available"
    term = os.environ.get("TERM") or "unknown"
    try:
        curses.setupterm(term, 1)
    except curses.error as err:
        return "terminal %r is not usable (%s)" % (printable(term, 40), err)
    if not curses.tigetstr("cup"):
        return "terminal %r cannot move the cursor" % printable(term, 40)
    return None


def run_session(args, procfs):
    """The interactive session on args.pid; plain snapshots when curses cannot run."""
    interval, note = session_interval(args.interval)
    state = SessionState(args.pid, args.tab or "tcp", interval, args.interval is not None)
    if note:
        state.complain(note)
    problem = terminal_problem()
    if problem is not None:
        return run_plain(procfs, state, problem)
    import curses
    try:
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        pass
    os.environ.setdefault("ESCDELAY", "25")     # Esc clears at once, not after 1 s
    state.netns = procfs.netns_text(args.pid)
    procs = ProcsPane(procfs, args.pid, getattr(args, "backend", None) or "auto")
    state.conns = ConnsPane(procfs, args.pid)
    handlers = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        handlers[signum] = signal.signal(signum, _raise_signalled)
    status, farewell = EXIT_OK, None
    try:
        try:
            win = curses.initscr()
        except curses.error as err:
            return run_plain(procfs, state, "cannot start curses (%s)" % err)
        try:
            status = curses_session(win, curses, procfs, state, procs)
        finally:
            restore_terminal(win, curses)
    except KeyboardInterrupt:
        status = EXIT_OK
    except _Signalled as sig:
        status = 128 + sig.signum
    except ProcessGone:
        farewell = "process %d exited" % args.pid
    finally:
        procs.close()
        state.conns.close()
        for signum, old in handlers.items():
            signal.signal(signum, old)
    if farewell:
        sys.stderr.write("%s: %s\n" % (PROG, farewell))
    return status


def curses_session(win, curses, procfs, state, procs):
    curses.noecho()
    curses.cbreak()
    win.keypad(True)
    try:
        curses.curs_set(0)
    except curses.error:
        pass                                    # the terminal cannot hide its cursor
    painter = Painter(win, curses, Theme(curses, start_colours(curses)))
    return session_loop(painter, curses, procfs, state, procs)


def restore_terminal(win, curses):
    """Undo everything initscr and curses_session did, each step on its own."""
    for step in (lambda: win.keypad(False), curses.nocbreak, curses.echo, curses.endwin):
        try:
            step()
        except curses.error:
            pass


# --- without a terminal: plain snapshots ---------------------------------------------

def run_plain(procfs, state, problem):
    """Print the tab's snapshot every interval until Ctrl+C (or `q` Enter / Ctrl+D on a tty)."""
    sys.stderr.write("%s: %s; printing snapshots of %s every %s instead (Ctrl+C stops)\n"
                     % (PROG, problem, state.tab, format_interval(state.interval)))
    sys.stderr.flush()
    commands = sys.stdin if _stdin_is_tty() else None
    try:
        first, said = True, None
        while True:
            try:
                snap = snapshot(procfs, state.pid, (state.tab,))
                write_stdout(("" if first else "\n") + format_snapshot(snap))
                first, said = False, None
            except (ReadError, AccessDenied) as err:
                # not an exit (as in the session): said once, tried again next time
                if str(err) != said:
                    sys.stderr.write("%s: %s\n" % (PROG, printable(str(err))))
                    sys.stderr.flush()
                said = str(err)
            if plain_wait(commands, state):
                return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except ProcessGone:               # write_stdout flushed every snapshot already
        sys.stderr.write("%s: process %d exited\n" % (PROG, state.pid))
        return EXIT_OK


def _stdin_is_tty():
    try:
        return os.isatty(sys.stdin.fileno())
    except (ValueError, OSError, AttributeError):
        return False


def plain_wait(commands, state):
    """Sleep one interval; on a tty read `set N`, `tab NAME`, `q` lines (Ctrl+D quits too)
    meanwhile -> True to quit."""
    deadline = time.monotonic() + state.interval
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if commands is None:
            time.sleep(left)
            continue
        ready, _, _ = select.select([commands], [], [], left)
        if not ready:
            continue
        line = commands.readline()
        if not line:                            # Ctrl+D, as in the session
            return True
        words = line.split()
        if not words:
            continue
        if words[0] in ("q", "quit"):
            return True
        if words[0] == "set" and len(words) == 2:
            try:
                state.set_interval(parse_interval(words[1]))
                sys.stderr.write("%s: refreshing every %s\n"
                                 % (PROG, format_interval(state.interval)))
            except ValueError as err:
                sys.stderr.write("%s: %s\n" % (PROG, err))
            return False
        if words[0] == "tab" and len(words) == 2 and words[1] in TABS:
            state.tab = words[1]
            return False
        sys.stderr.write("%s: commands: set N, tab NAME, q\n" % PROG)


# ---------------------------------------------------------------------------
# Web dashboard: server
# ---------------------------------------------------------------------------
# Owns --serve: the token, the HTTP server (standard library only), the event
# hub that fans feed events out to Server-Sent-Events streams, and the traffic
# history the page's chart draws.  May call snapshot()/snapshot_json(),
# collect_tab(), tab_tables(), the scanners and ProcRules (through FeedThread)
# and dashboard_page() of the next section.  No request changes anything: GET and
# HEAD only.  The endpoints and how they are defended: docs/dashboard.md.
#
# An event source is a scanner: start() (-> anything), step(limit) -> [event
# dict] waiting at most `limit` seconds, close(), and optionally .backend, .seen,
# .missed for the status line.  ProcScanner ("procs") and ConnScanner ("conns")
# are the two; each runs in a FeedThread under its own SSE event name.

SERVE_HISTORY = 300.0       # seconds of traffic the chart shows
SERVE_SAMPLES = 600         # ... at most this many samples (a short --interval)
SERVE_SERIES = 8            # lines in the chart: the busiest series
EVENT_BACKLOG = 500         # recent events a page that opens (or reconnects) gets first
CLIENT_QUEUE = 5000         # events waiting for one slow browser before its own are dropped
KEEPALIVE = 15.0            # an idle event stream writes a comment this often (finds dead peers)
REQUEST_TIMEOUT = 30.0      # a request line, or one write, may take this long
MAX_CONNECTIONS = 32        # open connections at once; more are closed at once
ATTACHED_FOR = 60.0         # traffic is sampled while a stream is open or for this long after
                            # a request: nobody looking costs nothing but the feed
# Interfaces are sampled every interval (/proc/PID/net/dev: ~0.1 ms).  TCP bytes per
# process need the owner of every socket: the fds of the processes whose fd directory
# changed size (~2 ms), and of all of them every OWNERS_FULL_EVERY (~65 ms on a box
# with processes of thousands of fds): they are sampled as often as keeps that under
# this share of one core.
# With one browser attached the dashboard then costs ~1% of a core beyond the feeds
# (bench/bench_serve.py), half of it these two.
SAMPLE_SHARE = 0.003
OWNERS_FULL_EVERY = 30.0    # a socket moved between fds of equal count shows within this
# The same for the tabs the page shows: a socket tab finds the owners the same way
# (~30 ms there), so the page asks for it again only after cost / TABLES_SHARE.
TABLES_SHARE = 0.003
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}\Z")     # what a --token-file may hold


def serve_address(text):
    """--serve "[HOST:]PORT" -> (host, port): "8080" -> ("127.0.0.1", 8080),
    "[::1]:8080" -> ("::1", 8080), "0.0.0.0:0" -> ("0.0.0.0", 0) (0: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError("an IPv6 HOST goes in brackets: [%s]:%s" % (host, port))
    if not re.match(r"[0-9]{1,5}\Z", port) or int(port) > 65535 or not host:
        raise argparse.ArgumentTypeError("--serve takes [HOST:]PORT (PORT 0..65535), not %r"
                                         % text)
    return host, int(port)


def loopback_host(host):
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    import ipaddress
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False        # a name: where it points may change, so it counts as public


def url_host(host):
    return "[%s]" % host if ":" in host else host


def new_token():
    import secrets
    return secrets.token_urlsafe(32)


def read_token_file(path):
    """--token-file FILE: the token FILE holds, or a new one written to FILE (0600)
    when it does not exist.  A symlink, a file others may read, or one owned by
    another user is refused: the token is as good as the file's secrecy."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _write_token_file(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NetsnoopError("token file %s: a symbolic link (refused)" % path)
        raise NetsnoopError("cannot read token file %s: %s" % (path, err.strerror))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NetsnoopError("token file %s: not a regular file" % path)
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            raise NetsnoopError("token file %s: must be yours and readable by you only "
                                "(chmod 600), not mode %03o" % (path, st.st_mode & 0o777))
        text = os.read(fd, 1024).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not TOKEN_RE.match(text):
        raise NetsnoopError("token file %s: the token must be 16 to 256 letters, digits "
                            "or - _ . ~" % path)
    return text


def _write_token_file(path):
    token = new_token()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as err:
        raise NetsnoopError("cannot create token file %s: %s" % (path, err.strerror))
    try:
        os.write(fd, (token + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return token


# --- events: one bounded queue per browser ------------------------------------

def sse_message(ident, name, data):
    """One Server-Sent Event; data is one line of JSON (json.dumps writes no newline)."""
    return ("id: %d\nevent: %s\ndata: %s\n\n" % (ident, name, data)).encode("utf-8")


class EventClient(object):
    """One event stream's queue.  put() never blocks: when `limit` messages wait
    (the browser reads too slowly, or is gone), new ones are dropped and counted."""

    def __init__(self, limit):
        self.cond = threading.Condition()
        self.queue = collections.deque()
        self.limit = limit
        self.dropped = 0
        self.closed = False

    def put(self, message):
        with self.cond:
            if len(self.queue) >= self.limit:
                self.dropped += 1
                return
            self.queue.append(message)
            self.cond.notify()

    def take(self, timeout):
        """-> (messages waiting, dropped so far), after waiting at most timeout for one."""
        with self.cond:
            if not self.queue and not self.closed:
                self.cond.wait(timeout)
            out = list(self.queue)
            self.queue.clear()
            return out, self.dropped

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify()


class EventHub(object):
    """Feed events to every open stream, each event encoded once; the last
    EVENT_BACKLOG kept for a page that opens or reconnects (Last-Event-ID)."""

    def __init__(self, per_client=CLIENT_QUEUE, backlog=EVENT_BACKLOG):
        self.lock = threading.Lock()
        self.clients = set()
        self.recent = collections.deque(maxlen=backlog)     # (id, message)
        self.last_id = 0
        self.per_client = per_client
        self.published = 0

    def publish(self, name, event):
        data = json.dumps(event)
        with self.lock:
            self.last_id += 1
            self.published += 1
            message = sse_message(self.last_id, name, data)
            self.recent.append((self.last_id, message))
            for client in self.clients:
                client.put(message)

    def subscribe(self, after=None):
        """A new stream's queue, holding the kept events newer than id `after`
        (all kept ones for a first connection)."""
        client = EventClient(self.per_client)
        with self.lock:
            for ident, message in self.recent:
                if after is None or ident > after:
                    client.put(message)
            self.clients.add(client)
        return client

    def unsubscribe(self, client):
        with self.lock:
            self.clients.discard(client)

    def close(self):
        with self.lock:
            clients = list(self.clients)
        for client in clients:
            client.close()


class FeedThread(object):
    """Runs one scanner in a daemon thread and hands its events to the hub
    under `name` (the SSE event name: "procs", "conns"); rules (ProcRules: start(),
    apply(event) -> event with its findings, close()) first, when given."""

    def __init__(self, name, scanner, hub, rules=None):
        self.name = name
        self.scanner = scanner
        self.hub = hub
        self.rules = rules
        self.error = None
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netsnoop-" + name)
        self._thread.daemon = True

    def start(self):
        if self.rules is not None:
            self.rules.start()
        self.scanner.start()        # in the caller: a failure to start is its to report
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                for event in self.scanner.step(STOP_CHECK):
                    if self.rules is not None:
                        event = self.rules.apply(event)
                    self.hub.publish(self.name, event)
                    self.published += 1
        except Exception as err:    # noqa: BLE001 -- said on the status line, not a traceback
            self.error = "%s feed stopped: %s" % (self.name, err)
        finally:
            self.scanner.close()    # by the only thread using it
            if self.rules is not None:
                self.rules.close()

    def status(self):
        out = collections.OrderedDict(name=self.name)
        for key in ("backend", "seen", "missed"):
            out[key] = getattr(self.scanner, key, None)
        out["events"] = self.published
        out["error"] = self.error
        return out

    def close(self):
        self._stop.set()
        self._thread.join(1.0)


# --- traffic history: samples in, chart series out ----------------------------

def traffic_sample(when, data):
    """The traffic tab's data -> {"time", KIND: {label: [received, sent]}} for the
    kinds present: interfaces, and (when collected) TCP bytes per process and cgroup."""
    sample = {"time": when, "interfaces": {
        i["name"]: [i["rx_bytes"], i["tx_bytes"]] for i in data.get("interfaces", ())}}
    if "processes" in data:
        sample["processes"] = {
            "%s (%s)" % (p.get("comm") or "uid %s" % p.get("uid"), p.get("pid") or "?"):
            [p["bytes_received"], p["bytes_sent"]] for p in data["processes"]}
    if "cgroups" in data:
        sample["cgroups"] = {c["cgroup"] or "?": [c["bytes_received"], c["bytes_sent"]]
                             for c in data["cgroups"]}
    return sample


def traffic_series(samples, kind, top=SERVE_SERIES):
    """Samples -> {"kind", "times", "series": [{"name", "values"}]}: bytes per second
    between consecutive samples ("NAME rx" and "NAME tx"), the `top` busiest;
    null where a series is absent or its counter went back (a new socket set)."""
    times, rates = [], collections.OrderedDict()
    for old, cur in zip(samples, samples[1:]):
        dt = cur["time"] - old["time"]
        if dt <= 0:
            continue
        times.append(cur["time"])
        before, now = old.get(kind, {}), cur.get(kind, {})
        for label, counters in now.items():
            for direction, value, prior in zip(("rx", "tx"), counters,
                                               before.get(label, (None, None))):
                values = rates.setdefault(label + " " + direction, [])
                values.extend([None] * (len(times) - 1 - len(values)))
                ok = prior is not None and value >= prior
                values.append(round((value - prior) / dt, 1) if ok else None)
    for values in rates.values():
        values.extend([None] * (len(times) - len(values)))

    def peak(item):
        return -max([v for v in item[1] if v is not None] or [0])

    busiest = sorted(rates.items(), key=peak)[:top]
    return collections.OrderedDict((
        ("kind", kind), ("times", times),
        ("series", [collections.OrderedDict((("name", name), ("values", values)))
                    for name, values in busiest])))


def table_json(table):
    return collections.OrderedDict((
        ("title", table.title),
        ("columns", [{"title": c.title, "align": "right" if c.align == R else "left"}
                     for c in table.columns]),
        ("rows", [{"cells": row.cells, "role": row.role} for row in table.rows]),
        ("notes", [note for note in table.notes if note])))


# --- what the server shows ------------------------------------------------------

class Dashboard(object):
    """PID's tabs on request, the feeds' events through the hub, and the traffic
    history, sampled every interval while someone is looking."""

    def __init__(self, procfs, pid, interval, token, public=False):
        self.procfs = procfs
        self.pid = pid
        self.interval = interval
        self.token = token
        self.public = public
        self.hub = EventHub()
        self.feeds = []
        self.unknown = collections.OrderedDict()    # what cannot be shown -> why
        self.traffic = collections.deque(maxlen=max(2, min(
            SERVE_SAMPLES, int(SERVE_HISTORY / interval) + 1)))
        self.last = {}          # tab -> (data, monotonic time): changes and rates
        self.lock = threading.Lock()
        self.looked = 0.0       # monotonic time of the last request
        self.sample_cost = 0.0  # CPU seconds of a sample with TCP bytes per process (smoothed)
        self.next_full = 0.0    # monotonic time of the next such sample
        self.tables_cost = {}   # tab -> CPU seconds of /api/tables (smoothed)
        self.owners = SocketOwners(procfs)     # kept: each sample rereads only changes
        self.owners_full = -OWNERS_FULL_EVERY  # monotonic time of the last full scan
        self.streams = 0        # event streams open
        self.stopping = threading.Event()
        self.sampler = threading.Thread(target=self._sample_loop, name="netsnoop-traffic")
        self.sampler.daemon = True

    def add_feed(self, name, scanner, rules=None):
        """Start a feed; one that cannot start is left out, and the status says why."""
        feed = FeedThread(name, scanner, self.hub, rules)
        try:
            feed.start()
        except NetsnoopError as err:
            self.unknown[name + " feed"] = str(err)
            return None
        self.feeds.append(feed)
        return feed

    def start(self):
        self.sampler.start()

    def close(self):
        self.stopping.set()
        self.hub.close()
        for feed in self.feeds:
            feed.close()

    # -- traffic --

    def attached(self):
        return self.streams > 0 or time.monotonic() - self.looked < ATTACHED_FOR

    def _sample_loop(self):
        while not self.stopping.is_set():
            if self.attached():
                now = time.monotonic()
                if now >= self.next_full:
                    self.timed_sample()
                    self.next_full = now + self.full_wait()
                else:
                    self.sample_traffic(full=False)
            self.stopping.wait(self.interval)

    def full_wait(self):
        """Seconds between samples of TCP bytes per process (see SAMPLE_SHARE)."""
        return max(self.interval, self.sample_cost / SAMPLE_SHARE)

    def timed_sample(self):
        # this thread and the collection's helpers, as the session counts a refresh
        started, helpers = time.thread_time(), helper_cpu_seconds()
        self.sample_traffic(full=True)
        cost = time.thread_time() - started + helper_cpu_seconds() - helpers
        self.sample_cost = cost if not self.sample_cost else 0.5 * self.sample_cost + 0.5 * cost

    def sample_traffic(self, full):
        """full: the whole traffic tab; else only the interfaces."""
        try:
            data = {}
            data["interfaces"] = _read_parsed(self.procfs, self.pid, "dev", parse_dev,
                                              data, Records())
            if full:
                self.scan_owners()
                add_process_traffic(self.procfs, self.pid, data, self.owners)
        except NetsnoopError as err:
            self.unknown["traffic"] = str(err)
            return
        self.unknown.pop("traffic", None)
        if full:
            self.note_process_traffic(data)
        with self.lock:
            self.traffic.append(traffic_sample(time.time(), data))

    def scan_owners(self):
        """Read again only the fd directories whose size changed (65 -> 2 ms with 90
        processes, some with thousands of fds), and all of them every OWNERS_FULL_EVERY
        seconds: a socket closed and another opened leave the size as it was."""
        now = time.monotonic()
        full = now - self.owners_full >= OWNERS_FULL_EVERY
        self.owners.scan(changed_only=not full)
        if full:
            self.owners_full = now

    def note_process_traffic(self, data):
        """Why TCP bytes per process are missing or partial, if they are."""
        for key in ("bytes", "owners"):
            if data.get(key + "_known") is False:
                self.unknown["traffic by process"] = data.get(key + "_reason") or "unknown"
                return
        self.unknown.pop("traffic by process", None)

    def traffic_json(self):
        with self.lock:
            samples = list(self.traffic)
        kinds = [k for k in ("processes", "cgroups", "interfaces")
                 if any(k in s for s in samples)]
        return collections.OrderedDict((
            ("interval", self.interval), ("window", SERVE_HISTORY), ("kinds", kinds),
            ("charts", [traffic_series([s for s in samples if kind in s], kind)
                        for kind in kinds])))

    # -- tabs --

    def snapshot_text(self, tab):
        """/api/snapshot: the --once --json text of one tab, or of all."""
        tabs = TABS if tab == "all" else (tab,)
        return snapshot_json(snapshot(self.procfs, self.pid, tabs, json_rows=True))

    def tables(self, tab):
        """/api/tables: one tab as the session's tables, with changes and rates
        since the previous request for that tab, and when to ask again ("next")."""
        started, helpers = time.thread_time(), helper_cpu_seconds()
        out = self._tables(tab)
        cost = time.thread_time() - started + helper_cpu_seconds() - helpers
        with self.lock:
            old = self.tables_cost.get(tab)
            self.tables_cost[tab] = cost = cost if old is None else 0.5 * old + 0.5 * cost
        out["next"] = round(max(self.interval, cost / TABLES_SHARE), 2)
        return out

    def _tables(self, tab):
        snap = snapshot(self.procfs, self.pid, (tab,))
        data = snap["tabs"][tab]
        now = time.monotonic()
        with self.lock:
            prev = self.last.get(tab)
            if tab not in ("tcp", "udp", "raw"):     # their tables use no previous data
                self.last[tab] = (data, now)
        if data.get("owned_known") is False:
            self.unknown["ownership"] = data.get("owned_reason") or "unknown"
        elif tab in SOCKET_FILES:
            self.unknown.pop("ownership", None)
        prev_data, dt = (prev[0], now - prev[1]) if prev else (None, None)
        out = collections.OrderedDict(
            (key, snap[key]) for key in ("pid", "comm", "netns", "time"))
        out["tab"] = tab
        out["tables"] = [table_json(t) for t in tab_tables(tab, data, prev_data, dt)]
        return out

    def status(self):
        out = collections.OrderedDict((("pid", self.pid), ("comm", None), ("netns", None)))
        try:
            out["comm"] = self.procfs.process_status(self.pid)[0]
            out["netns"] = self.procfs.netns(self.pid) or "netns unknown"
        except NetsnoopError as err:
            out["gone"] = str(err)
        out["interval"] = self.interval
        out["processes_every"] = round(self.full_wait(), 2)
        out["tabs"] = list(TABS)
        out["feeds"] = [feed.status() for feed in self.feeds]
        out["events"] = self.hub.published
        out["streams"] = self.streams
        unknown = list(self.unknown.items())
        unknown += [(f.name + " feed", f.error) for f in self.feeds if f.error]
        out["unknown"] = [collections.OrderedDict((("what", what), ("why", why)))
                          for what, why in unknown]
        return out

    # -- who may ask --

    def cookie_name(self):
        """Unique per token: two dashboards on one host (cookies ignore the port)
        do not overwrite each other's cookie."""
        import hashlib
        return "netsnoop_" + hashlib.sha256(self.token.encode("ascii")).hexdigest()[:12]

    def authorized(self, headers, query):
        """The token from ?token=, Authorization: Bearer, or the page's cookie."""
        import hmac
        offered = list(query.get("token", ()))
        scheme, _, value = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        name = self.cookie_name()
        for header in headers.get_all("Cookie") or ():
            for part in header.split(";"):
                key, _, value = part.strip().partition("=")
                if key == name:
                    offered.append(value)
        want = self.token.encode("ascii")
        return any(hmac.compare_digest(text.encode("utf-8", "surrogateescape"), want)
                   for text in offered)

    def host_allowed(self, host):
        """A loopback dashboard answers only to a loopback Host: a page whose name was
        rebound to 127.0.0.1 (DNS rebinding) is not this site, whatever it knows."""
        if self.public or not host:
            return True
        name = host.rpartition("]")[0][1:] if host.startswith("[") else host.partition(":")[0]
        return loopback_host(name)


# --- HTTP ------------------------------------------------------------------------

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),         # the first URL carries the token
    ("Cache-Control", "no-store"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = ("default-src 'none'; script-src 'nonce-%s'; style-src 'nonce-%s'; "
            "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


class DashboardRequests(object):
    """Request handling, mixed into http.server's BaseHTTPRequestHandler by make_server.

    Every request: the token first (else 401, empty), then the Host and where the
    request comes from (else 403), then GET/HEAD only (else 405)."""

    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    def __getattr__(self, name):
        # http.server answers method M with do_M, else 501: every method but GET and
        # HEAD gets _other_method, so all of them pass the token check first
        if name.startswith("do_"):
            return self._other_method
        raise AttributeError(name)

    def log_message(self, *args):
        pass                # the one line on stderr is the URL

    def version_string(self):
        return PROG

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)

    def _other_method(self):
        self.close_connection = True        # its body, if any, is never read
        if self._refused():
            return
        self._empty(405, (("Allow", "GET, HEAD"),))

    def send_error(self, code, message=None, explain=None):
        """A malformed request: the status alone (no page echoing the request)."""
        self.close_connection = True
        self._empty(code)

    # -- answers --

    def _send(self, code, body, content_type, extra=(), csp=API_CSP, head=False):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        for key, value in SECURITY_HEADERS + tuple(extra):
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _empty(self, code, extra=()):
        self._send(code, b"", "text/plain; charset=utf-8", extra)

    def _json(self, code, obj_or_text, head):
        text = obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text)
        self._send(code, text.encode("utf-8"), "application/json; charset=utf-8", head=head)

    def _refused(self):
        """401 without the token; 403 for a foreign Host or a cross-site request."""
        dash = self.server.dashboard
        query = self._query()
        if not dash.authorized(self.headers, query):
            self._empty(401, (("WWW-Authenticate", 'Bearer realm="netsnoop"'),))
            return True
        site = self.headers.get("Sec-Fetch-Site")
        if not dash.host_allowed(self.headers.get("Host")) or \
                site not in (None, "same-origin", "none"):
            self._empty(403)
            return True
        return False

    def _query(self):
        import urllib.parse
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)

    def _handle(self, head):
        import urllib.parse
        if self._refused():
            return
        dash = self.server.dashboard
        path = urllib.parse.urlsplit(self.path).path
        query = self._query()
        tab = (query.get("tab") or ["tcp"])[0]
        try:
            if path == "/":
                self._page(query, head)
            elif path == "/api/events":
                self._events(head)
            elif path in ("/api/snapshot", "/api/tables") and \
                    tab not in (TABS + ("all",) if path == "/api/snapshot" else TABS):
                self._json(400, {"error": "unknown tab %r" % tab}, head)
            elif path == "/api/snapshot":
                self._json(200, dash.snapshot_text(tab), head)
            elif path == "/api/tables":
                self._json(200, dash.tables(tab), head)
            elif path == "/api/traffic":
                self._json(200, dash.traffic_json(), head)
            elif path == "/api/status":
                self._json(200, dash.status(), head)
            else:
                self._json(404, {"error": "no such page"}, head)
        except ProcessGone as err:
            self._json(410, {"error": str(err)}, head)
        except NetsnoopError as err:
            self._json(500, {"error": str(err)}, head)
        except (ConnectionError, socket.timeout):
            self.close_connection = True     # the browser went away mid-answer
        except Exception as err:    # noqa: BLE001 -- a bug: one line to the browser, not a traceback
            if os.environ.get("NETSNOOP_DEBUG"):
                raise
            self.close_connection = True
            self._json(500, {"error": "internal error: %s" % type(err).__name__}, head)
        dash.looked = time.monotonic()

    def _page(self, query, head):
        """The page, with a fresh nonce; the token moves from the URL to a cookie."""
        dash = self.server.dashboard
        cookie = ("Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Strict"
                  % (dash.cookie_name(), dash.token))
        if "token" in query:        # out of the address bar and the history
            self._send(303, b"", "text/plain; charset=utf-8",
                       (("Location", "/"), cookie), head=head)
            return
        nonce = new_token()
        self._send(200, dashboard_page(nonce).encode("utf-8"), "text/html; charset=utf-8",
                   (cookie,), PAGE_CSP % (nonce, nonce), head)

    def _events(self, head):
        """/api/events: Server-Sent Events, until the browser goes or the server stops."""
        dash = self.server.dashboard
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Content-Security-Policy", API_CSP)
        self.send_header("Connection", "close")
        for key, value in SECURITY_HEADERS:
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        last = self.headers.get("Last-Event-ID", "")
        client = dash.hub.subscribe(int(last) if last.isdigit() else None)
        with dash.lock:
            dash.streams += 1
        reported = 0
        try:
            self.wfile.write(b"retry: 2000\n\n")
            while not client.closed:
                messages, dropped = client.take(KEEPALIVE)
                if dropped != reported:
                    reported = dropped
                    messages.append(("event: dropped\ndata: %s\n\n" % json.dumps(
                        {"event": "dropped", "dropped": dropped})).encode("ascii"))
                self.wfile.write(b"".join(messages) or b": keep-alive\n\n")
        except (OSError, ValueError):
            pass            # the browser went away (or stalled past REQUEST_TIMEOUT)
        finally:
            dash.hub.unsubscribe(client)
            with dash.lock:
                dash.streams -= 1


class DashboardServing(object):
    """Mixed into ThreadingHTTPServer: at most MAX_CONNECTIONS at once, and no
    traceback on stderr for a connection that failed."""

    daemon_threads = True
    active = 0

    def process_request(self, request, client_address):
        with self.count_lock:
            if self.active >= MAX_CONNECTIONS:
                self.shutdown_request(request)
                return
            self.active += 1
        try:
            super(DashboardServing, self).process_request(request, client_address)
        except Exception:
            self._done()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super(DashboardServing, self).process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self):
        with self.count_lock:
            self.active -= 1

    def handle_error(self, request, client_address):
        pass


def make_server(host, port, dashboard):
    """A listening ThreadingHTTPServer for dashboard (not serving yet)."""
    import http.server      # ~50 ms of imports (email, html, mimetypes): only --serve pays

    class Handler(DashboardRequests, http.server.BaseHTTPRequestHandler):
        pass

    class Server(DashboardServing, http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    bind = "127.0.0.1" if host.lower() == "localhost" else host
    try:
        server = Server((bind, port), Handler)
    except (OSError, OverflowError) as err:
        raise NetsnoopError("cannot serve on %s:%d: %s" % (
            url_host(host), port, getattr(err, "strerror", None) or err))
    server.dashboard = dashboard
    server.count_lock = threading.Lock()
    return server


def run_serve(args, procfs):
    """--serve: the dashboard until Ctrl+C, SIGTERM/SIGHUP or --duration."""
    host, port = args.serve
    if not loopback_host(host) and not args.serve_public:
        raise UsageError("%s is not a loopback address: --serve-public is needed to serve "
                         "it (the token is still required)" % host)
    pid = args.pid or os.getpid()
    procfs.check_net(pid)
    token = read_token_file(args.token_file) if args.token_file else new_token()
    interval = session_interval(args.interval)[0]
    dash = Dashboard(procfs, pid, interval, token, public=args.serve_public)
    server = make_server(host, port, dash)
    thread = None
    try:
        with _StopFlag() as stop:
            dash.add_feed("procs", ProcScanner(procfs, args.backend), ProcRules(procfs))
            dash.add_feed("conns", ConnScanner(procfs))
            if procfs.netns(pid) != procfs.netns("self"):
                dash.unknown["connections of PID's namespace"] = (
                    "the connection feed watches netsnoop's own network namespace")
            if not procfs.sees_every_process() and procfs.hidepid():
                dash.unknown["other users' processes"] = "%s is mounted with hidepid" % (
                    procfs.root)
            dash.start()
            thread = threading.Thread(target=server.serve_forever, args=(0.5,),
                                      name="netsnoop-http")
            thread.daemon = True
            thread.start()
            sys.stderr.write("%s: dashboard at http://%s:%d/?token=%s\n" % (
                PROG, url_host(host), server.server_address[1], token))
            sys.stderr.flush()
            deadline = time.monotonic() + args.duration if args.duration else None
            while not stop.stopped and (deadline is None or time.monotonic() < deadline):
                time.sleep(STOP_CHECK)
    finally:
        dash.close()
        if thread is not None:
            server.shutdown()
        server.server_close()
    return EXIT_OK


# ---------------------------------------------------------------------------
# Web dashboard: the page
# ---------------------------------------------------------------------------
# Owns the page --serve sends: HTML, CSS and JavaScript in one string, no
# framework, nothing fetched from another host.  It calls only the server's
# endpoints (/api/events, /api/status, /api/tables, /api/traffic).  Every
# string from the system goes in with textContent, never as HTML; there are no
# inline handlers; the script and style run under the response's nonce.

DASHBOARD_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netsnoop</title>
<style nonce="{{NONCE}}">
body { font: 13px/1.35 system-ui, sans-serif; margin: 0; background: #fafafa; color: #222; }
header { position: sticky; top: 0; background: #263238; color: #eceff1; padding: 6px 10px; z-index: 1; }
header h1 { display: inline; font-size: 15px; margin-right: 12px; }
#status span { margin-right: 14px; }
#status .unknown, #status .bad { color: #ffcc80; }
main { padding: 8px 10px; }
h2 { font-size: 14px; margin: 10px 0 4px; }
h2 .count { font-weight: normal; color: #666; font-size: 12px; margin-left: 8px; }
.feeds { display: flex; gap: 12px; flex-wrap: wrap; }
.feed { flex: 1 1 520px; min-width: 0; }
.scroll { max-height: 300px; overflow: auto; border: 1px solid #ccc; background: #fff; }
table { border-collapse: collapse; width: 100%; font: 12px/1.3 ui-monospace, monospace; }
th, td { padding: 1px 6px; text-align: left; vertical-align: top; white-space: pre; }
td.wrap { white-space: pre-wrap; word-break: break-all; width: 100%; }
th { background: #eceff1; position: sticky; top: 0; cursor: pointer; user-select: none; }
td.right, th.right { text-align: right; }
tr.owned td { color: #1b5e20; font-weight: bold; }
tr.changed td { background: #fffde7; }
tr.warn td, tr.sev-warn td { background: #fff3e0; }
tr.alert td, tr.sev-alert td, tr.sev-critical td { background: #ffebee; color: #b71c1c; }
tr.sev-info td { background: #e3f2fd; }
.finding { display: block; font-weight: bold; }
input[type=search] { width: 260px; margin: 2px 0 4px; }
nav button { margin: 0 2px 4px 0; border: 1px solid #90a4ae; background: #fff; padding: 2px 8px; cursor: pointer; }
nav button.on { background: #263238; color: #fff; }
.notes { color: #555; margin: 2px 0 10px; }
.legend span { margin-right: 12px; white-space: nowrap; }
svg { background: #fff; border: 1px solid #ccc; width: 100%; height: 220px; }
svg text { font: 11px sans-serif; fill: #555; }
.error { color: #b71c1c; }
</style></head>
<body>
<header><h1>netsnoop</h1><span id="status">connecting...</span></header>
<main>
<div class="feeds">
 <div class="feed"><h2>New processes<span class="count" id="procs-count"></span></h2>
  <input type="search" id="procs-filter" placeholder="filter: text or /regex/">
  <div class="scroll"><table><thead><tr><th>Time</th><th class="right">PID</th>
  <th class="right">PPID</th><th>User</th><th>Command line</th></tr></thead>
  <tbody id="procs-rows"></tbody></table></div></div>
 <div class="feed"><h2>Connections<span class="count" id="conns-count"></span></h2>
  <input type="search" id="conns-filter" placeholder="filter: text or /regex/">
  <div class="scroll"><table><thead><tr><th>Time</th><th>Event</th><th>Local</th>
  <th>Peer</th><th>State</th><th>Process</th><th class="right">Bytes</th></tr></thead>
  <tbody id="conns-rows"></tbody></table></div></div>
</div>
<h2>Traffic <select id="chart-kind"></select></h2>
<svg id="chart" viewBox="0 0 1000 220" preserveAspectRatio="none"></svg>
<div class="legend" id="legend"></div>
<h2>Tabs</h2>
<nav id="tabbar"></nav>
<input type="search" id="tab-filter" placeholder="filter rows: text or /regex/">
<div id="tables"></div>
</main>
<script nonce="{{NONCE}}">
"use strict";
(function () {
  var MAX_ROWS = 2000, SVGNS = "http://www.w3.org/2000/svg";
  var COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f",
                 "#4e342e", "#ad1457"];
  var st = {tab: "tcp", interval: 2, sort: {}, kind: null, dropped: 0, live: false,
            counts: {procs: 0, conns: 0}, status: null, error: null, timer: null,
            tables: null, nextTables: 0, lastId: 0, lost: 0};

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  // control, bidi and invisible characters shown as escapes, as on the terminal
  function visible(s) {
    return String(s).replace(/[\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u061c\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2069\\ufeff]/g,
      function (c) {
        var n = c.charCodeAt(0);
        return n < 256 ? "\\\\x" + ("0" + n.toString(16)).slice(-2)
                       : "\\\\u" + ("000" + n.toString(16)).slice(-4);
      });
  }
  function quote(arg) {
    if (/^[A-Za-z0-9_@%+=:,.\\/-]+$/.test(arg)) { return arg; }
    return "'" + arg.replace(/'/g, "'\\"'\\"'") + "'";
  }
  function cmdline(ev) {
    if (!ev.cmdline || !ev.cmdline.length) { return "[" + ev.comm + "]"; }
    return ev.cmdline.map(quote).join(" ");
  }
  function clock(t) {
    var d = new Date(t * 1000);
    return d.toTimeString().slice(0, 8) + "." + ("00" + d.getMilliseconds()).slice(-3);
  }
  function human(n) {
    var units = ["B", "K", "M", "G", "T"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? n.toFixed(1) + units[i] : Math.round(n) + "B";
  }
  function hostport(addr, port) {
    return (String(addr).indexOf(":") >= 0 ? "[" + addr + "]" : addr) + ":" + port;
  }
  function matcher(text) {
    var m = /^\\/(.*)\\/$/.exec(text);
    if (m) {
      try { var re = new RegExp(m[1], "i"); return function (s) { return re.test(s); }; }
      catch (e) { return function () { return true; }; }
    }
    var want = text.toLowerCase();
    return function (s) { return s.toLowerCase().indexOf(want) >= 0; };
  }

  // --- the feeds: newest first, filterable, findings highlighted
  var RANK = {info: 1, warn: 2, warning: 2, alert: 3, critical: 4};
  function row(cells, rights, wrap) {
    var tr = el("tr");
    cells.forEach(function (text, i) {
      tr.appendChild(el("td", rights.indexOf(i) >= 0 ? "right" : i === wrap ? "wrap" : "",
                        visible(text === null || text === undefined ? "?" : text)));
    });
    return tr;
  }
  function addFindings(tr, ev, cell) {
    var worst = null;
    (ev.findings || []).forEach(function (f) {
      if (!worst || (RANK[f.severity] || 0) > (RANK[worst] || 0)) { worst = f.severity; }
      cell.appendChild(el("span", "finding", visible(
        "[" + f.severity + "] " + (f.rule ? f.rule + ": " : "") + f.text)));
    });
    if (worst) { tr.className = "sev-" + String(worst).replace(/[^a-z]/g, ""); }
  }
  function addRow(name, tr) {
    var body = $(name + "-rows");
    tr.searchText = tr.textContent;
    tr.hidden = !matcher($(name + "-filter").value)(tr.searchText);
    body.insertBefore(tr, body.firstChild);
    while (body.childNodes.length > MAX_ROWS) { body.removeChild(body.lastChild); }
    st.counts[name] += 1;
    $(name + "-count").textContent = st.counts[name] + " received";
  }
  function procEvent(ev) {
    var tr = row([clock(ev.time), ev.pid, ev.ppid, ev.user,
                  (ev.container ? "[ct] " : "") + (ev.event === "exec" ? "exec> " : "") +
                  cmdline(ev)], [1, 2], 4);
    addFindings(tr, ev, tr.lastChild);
    addRow("procs", tr);
  }
  function connEvent(ev) {
    var owner = ev.pid === null || ev.pid === undefined ? "uid " + ev.uid
      : ev.pid + " " + (ev.comm || "?") + (ev.cmdline && ev.cmdline.length ?
                                           ": " + ev.cmdline.map(quote).join(" ") : "");
    var bytes = ev.bytes_sent === null || ev.bytes_sent === undefined ? ""
      : "sent " + human(ev.bytes_sent) + " recv " + human(ev.bytes_received);
    var peer = ev.event === "listen" ? "" : hostport(ev.remote_address, ev.remote_port);
    var tr = row([clock(ev.time), ev.event, hostport(ev.local_address, ev.local_port), peer,
                  ev.state || "", owner, bytes], [6], 5);
    addFindings(tr, ev, tr.childNodes[5]);
    addRow("conns", tr);
  }
  function refilter(name) {
    var ok = matcher($(name + "-filter").value);
    Array.prototype.forEach.call($(name + "-rows").childNodes, function (tr) {
      tr.hidden = !ok(tr.searchText);
    });
  }
  // event ids follow each other: a gap is an event this page never got (dropped for
  // it, or gone from the backlog before a reconnect)
  function counted(m) {
    var id = parseInt(m.lastEventId, 10);
    if (st.lastId && id > st.lastId + 1) { st.lost += id - st.lastId - 1; renderStatus(); }
    if (id > st.lastId) { st.lastId = id; }
    return JSON.parse(m.data);
  }
  function connect() {
    var source = new EventSource("/api/events");
    source.addEventListener("procs", function (m) { procEvent(counted(m)); });
    source.addEventListener("conns", function (m) { connEvent(counted(m)); });
    source.addEventListener("dropped", function (m) {
      st.dropped = JSON.parse(m.data).dropped; renderStatus();
    });
    source.onopen = function () { st.live = true; renderStatus(); };
    source.onerror = function () { st.live = false; renderStatus(); };
  }

  // --- the status line
  function renderStatus() {
    var box = $("status"), s = st.status;
    clear(box);
    function part(text, cls) { box.appendChild(el("span", cls || "", visible(text))); }
    if (s) {
      part("PID " + s.pid + (s.comm ? " " + s.comm : ""));
      if (s.netns) { part(s.netns); }
      if (s.gone) { part(s.gone, "bad"); }
      var slower = [];
      if (st.tables && st.tables.next > s.interval + 0.05) {
        slower.push("this tab every " + st.tables.next.toFixed(1) + "s");
      }
      if (s.processes_every > s.interval + 0.05) {
        slower.push("TCP by process every " + s.processes_every.toFixed(1) + "s");
      }
      part("every " + s.interval + "s" + (slower.length ? " (" + slower.join(", ") + ")" : ""));
      s.feeds.forEach(function (f) {
        part(f.name + " feed" + (f.backend ? " (" + f.backend + ")" : "") +
             (f.seen !== null ? ": " + f.seen + " seen" : ": " + f.events + " events") +
             (f.missed ? ", " + f.missed + " missed" : ""));
      });
      s.unknown.forEach(function (u) { part(u.what + " unknown: " + u.why, "unknown"); });
    }
    part(st.live ? "live" : "feed disconnected", st.live ? "" : "bad");
    part("dropped " + st.dropped, st.dropped ? "bad" : "");
    part("lost " + st.lost, st.lost ? "bad" : "");
    if (st.error) { part(st.error, "bad"); }
  }

  // --- the tabs: sortable tables, refreshed every interval
  function sortKey(text) {
    var m = /^([-+]?[0-9]+(?:\\.[0-9]+)?)([BKMGT])?(\\/s)?$/.exec(text);
    if (m) { return [0, parseFloat(m[1]) * Math.pow(1024, m[2] ? "BKMGT".indexOf(m[2]) : 0), ""]; }
    return [1, 0, text.toLowerCase()];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) { return a[0] - b[0]; }
    if (a[1] !== b[1]) { return a[1] - b[1]; }
    return a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0;
  }
  function drawTable(box, t) {
    var key = st.tab + "/" + t.title, sort = st.sort[key], ok = matcher($("tab-filter").value);
    box.appendChild(el("h2", "", visible(t.title)));
    var wrap = el("div", "scroll"), table = el("table"), head = el("tr"), body = el("tbody");
    t.columns.forEach(function (c, i) {
      var th = el("th", c.align === "right" ? "right" : "",
                  c.title + (sort && sort.col === i ? (sort.desc ? " \\u25bc" : " \\u25b2") : ""));
      th.addEventListener("click", function () {
        var cur = st.sort[key];
        st.sort[key] = {col: i, desc: !!(cur && cur.col === i && !cur.desc)};
        drawTables(st.tables);
      });
      head.appendChild(th);
    });
    var rows = t.rows.map(function (r, n) { return [r, n]; });
    if (sort) {
      rows.sort(function (x, y) {
        var c = compare(sortKey(x[0].cells[sort.col] || ""), sortKey(y[0].cells[sort.col] || ""));
        return (sort.desc ? -c : c) || x[1] - y[1];
      });
    }
    rows.forEach(function (pair) {
      var r = pair[0], tr = el("tr", r.role || "");
      r.cells.forEach(function (text, i) {
        tr.appendChild(el("td", t.columns[i] && t.columns[i].align === "right" ? "right" : "",
                          visible(text)));
      });
      tr.hidden = !ok(tr.textContent);
      body.appendChild(tr);
    });
    var thead = el("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    table.appendChild(body);
    wrap.appendChild(table);
    box.appendChild(wrap);
    t.notes.forEach(function (n) { box.appendChild(el("div", "notes", visible(n))); });
  }
  function drawTables(data) {
    var box = $("tables");
    st.tables = data;
    clear(box);
    if (!data) { return; }
    data.tables.forEach(function (t) { drawTable(box, t); });
  }
  function drawTabbar(tabs) {
    var bar = $("tabbar");
    clear(bar);
    tabs.forEach(function (name) {
      var b = el("button", name === st.tab ? "on" : "", name);
      b.type = "button";
      b.addEventListener("click", function () {
        st.tab = name;
        drawTabbar(tabs);
        drawTables(null);
        st.nextTables = 0;
        refresh();
      });
      bar.appendChild(b);
    });
  }

  // --- the chart: bytes per second over the last minutes, drawn here in SVG
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function drawChart(data) {
    var select = $("chart-kind"), chart = $("chart"), legend = $("legend");
    if (data.kinds.length && data.kinds.indexOf(st.kind) < 0) { st.kind = data.kinds[0]; }
    if (select.childNodes.length !== data.kinds.length) {
      clear(select);
      data.kinds.forEach(function (k) {
        var o = el("option", "", k === "interfaces" ? "interfaces (rx/tx)" : "TCP by " +
                   (k === "processes" ? "process" : "cgroup"));
        o.value = k;
        select.appendChild(o);
      });
    }
    select.value = st.kind;
    clear(chart);
    clear(legend);
    var found = data.charts.filter(function (c) { return c.kind === st.kind; })[0];
    if (!found || !found.times.length) {
      chart.appendChild(svg("text", {x: 10, y: 20}, "collecting: the chart starts after two samples"));
      return;
    }
    // the last minutes: five at most, one at least, so a young history is not a sliver
    var end = found.times[found.times.length - 1], peak = 1;
    var span = Math.min(data.window, Math.max(60, end - found.times[0]));
    var start = end - span;
    found.series.forEach(function (s) {
      s.values.forEach(function (v) { if (v !== null && v > peak) { peak = v; } });
    });
    chart.setAttribute("data-peak", peak);
    chart.appendChild(svg("text", {x: 4, y: 12}, human(peak) + "/s"));
    chart.appendChild(svg("text", {x: 4, y: 216}, "-" + Math.round(span) + " s"));
    chart.appendChild(svg("text", {x: 970, y: 216}, "now"));
    found.series.forEach(function (s, n) {
      var colour = COLOURS[n % COLOURS.length], points = [], last = null;
      s.values.forEach(function (v, i) {
        if (v === null) { return; }
        var x = (found.times[i] - start) / span * 1000, y = 205 - v / peak * 190;
        points.push(x.toFixed(1) + "," + y.toFixed(1));
        last = v;
      });
      var line = svg("polyline", {points: points.join(" "), fill: "none", stroke: colour,
                                  "stroke-width": 1.5});
      line.setAttribute("data-name", s.name);
      line.setAttribute("data-last", last === null ? "" : last);
      chart.appendChild(line);
      var item = el("span", "", "\\u25a0 " + visible(s.name) +
                    (last === null ? "" : " " + human(last) + "/s"));
      item.style.color = colour;
      legend.appendChild(item);
    });
  }

  // --- the loop
  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.status === 401) { throw new Error("not authorized: open the URL with the token again"); }
      return r.json().then(function (j) {
        if (!r.ok) { throw new Error(j.error || "HTTP " + r.status); }
        return j;
      });
    });
  }
  function refresh() {
    clearTimeout(st.timer);
    var done = function () { st.timer = setTimeout(refresh, st.interval * 1000); };
    if (document.hidden) { done(); return; }
    Promise.all([
      getJSON("/api/status").then(function (s) {
        st.status = s;
        if (s.interval !== st.interval || !$("tabbar").childNodes.length) {
          st.interval = s.interval;
          drawTabbar(s.tabs);
        }
      }),
      // a costly tab (see TABLES_SHARE) says when to ask again
      Date.now() < st.nextTables ? null :
        getJSON("/api/tables?tab=" + encodeURIComponent(st.tab)).then(function (d) {
          if (d.tab === st.tab) {       // not an answer for a tab left since
            st.nextTables = Date.now() + d.next * 1000 - 50;
            drawTables(d);
          }
        }),
      getJSON("/api/traffic").then(drawChart)
    ]).then(function () { st.error = null; }, function (e) { st.error = String(e.message || e); })
      .then(function () { renderStatus(); done(); });
  }

  ["procs", "conns"].forEach(function (name) {
    $(name + "-filter").addEventListener("input", function () { refilter(name); });
  });
  $("tab-filter").addEventListener("input", function () { drawTables(st.tables); });
  $("chart-kind").addEventListener("change", function () { st.kind = this.value; refresh(); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { refresh(); } });
  connect();
  refresh();
})();
</script>
</body></html>
"""


def dashboard_page(nonce):
    """The page with this response's CSP nonce in its script and style tags."""
    return DASHBOARD_PAGE.replace("{{NONCE}}", nonce)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit status 2)."""

    def error(self, message):
        raise UsageError("%s (try --help)" % message)


def positive_pid(text):
    # ASCII digits only: str.isdigit() and int() also take "١٢" or "²".
    if not re.match(r"[0-9]+\Z", text) or int(text) <= 0:
        raise argparse.ArgumentTypeError("PID must be a positive number, not %r" % text)
    return int(text)


def positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text)
    if not (value > 0) or value > 86400:
        raise argparse.ArgumentTypeError("seconds must be > 0 and <= 86400: %r" % text)
    return value


def build_parser():
    p = ArgumentParser(
        prog=PROG,
        usage="%(prog)s PID [--tab TAB] | PID --once [--tab TAB|all] [--json] | "
              "--procs [options] | --conns [--procs] [options] | --serve [HOST:]PORT [PID]",
        description="Network view of a process (read from /proc/PID/net, i.e. its "
                    "network namespace) and a feed of new processes.",
        epilog="TAB: " + " ".join(TABS) + ".  Exit status: 0 ok, 1 error, 2 usage.")
    p.add_argument("pid", nargs="?", type=positive_pid, metavar="PID",
                   help="process whose network namespace to show")
    p.add_argument("--tab", choices=TABS + ("all",), metavar="TAB",
                   help="tab to show (default tcp); with --once also 'all'")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="JSON output (with --once or --procs)")
    p.add_argument("--procs", action="store_true", help="stream newly created processes")
    p.add_argument("--conns", action="store_true",
                   help="stream TCP opens, listens and closes (with --procs: both)")
    p.add_argument("--log", metavar="FILE", help="--procs: append events to FILE (0600)")
    p.add_argument("--filter", metavar="REGEX",
                   help="--procs: only processes whose command line, name or user match")
    p.add_argument("--interval", type=positive_seconds, metavar="SECONDS",
                   help="session: refresh interval (default 2, kept within 0.2..3600); "
                        "--procs: slowest poll of the PID counter when quiet (default "
                        "%g, at most %g: a longer one is refused)" % (SLOW_PERIOD, MAX_WAIT))
    p.add_argument("--backend", choices=("auto", "fast", "python"), default="auto",
                   help="--procs scanner (default auto: fast when built)")
    p.add_argument("--duration", type=positive_seconds, metavar="SECONDS",
                   help="--procs: stop after SECONDS")
    p.add_argument("--serve", type=serve_address, metavar="[HOST:]PORT",
                   help="web dashboard on HOST (default 127.0.0.1), for PID (default "
                        "netsnoop's own); the URL with its token goes to stderr")
    p.add_argument("--serve-public", action="store_true",
                   help="--serve: allow a HOST that is not loopback (the token is still needed)")
    p.add_argument("--token-file", metavar="FILE",
                   help="--serve: the token kept in FILE (0600; created when absent)")
    p.add_argument("--proc", default="/proc", metavar="DIR",
                   help="read DIR instead of /proc")
    p.add_argument("--version", action=VersionAction)
    add_alert_options(p)
    return p


class VersionAction(argparse.Action):
    """--version: the text (which scanner loads) is worked out only when asked for."""

    def __init__(self, option_strings, dest, **kw):
        kw.update(nargs=0, default=argparse.SUPPRESS,
                  help="show the version and which process scanner is available")
        argparse.Action.__init__(self, option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        write_stdout(version_text() + "\n")
        parser.exit()


def version_text():
    return "%s %s (process scanner: %s)" % (PROG, __version__, available_backend())


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.serve is not None:
        return check_serve_args(args)
    if args.serve_public or args.token_file:
        raise UsageError("--serve-public and --token-file go with --serve")
    feed = args.procs or args.conns
    if feed and args.pid is not None:
        raise UsageError("give either PID or --procs/--conns, not both (try --help)")
    if not feed and args.pid is None:
        raise UsageError("a PID, --procs or --conns is required (try --help)")
    if args.filter is not None:
        args.filter_re = compile_filter(args.filter)
    if args.tab == "all" and not args.once:
        raise UsageError("--tab all needs --once")
    if args.pid is not None and (args.log or args.filter or args.duration):
        raise UsageError("--log, --filter and --duration go with --procs or --conns")
    if feed and (args.once or args.tab):
        raise UsageError("--once and --tab go with PID, not --procs or --conns")
    if args.once and args.interval is not None:
        raise UsageError("--interval goes with the session or --procs, not --once")
    if args.procs and args.interval is not None and args.interval > MAX_WAIT:
        # refused, not capped: the wait that polls never lasts longer, and a slower
        # poll would only let more short-lived processes go unseen
        raise UsageError("--procs --interval is at most %g second (the slowest poll of "
                         "the PID counter), not %g" % (MAX_WAIT, args.interval))
    if args.json and not (args.once or feed):
        raise UsageError("--json goes with --once or --procs (the session is for a terminal)")
    check_alert_options(args)
    return args


def check_serve_args(args):
    """--serve [PID]: the feed's and session's output options do not apply."""
    if args.procs or args.conns or args.once or args.tab or args.json or args.log or \
            args.filter:
        raise UsageError("--serve takes PID, --interval, --backend, --duration, --token-file, "
                         "--serve-public and --proc only")
    return args


def compile_filter(text):
    """--filter REGEX -> compiled; any complaint of re (an error, a warning such as
    "possible nested set" for a POSIX [[:digit:]], a repeat too large) is a usage
    error, never a warning or traceback."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(text)
    except (re.error, Warning, OverflowError, RecursionError, ValueError) as err:
        hint = " (POSIX classes such as [[:digit:]] are not Python's: use [0-9])" \
            if "[[:" in text else ""
        raise UsageError("bad --filter regex: %s%s" % (err, hint))


def run_once(args, procfs):
    tabs = TABS if args.tab == "all" else (args.tab or "tcp",)
    snap = snapshot(procfs, args.pid, tabs, json_rows=args.json)
    if args.json:
        out = snapshot_json(snap) + "\n"
    else:
        out = format_snapshot(snap)
    write_stdout(out)
    return EXIT_OK


def write_stdout(text):
    """Write and flush; a closed stdout or a full disk is a one-line error (a closed
    pipe is not: BrokenPipeError goes up to main, which ends quietly)."""
    if sys.stdout is None:
        raise NetsnoopError("standard output is closed")
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:
            # an ASCII-only stdout (PYTHONIOENCODING=ascii): escape what it cannot take
            encoding = sys.stdout.encoding or "ascii"
            sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        _quiet_stdout()             # the exit-time flush would fail the same way
        raise NetsnoopError("cannot write output: %s" % (err.strerror or err))


def release_free_memory():
    """Give the memory freed during start-up back to the system (glibc's malloc_trim).

    It counts where netsnoop.py is imported from source, with no .pyc to load
    (PYTHONDONTWRITEBYTECODE, a read-only __pycache__): the syntax tree of the
    compile is freed, but glibc keeps its pages.  RSS after start-up of the
    pip-installed `netsnoop --procs`, Python 3.11, in that case: 22.2 MB without,
    15.4 MB with.  With a .pyc (~14.3 MB either way) or as the lone script, whose
    tree CPython holds until it ends (~26 MB either way), it gains nothing.
    """
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (ImportError, OSError, AttributeError):
        pass


def run(args):
    procfs = ProcFS(args.proc)
    procfs.check_root()
    if args.once:                   # (--procs --once is a usage error)
        return run_once(args, procfs)
    if args.serve is not None:
        return run_serve(args, procfs)
    if not (args.procs or args.conns):
        procfs.check_net(args.pid)
    release_free_memory()
    if args.conns:
        return run_conns(args, procfs)
    if args.procs:
        return run_procs(args, procfs)
    return run_session(args, procfs)


def _quiet_stdout():
    """After a closed pipe, point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None):
    try:
        args = parse_args(argv)
        return run(args)
    except NetsnoopError as err:
        sys.stderr.write("%s: %s\n" % (PROG, printable(str(err))))
        return err.status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except SystemExit as done:      # argparse's --help and --version
        return done.code if isinstance(done.code, int) else EXIT_OK
    except Exception as err:    # a bug: one line, not a traceback (NETSNOOP_DEBUG=1 shows it)
        if os.environ.get("NETSNOOP_DEBUG"):
            raise
        sys.stderr.write("%s: internal error: %s: %s (NETSNOOP_DEBUG=1 shows where)\n"
                         % (PROG, type(err).__name__, printable(str(err), 300)))
        return EXIT_FAIL


def main_exit():
    """Console-script entry point.  The interpreter's teardown (freeing every record
    one by one) is not skipped with os._exit: it costs a 20,000-socket
    `--once --tab tcp --json` run 4-5% of its CPU, ~12 ms, unseen beside the noise
    of its wall time (bench/bench_net.py's set-up, four runs of 15-40 rounds)."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
