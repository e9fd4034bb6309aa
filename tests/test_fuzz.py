"""Fuzzing the parsers: random and mutated /proc files never make them raise.

Seeds are real files (this machine's /proc/net, everything under fixtures/), mutated
by byte flips, "interesting" characters (a sign, an underscore, a control
character in a number), truncation, line duplication or deletion and column
insertion.  Runs are derandomized so a CI failure reproduces; a crashing
input found here is kept in fixtures/fuzz/ and replayed by
test_fuzz_fixture_does_not_crash.
"""
import glob
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netsnoop
from conftest import FIXTURES, ROOT, run_netsnoop

UPSTREAM = os.path.join(FIXTURES, "procfs", "proc")     # prometheus/procfs's fixtures
FUZZ_FIXTURES = os.path.join(FIXTURES, "fuzz")

# Parser name -> (function taking text, file names whose contents seed it).
PARSERS = {
    "tcp": (lambda t: netsnoop.parse_sockets(t, "tcp"), ("tcp",)),
    "tcp6": (lambda t: netsnoop.parse_sockets(t, "tcp6"), ("tcp6",)),
    "udp": (lambda t: netsnoop.parse_sockets(t, "udp"), ("udp", "udplite")),
    "udp6": (lambda t: netsnoop.parse_sockets(t, "udp6"), ("udp6", "udplite6")),
    "raw": (lambda t: netsnoop.parse_sockets(t, "raw"), ("raw",)),
    "raw6": (lambda t: netsnoop.parse_sockets(t, "raw6"), ("raw6",)),
    "icmp": (lambda t: netsnoop.parse_sockets(t, "icmp"), ("icmp",)),
    "icmp6": (lambda t: netsnoop.parse_sockets(t, "icmp6"), ("icmp6",)),
    "arp": (netsnoop.parse_arp, ("arp",)),
    "dev": (netsnoop.parse_dev, ("dev",)),
    "snmp": (netsnoop.parse_snmp, ("snmp", "netstat")),
    "snmp6": (netsnoop.parse_snmp6, ("snmp6",)),
    "softnet": (netsnoop.parse_softnet, ("softnet_stat", "softnet_stat.broken")),
    "route": (netsnoop.parse_route, ("route", "net_route_test.route")),
    "ipv6_route": (netsnoop.parse_ipv6_route, ("ipv6_route",)),
    "hex_table": (netsnoop.parse_hex_table, ("arp_cache", "ndisc_cache")),
}

# Minimal stand-ins so every parser has a seed even on a machine without
# IPv6 or some /proc/net files, and should fixtures/ lose a file.
FALLBACK_SEEDS = {
    "tcp": b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
           b"   uid  timeout inode\n   0: 0100007F:0016 00000000:0000 0A 00000000:00000000"
           b" 00:00000000 00000000     0        0 1532 1 0000000000000000 100 0 0 10 0\n",
    "arp": b"IP address       HW type     Flags       HW address            Mask     Device\n"
           b"192.0.2.1        0x1         0x2         52:54:00:12:34:56     *        eth0\n",
    "dev": b"Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: "
           + b" ".join(b"%d" % i for i in range(16)) + b"\n",
    "snmp": b"Tcp: RtoMin RetransSegs\nTcp: 200 3\n",
    "snmp6": b"Ip6InReceives 5\nIcmp6InMsgs 2\n",
    "softnet": b" ".join([b"0000000a"] * 13) + b"\n",
    "route": b"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
             b"eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
    "ipv6_route": b"20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
                  b"00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n",
    "hex_table": b"entries  allocs destroys\n00000003  00000005 00000002\n",
    "stat": b"1234 (a) b) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0\n",
}
for _proto in ("tcp6", "udp", "udp6", "raw", "raw6", "icmp", "icmp6"):
    FALLBACK_SEEDS[_proto] = FALLBACK_SEEDS["tcp"]


def _read(path, cap=1 << 18):
    try:
        with open(path, "rb") as f:
            return f.read(cap)
    except OSError:
        return None


def seed_files():
    """{parser name: [bytes, ...]}: real files first, fallbacks when none exists."""
    roots = ["/proc/net", "/proc/net/stat"]
    roots += sorted(glob.glob(os.path.join(FIXTURES, "**", ""), recursive=True))
    seeds = {}
    for name, (_, files) in PARSERS.items():
        found = []
        for root in roots:
            for fname in files:
                data = _read(os.path.join(root, fname))
                if data:
                    found.append(data)
        seeds[name] = found or [FALLBACK_SEEDS[name]]
    stat = [_read("/proc/self/stat")] + [_read(os.path.join(UPSTREAM, pid, "stat"))
                                          for pid in ("26231", "26232")]
    seeds["stat"] = [s for s in stat if s] + [FALLBACK_SEEDS["stat"]]
    return seeds


SEEDS = seed_files()

