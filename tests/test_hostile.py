"""Hostile strings: names, command lines and comms carrying control characters,
escape sequences, C1, bidi overrides, invalid UTF-8, or megabytes.

Nothing reaches the terminal raw (text output, session); JSON keeps the exact
value: json.loads(...).encode("utf-8", "surrogateescape") gives back the bytes.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import netsnoop
from conftest import NETSNOOP, ROOT, needs_root_netns

# Each one a way to take over or deceive a terminal.  As interface names in
# line-based files they hold no ASCII whitespace (the kernel forbids it).
HOSTILE = [
    b"\x1b[2J\x1b[31mred",         # clear screen, colour
    b"\x1b]2;pwned\x07",           # OSC: set the window title
    b"\x9b31mc1",                  # raw byte 0x9b: a C1 CSI to an 8-bit terminal
    b"\xc2\x9b31mc1utf8",          # U+009B, the same C1 CSI as UTF-8
    b"\xe2\x80\xaeevil",           # U+202E RIGHT-TO-LEFT OVERRIDE
    b"\xe2\x81\xa6iso\xe2\x81\xa9",  # U+2066/U+2069 isolates
    b"bad\xff\xfe\xc3",            # invalid UTF-8
    b"bs\x08\x7fdel\x01",           # backspace, DEL, SOH
    b"ln\xe2\x80\xa8sep\xc2\x85",  # U+2028, NEL
    b"\x1c\x1d\x1e\x1fsplit",      # what str.split() takes for blanks
]
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def unsafe_chars(text):
    """Characters that must not reach a terminal raw (an independent definition)."""
    return [ch for ch in text
            if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS]


def assert_terminal_safe(raw):
    """Output bytes: valid UTF-8 whose only control character is the newline."""
    text = raw.decode("utf-8")        # raises on a raw invalid byte such as 0x9b
    bad = [ch for ch in unsafe_chars(text) if ch != "\n"]
    assert not bad, "raw unsafe characters in the output: %r" % sorted(set(bad))


# --- printable() -------------------------------------------------------------

@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.text(), st.one_of(st.none(), st.integers(0, 50)))
@example("\u061c", None)           # ARABIC LETTER MARK, a bidi control rarely drawn
def test_printable_output_is_terminal_safe(text, limit):
    out = netsnoop.printable(text, limit)
    assert not unsafe_chars(out), (text, out)
    out.encode("utf-8")             # raises on a lone surrogate


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(st.text(), st.text())
def test_printable_is_injective(a, b):
    """Two different strings never look the same (an escape cannot be forged)."""
    if a != b:
        assert netsnoop.printable(a) != netsnoop.printable(b), (a, b)


@settings(derandomize=True, max_examples=200, deadline=None, database=None)
@given(st.binary())
def test_printable_is_injective_on_bytes_from_proc(data):
    """Raw bytes (decoded as netsnoop decodes /proc) map one-to-one: 0x9b != U+009B."""
    out = netsnoop.printable(netsnoop.decode(data))
    assert netsnoop.printable(netsnoop.decode(data + b"\x9b")) != \
        netsnoop.printable(netsnoop.decode(data) + "\x9b")
    assert not unsafe_chars(out)


@settings(derandomize=True, max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1), st.integers(1, 30))
def test_printable_cuts_visibly(text, limit):
    out = netsnoop.printable(text, limit)
    if len(text) > limit:
        cut = len(text) - limit
        assert out.endswith("...[+%d char%s]" % (cut, "" if cut == 1 else "s"))
    else:
        assert out == netsnoop.printable(text)


def test_printable_examples():
    assert netsnoop.printable("a\x1b[31mb") == "a\\e[31mb"
    assert netsnoop.printable("\\e") == "\\\\e"
    assert netsnoop.printable(netsnoop.decode(b"\x9b")) == "\\x9b"
    assert netsnoop.printable("\x9b") == "\\u009b"
    assert netsnoop.printable("\u202e") == "\\u202e"
    assert netsnoop.printable("x" * 10, 4) == "xxxx...[+6 chars]"


# --- a fake --proc tree full of hostile names ---------------------------------------

PID = 4321
DEV_HEADER = (b"Inter-|   Receive                                                |  Transmit\n"
              b" face |bytes    packets errs drop fifo frame compressed multicast|bytes    "
              b"packets errs drop fifo colls carrier compressed\n")
HUGE = b"\x1b[2J" + b"A" * (2 << 20)          # 2 MB, and it starts with an escape
COMM = b"\x1b[2J\x9b\xe2\x80\xae\xff\nfake) S 1 (x"   # a comm may hold ") " and a newline


def dev_line(name, n):
    return b"%6s: " % name + b" ".join(b"%d" % (n + i) for i in range(16)) + b"\n"


def make_tree(root, comm, names):
    """A --proc tree: PID whose comm, interfaces, ARP devices and routes carry `names`."""
    pid = root / str(PID)
    net = pid / "net"
    net.mkdir(parents=True)
    (pid / "fd").mkdir()
    (pid / "ns").mkdir()
    os.symlink("net:[4026539999]", str(pid / "ns" / "net"))
    (pid / "stat").write_bytes(b"%d (%s) S 1 %d %d 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"
                               % (PID, comm, PID, PID))
    (pid / "cmdline").write_bytes(b"\0".join([HUGE] + names) + b"\0")
    (net / "dev").write_bytes(DEV_HEADER + b"".join(dev_line(n, i) for i, n in enumerate(names)))
    arp = b"IP address       HW type     Flags       HW address            Mask     Device\n"
    for i, n in enumerate(names):
        arp += b"192.0.2.%-8d 0x1         0x2         02:00:00:00:00:%02x     *        %s\n" % (
            i + 1, i, n)
    (net / "arp").write_bytes(arp)
    route = b"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    for n in names:
        route += b"%s\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" % n
    (net / "route").write_bytes(route)
    v6 = b""
    for n in names:
        v6 += (b"20010db8000000000000000000000000 20 00000000000000000000000000000000 00 "
               b"00000000000000000000000000000000 00000100 00000001 00000000 00000001 %s\n" % n)
    (net / "ipv6_route").write_bytes(v6)
    return root


def run_bytes(*args, **kw):
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]
    return subprocess.run([os.fsencode(sys.executable), os.fsencode(NETSNOOP)] + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, **kw)


@pytest.fixture
def hostile_tree(tmp_path):
    names = HOSTILE + [HUGE]
    return make_tree(tmp_path, COMM, names), names


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_text_output_has_nothing_raw(hostile_tree, locale):
    root, names = hostile_tree
    env = dict(os.environ, LC_ALL=locale, LANG=locale)
    r = run_bytes("--proc", root, PID, "--once", "--tab", "all", env=env)
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert_terminal_safe(r.stderr)
    text = r.stdout.decode("utf-8")
    assert "\\e[2J\\e[31mred" in text and "\\u202eevil" in text and "\\x9b31mc1" in text
    assert "\\u009b31mc1utf8" in text
    # Every name shows up once per table it is in: traffic, arp, and both routes.
    assert text.count("\\e]2;pwned\\x07") >= 4, text[:2000]
    # The 2 MB name is cut visibly, and the output stays small.
    assert re.search(r"\.\.\.\[\+\d+ chars\]", text)
    assert len(r.stdout) < 200000, len(r.stdout)


def test_json_keeps_the_exact_bytes(hostile_tree):
    root, names = hostile_tree
    r = run_bytes("--proc", root, PID, "--once", "--tab", "all", "--json")
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)                  # ensure_ascii: \u escapes only
    snap = json.loads(r.stdout.decode("ascii"))

    def raw(text):
        return text.encode("utf-8", "surrogateescape")
    tabs = snap["tabs"]
    assert raw(snap["comm"]) == COMM
    assert [raw(i["name"]) for i in tabs["traffic"]["interfaces"]] == names
    assert [raw(e["device"]) for e in tabs["arp"]["entries"]] == names
    assert [raw(r4["iface"]) for r4 in tabs["routing"]["ipv4"]] == names
    assert [raw(r6["iface"]) for r6 in tabs["routing"]["ipv6"]] == names


def test_error_message_about_a_hostile_path_is_safe(tmp_path):
    """--proc DIR with a hostile name: one line, escaped."""
    bad = tmp_path / os.fsdecode(b"\x1b]2;pwned\x07\x9b\xe2\x80\xae")
    r = run_bytes("--proc", os.fsencode(str(bad)), "1", "--once")
    assert r.returncode == 1
    assert_terminal_safe(r.stderr)
    assert r.stderr.count(b"\n") == 1 and b"\\e]2;pwned" in r.stderr, r.stderr


# --- real processes and interfaces ---------------------------------------------------

COMM_SETTER = ("import sys, time\n"
               "open('/proc/self/comm', 'wb').write(sys.argv[1].encode('utf-8', 'surrogateescape'))\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n")


def test_real_process_with_hostile_comm():
    comm = b"\x1b]2;pw\x07\x9b\xe2\x80\xae\xff"        # 12 bytes: fits TASK_COMM_LEN
    p = subprocess.Popen([sys.executable.encode(), b"-c", COMM_SETTER.encode(), comm],
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        r = run_bytes(p.pid, "--once")
        assert r.returncode == 0, r.stderr
        assert_terminal_safe(r.stdout)
        assert b"\\e]2;pw\\x07\\x9b\\u202e\\xff" in r.stdout.splitlines()[0], r.stdout[:300]
        r = run_bytes(p.pid, "--once", "--json")
        assert json.loads(r.stdout)["comm"].encode("utf-8", "surrogateescape") == comm
    finally:
        p.kill()
        p.wait()


# The kernel takes any byte in a name but '/', ':', whitespace and NUL
# (dev_valid_name), up to 15 bytes: escapes, C1, bidi, invalid UTF-8 all pass.
KERNEL_NAMES = [b"\x1b[2J\x1b[31mx", b"\x1b]2;pw\x07", b"\x9bx\xff", b"\xe2\x80\xaeevil",
                b"a\x1cb\x1fc", b"\xc2\x85\xe2\x80\xa8"]
IN_NETNS = (b'for n; do ip link add name "$n" type bridge || exit 3; '
            b'ip link set "$n" up; done; '
            b'ip addr add 192.0.2.1/24 dev "$1"; '
            b'ip neigh add 192.0.2.2 lladdr 02:00:00:00:00:01 dev "$1" nud permanent; '
            b'exec "$0" ' + os.fsencode(NETSNOOP) + b' $$ --once --tab all $NS_FLAGS')


def run_in_netns(flags):
    env = dict(os.environ, NS_FLAGS=flags)
    return subprocess.run([b"unshare", b"-n", b"sh", b"-c", IN_NETNS, os.fsencode(sys.executable)]
                          + KERNEL_NAMES, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=60)


@needs_root_netns
@pytest.mark.skipif(not shutil.which("ip"), reason="needs ip (iproute2)")
def test_real_interfaces_with_hostile_names():
    r = run_in_netns("")
    if r.returncode == 3:
        pytest.skip("cannot create bridge interfaces here: %r" % r.stderr[-200:])
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert b"\\e[2J\\e[31mx" in r.stdout and b"\\u202eevil" in r.stdout
    r = run_in_netns("--json")
    assert r.returncode == 0, r.stderr
    tabs = json.loads(r.stdout)["tabs"]

    def raw(text):
        return text.encode("utf-8", "surrogateescape")
    assert {raw(i["name"]) for i in tabs["traffic"]["interfaces"]} == set(KERNEL_NAMES) | {b"lo"}
    assert [raw(e["device"]) for e in tabs["arp"]["entries"]] == [KERNEL_NAMES[0]]
    assert KERNEL_NAMES[0] in {raw(x["iface"]) for x in tabs["routing"]["ipv4"]}


# --- the --procs feed and the session ------------------------------------------------

# One argument may hold 128 KiB (MAX_ARG_STRLEN): 1.2 MB in 12 of them.
HOSTILE_ARGV = [b"\x1b]2;pwned\x07", b"\x9b31m", b"\xe2\x80\xaeevil", b"bad\xff", b"nl\nx"] \
    + [b"B" * 100000] * 12


@pytest.mark.parametrize("json_out", [False, True])
def test_procs_feed_with_hostile_argv(tmp_path, json_out):
    marker = b"hostile-%d" % os.getpid()
    prog = tmp_path / os.fsdecode(b"run\x1b[2J\xe2\x80\xae")
    prog.write_bytes(b"#!/bin/sh\nsleep 2\n")
    prog.chmod(0o755)
    ns = subprocess.Popen([sys.executable, NETSNOOP, "--procs", "--interval", "0.1",
                           "--duration", "4"] + (["--json"] if json_out else []),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    child = subprocess.Popen([os.fsencode(str(prog)), marker] + HOSTILE_ARGV)
    out, err = ns.communicate(timeout=60)
    child.wait()
    assert ns.returncode == 0, err
    assert_terminal_safe(out)
    assert_terminal_safe(err)
    if json_out:
        events = [json.loads(line) for line in out.decode("ascii").splitlines()]
        mine = [e for e in events if e.get("cmdline") and
                marker in [a.encode("utf-8", "surrogateescape") for a in e["cmdline"]]]
        assert mine, "the hostile process was not reported"
        argv = [a.encode("utf-8", "surrogateescape") for a in mine[0]["cmdline"]]
        assert argv[-len(HOSTILE_ARGV):] == HOSTILE_ARGV
    else:
        line = [ln for ln in out.splitlines() if marker in ln]
        assert line, "the hostile process was not reported"
        assert b"\\e]2;pwned\\x07" in line[0]
        assert len(line[0]) < 20000, "a 1.2 MB command line must be cut visibly"


def load_matrix():
    name = "matrix"
    spec = spec_from_loader(name, SourceFileLoader(name, os.path.join(ROOT, ".ci", "matrix")))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_session_shows_hostile_names_escaped(hostile_tree):
    root, names = hostile_tree
    matrix = load_matrix()
    env = dict(os.environ, TERM="xterm-256color", LANG="C.UTF-8")
    status, raw, screen = matrix.drive_session(
        [sys.executable, NETSNOOP, "--proc", str(root), str(PID), "--tab", "traffic"], env,
        until=lambda s: "\\e]2;pwned" in s, timeout=15)
    assert "\\e]2;pwned" in screen, screen
    assert status == 0, screen
    # (Not CSI colour or clear-screen sequences: curses sends those itself.)
    for payload in (b"\x1b]2;pwned", b"\xe2\x80\xae", b"\xc2\x9b", b"\x9b31m", b"\xff\xfe"):
        assert payload not in raw, payload


@pytest.mark.parametrize("ch", ["\u200b", "\u200d", "\u2060", "\u00ad", "\U000e0041",
                                "\ue000", "\u115f", "\u3164", "\uffa0"])
def test_invisible_characters_are_shown(ch):
    """Zero-width, tag, private-use and filler characters could make "sshd" out of "ss\u200bhd"."""
    shown = netsnoop.printable("ss" + ch + "hd")
    assert ch not in shown
    code = ord(ch)
    assert ("\\u%04x" % code if code < 0x10000 else "\\U%08x" % code) in shown


def test_visible_non_ascii_is_kept():
    assert netsnoop.printable("caf\u00e9 \u65e5\u672c \u0416") == "caf\u00e9 \u65e5\u672c \u0416"