# Characters a damaged or hostile file may hold where a number is expected:
# int() accepts signs, underscores and blanks, so they are worth trying.
INTERESTING = [b"-", b"+", b"_", b" ", b"\t", b":", b"\x00", b"\x1c", b"\x85", b"\xff",
               b"\n", b"(", b")", b"F" * 9, b"-0000001", b"0" * 40, b"\xe2\x80\xa8", b"x"]

NUMBER_DAMAGE = [b"-", b"+", b"_", b"-0000001", b"\x1c", b"F" * 9, b"1_", b"0x"]


@st.composite
def mutated(draw, seeds):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "interesting", "truncate", "dup_line",
                                   "drop_line", "insert_column", "replace_column",
                                   "replace_column", "random_bytes")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "interesting":
            piece = draw(st.sampled_from(INTERESTING))
            data[pos:pos + draw(st.integers(0, len(piece)))] = piece
        elif op == "truncate":
            del data[pos:]
        elif op in ("dup_line", "drop_line", "insert_column", "replace_column"):
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(i, lines[i])
            elif op == "drop_line":
                del lines[i]
            elif op == "insert_column":
                cols = lines[i].split(b" ")
                cols.insert(draw(st.integers(0, len(cols))),
                            draw(st.sampled_from([b"0", b"00000000", b"ZZ", b"1:2", b""])))
                lines[i] = b" ".join(cols)
            else:
                # A whole field becomes a damaged number: "-0000001:0016".
                cols = lines[i].split()
                if cols:
                    j = draw(st.integers(0, len(cols) - 1))
                    piece = draw(st.sampled_from(NUMBER_DAMAGE))
                    cols[j] = piece + cols[j][len(piece):]
                    lines[i] = b" ".join(cols)
            data = bytearray(b"\n".join(lines))
        elif op == "random_bytes":
            data[pos:pos] = draw(st.binary(max_size=16))
    return netsnoop.decode(bytes(data))


def check_result(name, result):
    """A parser's result is a Records or a Sections with a sane skip count."""
    assert isinstance(result, (netsnoop.Records, netsnoop.Sections)), (name, type(result))
    assert isinstance(result.skipped, int) and result.skipped >= 0


FUZZ_SETTINGS = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_survives_mutated_real_files(name):
    parse = PARSERS[name][0]

    @FUZZ_SETTINGS
    @given(mutated(SEEDS[name]))
    def check(text):
        check_result(name, parse(text))

    check()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parser_survives_random_text(name):
    parse = PARSERS[name][0]
    alphabet = st.sampled_from("0123456789abcdefABCDEF:. \t\n-+_xX()|\x1c\x85\u2028\udcff")

    @settings(derandomize=True, max_examples=60, deadline=None, database=None)
    @given(st.one_of(st.text(alphabet, max_size=400), st.text(max_size=200),
                     st.binary(max_size=300).map(netsnoop.decode)))
    def check(text):
        check_result(name, parse(text))

    check()


@FUZZ_SETTINGS
@given(st.one_of(mutated(SEEDS["stat"]), st.text(max_size=200)))
def test_parse_stat_line_raises_only_value_error(text):
    """Its contract: (comm, fields) or ValueError; ProcFS turns that into ProcessGone."""
    try:
        comm, rest = netsnoop.parse_stat_line(text)
    except ValueError:
        return
    assert isinstance(comm, str) and isinstance(rest, list)


@pytest.mark.parametrize("stat", [b"", b"1234 no parens S 1", b"1234 (x) ", b"1234 (x)",
                                  b")( Z", b"\xff\xfe(\x1b[2J)"])
def test_broken_stat_reaches_the_user_as_one_line(tmp_path, stat):
    """process_status (the caller of parse_stat_line) handles its ValueError."""
    pid = tmp_path / "4242"
    (pid / "net").mkdir(parents=True)
    (pid / "stat").write_bytes(stat)
    r = run_netsnoop("--proc", tmp_path, "4242", "--once", "--json")
    assert r.returncode == 1, r
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("netsnoop: ") and "4242" in lines[0], r.stderr
    assert "\x1b" not in r.stderr


def fuzz_fixture_files():
    if not os.path.isdir(FUZZ_FIXTURES):
        return []
    return sorted(f for f in os.listdir(FUZZ_FIXTURES) if not f.startswith("."))


@pytest.mark.parametrize("fname", fuzz_fixture_files())
def test_fuzz_fixture_does_not_crash(fname):
    """fixtures/fuzz/PARSER__QUIRK: inputs that once crashed PARSER."""
    name = fname.split("__")[0]
    with open(os.path.join(FUZZ_FIXTURES, fname), "rb") as f:
        text = netsnoop.decode(f.read())
    result = PARSERS[name][0](text)
    check_result(name, result)
    assert result.skipped >= 1, "the damaged line should be counted as skipped"


def test_fuzz_fixtures_exist():
    """The crashes found so far stay replayed (see the report of issue 5)."""
    assert os.path.isdir(FUZZ_FIXTURES) and fuzz_fixture_files(), \
        "fixtures/fuzz/ is missing from %s" % ROOT
