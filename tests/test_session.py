"""The interactive session, driven in a real pseudo-terminal as a person would.

Keys go in through the pty, the screen comes out of pyte (a terminal
emulator), and the monitored process is real: a helper in a private network
namespace (unshare -n) that holds known sockets, a veth with TEST-NET
addresses, a default route and a permanent ARP entry; or a plain `sleep`.
"""
import os
import re
import select
import signal
import shutil
import subprocess
import sys
import time

import pytest
import wcwidth

from conftest import NETSNOOP, needs_root_netns, python_for_nobody
from ptyterm import PtyTerm

import netsnoop

BASE = 40000            # listening TCP ports BASE .. BASE+LISTENERS-1, held by the target
LISTENERS = 60
UDP_PORT = 41000
OTHER_PORT = 42000      # held by another process in the namespace: not the target's
GATEWAY = "192.0.2.1"
GATEWAY_MAC = "02:00:00:00:00:01"
RAW_PROTO = 253         # RFC 3692 experimentation protocol: nobody else uses it

# Runs as `unshare -n python3 -c TARGET` inside its own network namespace.
TARGET = r"""
import socket, subprocess, sys
def ip(*args):
    subprocess.run(("ip",) + args, check=True)
ip("link", "set", "lo", "up")
ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
ip("addr", "add", "192.0.2.2/24", "dev", "v0")
ip("link", "set", "v0", "up")
ip("link", "set", "v1", "up")
ip("route", "add", "default", "via", "%(gw)s", "dev", "v0")
ip("neigh", "add", "%(gw)s", "lladdr", "%(mac)s", "dev", "v0", "nud", "permanent")
held = []
for port in range(%(base)d, %(base)d + %(n)d):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    held.append(s)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", %(udp)d))
held.append(u)
held.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, %(raw)d))
other = subprocess.Popen([sys.executable, "-c",
    "import socket, sys\n"
    "s = socket.socket(); s.bind(('127.0.0.1', %(other)d)); s.listen(1)\n"
    "print('ok', flush=True); sys.stdin.read()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
other.stdout.readline()
print("ready", flush=True)
children = []
for line in sys.stdin:
    if line.startswith("spawn"):        # a child, for the procs tab
        children.append(subprocess.Popen(["sleep", "5"]))
    elif line.startswith("ping"):       # datagrams to our own UDP socket: lo and Udp counters move
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(10):
            out.sendto(b"x" * 100, ("127.0.0.1", %(udp)d))
        out.close()
""" % dict(gw=GATEWAY, mac=GATEWAY_MAC, base=BASE, n=LISTENERS, udp=UDP_PORT,
           raw=RAW_PROTO, other=OTHER_PORT)


@pytest.fixture(scope="module")
def netns_target():
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", TARGET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            universal_newlines=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def session(pid, *args, **kw):
    return PtyTerm([sys.executable, NETSNOOP, str(pid)] + list(args), **kw)


def status_line(term):
    return term.line(1)


def body(term):
    return "\n".join(term.screen.display[2:-1])


def quit_ok(term, key="q"):
    term.send(key)
    assert term.wait_exit() == 0
    assert "Traceback" not in term.stderr()
    assert term.tty_modes() == (True, True)       # echo and line mode are back


# --- layout and tabs -----------------------------------------------------------

@needs_root_netns
def test_every_tab_shows_its_data(netns_target):
    pid = netns_target.pid
    with session(pid, "--interval", "0.5") as term:
        term.wait_for("rows %d" % (LISTENERS + 1))
        assert term.line(0).startswith("[1:tcp] 2:udp 3:arp 4:traffic 5:stats 6:raw "
                                       "7:icmp 8:routing 9:analysis 0:procs")
        status = status_line(term)
        assert "PID %d python" % pid in status
        assert os.readlink("/proc/%d/ns/net" % pid) in status
        assert "every 0.5s" in status
        assert "rows %d" % (LISTENERS + 1) in status
        term.send("/127.0.0.1:%d \r" % BASE)              # rows come in the kernel's order
        term.wait_for(lambda t: "rows 1/%d" % (LISTENERS + 1) in t
                      and "127.0.0.1:%d " % BASE in body(term))
        row = next(line for line in body(term).splitlines() if ":%d " % BASE in line)
        assert row.startswith("* tcp") and "LISTEN" in row      # owned, marked
        term.key("esc")
        checks = [
            ("2", "[2:udp]", "127.0.0.1:%d" % UDP_PORT),
            ("3", "[3:arp]", GATEWAY_MAC),
            ("4", "[4:traffic]", "v0"),
            ("5", "[5:stats]", "== TcpExt =="),
            ("6", "[6:raw]", "0.0.0.0:%d" % RAW_PROTO),
            ("7", "[7:icmp]", "== Icmp =="),
            ("8", "[8:routing]", GATEWAY),
            ("9", "[9:analysis]", "== findings =="),
        ]
        for key, tab, shown in checks:
            term.send(key)
            term.wait_for(lambda text, tab=tab, shown=shown:
                          tab in text.splitlines()[0] and shown in text)
        term.send("4")
        text = term.wait_for(lambda t: "RX/s" in t)           # rates once there is a delta
        assert "v1" in text and "lo" in text
        term.send("0")
        if getattr(netsnoop, "ProcFeed", None) is None:
            term.wait_for("process feed not available in this build")
        else:
            # the feed takes its baseline when the tab first shows: spawn after that,
            # or the child counts as already present
            term.wait_for(lambda t: "[0:procs]" in t and "backend " in t)
            netns_target.stdin.write("spawn\n")
            netns_target.stdin.flush()
            text = term.wait_for(lambda t: any(line.startswith("*") and "sleep 5" in line
                                               for line in t.splitlines()))
        quit_ok(term)


@needs_root_netns
def test_tab_keys_cycle_and_tab_command(netns_target):
    with session(netns_target.pid) as term:
        term.wait_for("[1:tcp]")
        for key, tab in (("left", "[c:conns]"), ("right", "[1:tcp]"), ("tab", "[2:udp]"),
                         ("btab", "[1:tcp]"), ("right", "[2:udp]")):
            term.key(key)
            term.wait_for(lambda text, tab=tab: tab in text.splitlines()[0])
        term.send(":tab routing\r")
        term.wait_for(GATEWAY)
        term.send(":tab nosuch\r")
        term.wait_for("no tab 'nosuch'")
        term.send("?")
        term.wait_for("netsnoop session keys")
        term.send("x")                                     # any key closes the help
        term.wait_gone("netsnoop session keys")
        quit_ok(term, "\x04")


def ping_until(term, target, check, timeout=10.0):
    """Make traffic in the target's namespace until the screen satisfies `check`."""
    deadline = time.monotonic() + timeout
    while not check(term.text()):
        assert time.monotonic() < deadline, term.text()
        target.stdin.write("ping\n")
        target.stdin.flush()
        term.pump(0.3)


@needs_root_netns
def test_changed_counters_are_marked(netns_target):
    with session(netns_target.pid, "--interval", "0.3", "--tab", "traffic") as term:
        term.wait_for("RX/s")
        ping_until(term, netns_target,
                   lambda t: any(line.startswith("+ lo ") and "/s" in line
                                 and " 0B/s" not in line for line in t.splitlines()))
        term.send("9")
        term.wait_for("== findings ==")
        term.send("/outdatagrams\r")                  # the Udp section is below the fold
        term.wait_for("== Udp ==")
        ping_until(term, netns_target,
                   lambda t: any(line.startswith("+ OutDatagrams") and "+10" in line
                                 for line in t.splitlines()))
        quit_ok(term)


@needs_root_netns
def test_ownership_unknown_is_said(netns_target):
    nobody = 65534
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that user %d may run" % nobody)
    with PtyTerm([python, NETSNOOP, str(netns_target.pid)], uid=nobody) as term:
        reason = "ownership unknown: cannot read /proc/%d/fd (permission denied" % (
            netns_target.pid)
        text = term.wait_for(lambda t: term.line(2).startswith(reason))
        assert "ownership unknown" in status_line(term)
        assert term.line(23).startswith("q quit")
        assert not any(line.startswith("*") for line in text.splitlines()[2:-1])
        assert "rows %d" % (LISTENERS + 1) in status_line(term)
        quit_ok(term)


NOBODY_REASON = ("ownership unknown: cannot read /proc/%d/fd (permission denied: another "
                 "user's process, or one that is not dumpable; run as its user or root)")


@pytest.mark.parametrize("cols", [80, 40])
def test_ownership_reason_is_whole_and_the_key_hint_stays(sleeper, cols):
    """The reason replaced the key hint on the bottom line and was cut at the width: it is
    now wrapped above the table, whole, and the hint stays."""
    nobody = 65534
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter that user %d may run" % nobody)
    with PtyTerm([python, NETSNOOP, str(sleeper.pid)], uid=nobody, cols=cols) as term:
        term.wait_for(lambda t: "== tcp ==" in t and "ownership unknown:" in t)
        lines = [line.rstrip() for line in term.screen.display]
        end = lines.index("== tcp ==")
        assert " ".join(lines[2:end]) == NOBODY_REASON % sleeper.pid, lines
        assert term.line(23).startswith("q quit")
        assert "ownership unknown" in status_line(term) or cols < 48      # see below
        quit_ok(term)


@pytest.mark.parametrize("width", [80, 40])
def test_ownership_banner_wraps_to_the_width(width):
    st = netsnoop.SessionState(4242, "tcp", 2.0)
    assert netsnoop.ownership_banner(st, width, 10) == []          # known: nothing
    st.owned_problem = (NOBODY_REASON % 4242)[len("ownership unknown: "):]
    lines = netsnoop.ownership_banner(st, width, 10)
    assert all(len(line) <= width for line in lines) and len(lines) >= 2
    assert " ".join(lines) == NOBODY_REASON % 4242
    cut = netsnoop.ownership_banner(st, width, 1)                  # a tiny screen
    assert len(cut) == 1 and len(cut[0]) <= width and cut[0].endswith("...")
    st.tab = "traffic"                                             # not about sockets
    assert netsnoop.ownership_banner(st, width, 10) == []


# --- interval ------------------------------------------------------------------

def test_set_interval(sleeper):
    with session(sleeper.pid) as term:
        term.wait_for("every 2s")
        term.send(":set 6\r")
        term.wait_for("every 6s")
        term.send(":set abc\r")
        term.wait_for("'abc' is not a number of seconds")
        term.send(":set -1\r")
        term.wait_for("must be 0.2s .. 3600s, not -1")
        term.send(":set 0\r")
        term.wait_for("must be 0.2s .. 3600s, not 0")
        assert "every 6s" in status_line(term)
        term.send(":set 0.5\r")
        term.wait_for("every 0.5s")
        quit_ok(term, "\x04")


def test_only_colon_opens_the_command_line(sleeper):
    """An unbound letter opened the command line (and undid the key before it)."""
    with session(sleeper.pid) as term:
        term.wait_for("q quit")
        term.send("x")
        term.send("?")                      # a bound key after it acts at once: help
        term.wait_for("netsnoop session keys")
        assert not term.line(23).startswith(":")
        term.send("x")                      # closes the help
        term.wait_gone("netsnoop session keys")
        term.send(":")
        term.wait_for(lambda t: term.line(23) == ":_")
        quit_ok(term, "\x04")


def test_unbound_keys_change_nothing():
    """s sorts, then e (no use) must neither undo the sort nor open the command line."""
    import curses
    state = netsnoop.SessionState(1, "tcp", 2.0)
    state.view = netsnoop.TabView([netsnoop.Table(
        "tcp", [netsnoop.Column("Netid", "<"), netsnoop.Column("Port", ">")],
        [netsnoop.Row(["tcp", "22"], None, 1)], [])])
    handler = netsnoop.KeyHandler(state, netsnoop.session_keys(curses))
    assert handler.dispatch("s") == netsnoop.REDRAW and state.sort["tcp"] == (0, False)
    for key in "ezZ!\x01":
        assert handler.dispatch(key) == netsnoop.NOTHING
    assert (state.mode, state.sort["tcp"], state.tab) == (None, (0, False), "tcp")
    handler.dispatch(":")
    for key in "set 6\n":
        handler.dispatch(key)
    assert (state.mode, state.interval) == (None, 6.0)


def test_session_keeps_the_command_line_it_was_started_with(sleeper):
    """`ps -o args` shows the command the user typed once the session runs: no
    re-exec of the interpreter, no other program in its place."""
    with session(sleeper.pid) as term:
        term.wait_for("every 2s")
        with open("/proc/%d/cmdline" % term.proc.pid, "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
        assert argv == [sys.executable, NETSNOOP, str(sleeper.pid)], argv
        assert os.path.samefile("/proc/%d/exe" % term.proc.pid, sys.executable)
        quit_ok(term, "q")


# --- filter, scroll, sort, owned -------------------------------------------------

def first_row(term):
    for line in term.screen.display[2:-1]:
        if line[:1] in "*+! " and "127.0.0.1:" in line:
            return line.rstrip()
    return None


@needs_root_netns
def test_filter_scroll_sort_owned(netns_target):
    total = LISTENERS + 1
    with session(netns_target.pid, cols=80, rows=24) as term:
        term.wait_for("rows %d" % total)
        term.send("/4004")                          # filters while typing: 40040..40049
        term.wait_for(lambda t: "rows 10/%d" % total in t and "127.0.0.1:40045" in t
                      and "127.0.0.1:40050" not in t)
        term.send("\r")
        term.wait_for(lambda t: term.line(23).startswith("filter '4004'"))
        term.key("esc")
        term.wait_for("rows %d" % total)
        # sort by local address: the 5th column
        term.send("sssss")
        term.wait_for("sort Local Address:Port")
        term.wait_for(lambda t: "127.0.0.1:%d " % BASE in (first_row(term) or ""))
        term.send("S")
        term.wait_for(lambda t: "127.0.0.1:%d " % OTHER_PORT in (first_row(term) or ""))
        term.send("S")
        term.wait_for(lambda t: "127.0.0.1:%d " % BASE in (first_row(term) or ""))
        # scrolling: the column header stays, rows move
        term.key("down")
        term.wait_for(lambda t: "== tcp ==" not in t
                      and "127.0.0.1:%d " % BASE in (first_row(term) or ""))
        term.key("down")
        term.wait_for(lambda t: "127.0.0.1:%d " % (BASE + 1) in (first_row(term) or ""))
        assert "Netid  State" in term.line(2)
        term.key("pgdn")                          # 21 body lines: a page is 20
        term.wait_for(lambda t: "127.0.0.1:%d " % (BASE + 21) in (first_row(term) or ""))
        term.key("end")
        term.wait_for("sockets in the namespace, %d owned" % (total - 1))
        term.key("home")
        term.wait_for("== tcp ==")
        # owned only: the other process's socket goes
        term.send("/%d" % OTHER_PORT)
        term.wait_for(lambda t: "rows 1/%d" % total in t
                      and ":%d " % OTHER_PORT in (first_row(term) or ""))
        assert first_row(term).startswith("  tcp")  # not marked: not the target's
        term.send("\r")
        term.send("o")
        term.wait_for(lambda t: "rows 0/%d" % total in t and "owned only" in term.line(23))
        term.key("esc")
        term.wait_for("rows %d/%d" % (total - 1, total))
        # sideways: at 80 columns the last columns are cut; > brings them in
        assert "Own" not in term.line(3)
        term.send(">>")
        term.wait_for(lambda t: "Inode  Own" in term.line(3))
        assert term.line(4).startswith("* ")         # the mark column stays put
        term.send("<<")
        term.wait_for(lambda t: term.line(3).startswith("  Netid"))
        quit_ok(term)


# --- robustness ------------------------------------------------------------------

def test_resize_down_to_tiny_and_back(sleeper):
    def fits(rows, cols):
        """The frame for this size: tab bar on top, status, key hint at the bottom."""
        def check(text):
            lines = term.screen.display
            return (lines[0].rstrip() in ("[1:tcp]", "1 2 3 4 5 6 7 8 9 0 c")
                    or lines[0].startswith("[1:tcp] 2")) \
                and lines[1].startswith("PID %d sleep" % sleeper.pid) \
                and lines[rows - 1].startswith("q quit") \
                and "== tcp ==" in lines[2]
        return check

    with session(sleeper.pid, "--interval", "0.3") as term:
        term.wait_for("9:analysis")
        for rows, cols in ((5, 20), (2, 12), (1, 1), (5, 20), (10, 40)):
            term.resize(rows, cols)
            if rows >= 5:
                term.wait_for(fits(rows, cols))
            else:
                term.pump(0.3)
            assert term.proc.poll() is None, term.stderr()
        term.resize(24, 80)
        term.wait_for(fits(24, 80))
        term.send("?")                              # a key and a resize at once
        term.wait_for("netsnoop session keys")
        term.send("x")
        term.resize(5, 20)
        term.wait_for(fits(5, 20), timeout=3)
        term.send("/x")                             # resize while typing a filter
        term.resize(5, 20)
        term.pump(0.3)
        term.key("esc")
        term.resize(24, 80)
        term.wait_for(fits(24, 80))
        quit_ok(term)


@pytest.mark.parametrize("reap,interval", [(True, "0.3"), (False, "0.3"), (True, "3600")],
                         ids=["reaped", "zombie", "long-interval"])
def test_target_exit_ends_session(reap, interval):
    target = subprocess.Popen(["sleep", "120"])
    try:
        with session(target.pid, "--interval", interval) as term:
            term.wait_for("PID %d sleep" % target.pid)
            target.kill()
            if reap:
                target.wait()
            assert term.wait_exit(timeout=5) == 0          # not an interval later
            assert term.stderr() == "netsnoop: process %d exited\n" % target.pid
            assert term.tty_modes() == (True, True)
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("how,status", [
    ("SIGTERM", 128 + signal.SIGTERM), ("SIGHUP", 128 + signal.SIGHUP), ("ctrl-c", 0)])
def test_signals_restore_the_terminal(sleeper, how, status):
    with session(sleeper.pid) as term:
        term.wait_for("[1:tcp]")
        assert term.tty_modes() == (False, False)      # curses owns the terminal
        if how == "ctrl-c":
            term.key("ctrl-c")
        else:
            term.proc.send_signal(getattr(signal, how))
        assert term.wait_exit() == status
        assert term.tty_modes() == (True, True)
        assert "Traceback" not in term.stderr()


def test_hostile_process_name_is_escaped():
    code = ("import time\n"
            "open('/proc/self/comm', 'w').write('a\\x1b[2Jb\\x07')\n"
            "print('ready', flush=True); time.sleep(120)")
    target = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        target.stdout.readline()
        with session(target.pid) as term:
            term.wait_for("PID %d a\\e[2Jb\\x07" % target.pid)
            quit_ok(term)
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("term_name,env", [
    # vt100: no colours and no way to hide the cursor (no civis in its terminfo)
    ("vt100", {}), ("xterm-256color", {"NO_COLOR": "1"})], ids=["vt100", "NO_COLOR"])
def test_monochrome_terminals(sleeper, term_name, env):
    with session(sleeper.pid, term=term_name, env=env) as term:
        term.wait_for("[1:tcp]")
        term.send("3")
        term.wait_for("[3:arp]")
        title = term.screen.buffer[2][0]               # "== arp ==": bold, no colour
        assert (title.data, title.bold, title.fg) == ("=", True, "default")
        assert term.screen.buffer[1][0].reverse        # the status line
        quit_ok(term)


def test_roles_get_colours(sleeper):
    with session(sleeper.pid) as term:
        term.wait_for(lambda t: "== tcp ==" in t and term.screen.buffer[2][0].fg == "cyan")
        current = term.line(0).index("[1:tcp]")
        assert term.screen.buffer[0][current].reverse  # the current tab
        assert term.screen.buffer[1][0].reverse        # the status line
        quit_ok(term)


@pytest.mark.parametrize("term_name", ["dumb", "no-such-terminal"])
def test_unusable_terminal_falls_back_to_snapshots(sleeper, term_name):
    with session(sleeper.pid, "--interval", "0.3", "--tab", "traffic", term=term_name) as term:
        heading = ("netsnoop %s: pid %d (sleep)" % (netsnoop.__version__, sleeper.pid)).encode()
        term.wait_for(lambda t: term.raw.count(heading) >= 2     # snapshots scroll by
                      and b"== traffic ==" in term.raw)
        term.send("set 6\n")                        # the seed's prompt still works
        deadline = time.monotonic() + 10
        while "refreshing every 6s" not in term.stderr():
            assert time.monotonic() < deadline, term.stderr()
            term.pump(0.1)
        term.send("q\n")
        assert term.wait_exit() == 0
        err = term.stderr().splitlines()
        assert err[0].startswith("netsnoop: terminal '%s'" % term_name)
        assert "printing snapshots of traffic every 0.3s instead" in err[0]
        assert "Traceback" not in term.stderr()


def test_no_tty_prints_snapshots_until_ctrl_c(sleeper):
    proc = subprocess.Popen([sys.executable, NETSNOOP, str(sleeper.pid), "--interval", "0.2",
                             "--tab", "traffic"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out = b""
    heading = ("netsnoop %s: pid %d (sleep)" % (netsnoop.__version__, sleeper.pid)).encode()
    deadline = time.monotonic() + 10
    try:
        while out.count(heading) < 3:
            assert time.monotonic() < deadline, out
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                out += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert b"== traffic ==" in out and b"lo " in out
    err = err.decode()
    assert err.startswith("netsnoop: no terminal (stdin or stdout is not a tty); "
                          "printing snapshots of traffic every 0.2s")
    assert len(err.splitlines()) == 1


def test_no_tty_target_exit(sleeper):
    proc = subprocess.Popen([sys.executable, NETSNOOP, str(sleeper.pid), "--interval", "0.2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline().startswith("netsnoop ")
    sleeper.kill()
    sleeper.wait()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert err.splitlines()[-1] == "netsnoop: process %d exited" % sleeper.pid


# --- the pure pieces the session is built from -----------------------------------

def test_parse_interval_bounds():
    assert netsnoop.parse_interval("6") == 6.0
    assert netsnoop.parse_interval(" 0.5s ") == 0.5
    assert netsnoop.parse_interval("3600") == 3600.0
    for bad in ("abc", "-1", "0", "0.1", "3601", "nan", "inf", ""):
        with pytest.raises(ValueError):
            netsnoop.parse_interval(bad)
    assert netsnoop.format_interval(2.0) == "2s"
    assert netsnoop.format_interval(0.25) == "0.25s"
    assert netsnoop.session_interval(None) == (2.0, None)
    assert netsnoop.session_interval(86400)[0] == 3600.0


def test_cell_sort_key_orders_numbers_sizes_and_addresses():
    cells = ["1.5K", "900B", "2M", "10", "9"]
    assert sorted(cells, key=netsnoop.cell_sort_key) == ["9", "10", "900B", "1.5K", "2M"]
    addrs = ["10.0.0.10:80", "10.0.0.9:443", "10.0.0.9:22", "[::1]:5", "192.0.2.1"]
    assert sorted(addrs, key=netsnoop.cell_sort_key) == [
        "10.0.0.9:22", "10.0.0.9:443", "10.0.0.10:80", "192.0.2.1", "[::1]:5"]
    assert sorted(["LISTEN", "1", "CLOSE"], key=netsnoop.cell_sort_key) == [
        "1", "CLOSE", "LISTEN"]


def make_view(n):
    Column, Row, Table = netsnoop.Column, netsnoop.Row, netsnoop.Table
    rows = [Row(["port%d" % i, str(i), "x\x1b[31m"], "owned" if i % 2 else None, i)
            for i in range(n)]
    table = Table("tcp", [Column("Name", "<"), Column("N", ">"), Column("Raw", "<")], rows,
                  ["a note"])
    return netsnoop.TabView([table])


def test_tab_view_filters_sorts_escapes_and_pins_the_header():
    view = make_view(50)
    view.layout()
    assert (view.shown, view.total, view.lines) == (50, 50, 2 + 50 + 1 + 1)
    lines = view.visible(0, 4)
    assert lines[0] == ("== tcp ==", "title")
    assert lines[1][1] == "header" and "Name" in lines[1][0]
    assert lines[2][0].startswith("  port0") and "x\\e[31m" in lines[2][0]   # escaped
    assert lines[3][0].startswith("* port1") and lines[3][1] == "owned"
    top = view.visible(10, 3)                 # scrolled: the header takes the top line
    assert top[0][1] == "header" and top[1][0].startswith("* port9")
    view.layout("port4")
    assert view.shown == 11                   # port4, port40..port49
    view.layout("", (1, True))
    assert view.visible(2, 1)[0][0].startswith("* port49")
    view.layout("", None, True)
    assert view.shown == 25
    view.layout("nothing matches")
    assert view.shown == 0 and view.visible(0, 2)[0] == ("== tcp ==", "title")


def test_tabbar_keeps_the_current_tab_visible_when_narrow():
    def text(width):
        return " ".join(t for t, _ in netsnoop.tabbar_parts("analysis", width))
    assert text(90) == ("1:tcp 2:udp 3:arp 4:traffic 5:stats 6:raw 7:icmp 8:routing "
                        "[9:analysis] 0:procs c:conns")
    # 80: the ten names whole, c:conns left to the help (it would make 87)
    assert text(80) == ("1:tcp 2:udp 3:arp 4:traffic 5:stats 6:raw 7:icmp 8:routing "
                        "[9:analysis] 0:procs")
    assert text(40) == "1 2 3 4 5 6 7 8 [9:analysis] 0 c"
    assert text(20) == "[9:analysis]"


def test_python_without_curses_falls_back(sleeper):
    # As on a Python built without curses: `import curses` raises ImportError.
    code = ("import runpy, sys\n"
            "sys.modules['curses'] = None\n"
            "sys.argv = [%r, %r, '--interval', '0.3', '--tab', 'traffic']\n"
            "runpy.run_path(%r, run_name='__main__')\n" % (NETSNOOP, str(sleeper.pid), NETSNOOP))
    with PtyTerm([sys.executable, "-c", code]) as term:
        term.wait_for(lambda t: b"== traffic ==" in term.raw)
        term.key("ctrl-d")
        assert term.wait_exit() == 0
        assert term.stderr().startswith(
            "netsnoop: the curses module is not available; printing snapshots of traffic")
        assert term.tty_modes() == (True, True)


# --- a fake /proc tree (--proc DIR): deterministic, no root needed ------------------

TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when "
              "retrnsmt   uid  timeout inode\n")
TCP_LINE = ("   %d: 0100007F:%04X 00000000:0000 0A 00000000:00000000 00:00000000 "
            "00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n")
DEV = ("Inter-|   Receive                                                |  Transmit\n"
       " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
       "errs drop fifo colls carrier compressed\n"
       "    lo:    %d      10    0    0    0     0          0         0     1280      10    "
       "0    0    0     0       0          0\n")


def fake_proc(root, pid, lo_bytes=1280):
    base = root / str(pid)
    (base / "net").mkdir(parents=True)
    (base / "fd").mkdir()
    (base / "stat").write_text("%d (evil\x1b]0;owned\x07) S 1 %d %d 0 -1 4194560 0 0 0 0\n"
                               % (pid, pid, pid))
    (base / "net" / "tcp").write_text(TCP_HEADER + TCP_LINE % (0, 8080, 777)
                                      + TCP_LINE % (1, 9090, 778))
    (base / "net" / "dev").write_text(DEV % lo_bytes)
    os.symlink("socket:[777]", str(base / "fd" / "3"))      # PID holds inode 777
    return base


def test_session_on_a_fake_proc_tree(tmp_path):
    pid = 4242
    base = fake_proc(tmp_path, pid)
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3"]) as term:
        term.wait_for("rows 2")
        status = status_line(term)
        assert status.startswith("PID 4242 evil\\e]0;owned\\x07 netns unknown (no ns/net "
                                 "link) 0.3s"), status        # tightened to fit 80 columns
        term.wait_for(lambda t: any(line.startswith("* tcp") and "127.0.0.1:8080" in line
                                    for line in t.splitlines()))
        assert any(line.startswith("  tcp") and "127.0.0.1:9090" in line
                   for line in term.text().splitlines())
        term.send("4")
        term.wait_for(lambda t: any(line.startswith("  lo ") for line in t.splitlines()))
        (base / "net" / "dev").write_text(DEV % 99999)           # the counter moves
        term.wait_for(lambda t: any(line.startswith("+ lo ") and "97.7K" in line
                                    for line in t.splitlines()))
        os.rename(str(base), str(tmp_path / "gone"))              # the process is gone
        assert term.wait_exit() == 0
        assert term.stderr() == "netsnoop: process %d exited\n" % pid
        assert term.tty_modes() == (True, True)


LOADAVG = "0.00 0.01 0.05 1/80 %d\n"


def wait_for_note(pane, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        notes = pane.tables()[0].notes
        if any(text in note for note in notes) or time.monotonic() > deadline:
            return notes
        time.sleep(0.02)


def test_procs_tab_says_why_its_feed_stopped(tmp_path):
    fake_proc(tmp_path, 4242)
    (tmp_path / "loadavg").write_text(LOADAVG % 4242)
    pane = netsnoop.ProcsPane(netsnoop.ProcFS(str(tmp_path)), 4242, backend="python")
    try:
        pane.start()
        assert pane.active and pane.problem is None
        assert not any("stopped" in note for note in pane.tables()[0].notes)
        (tmp_path / "loadavg").write_text("garbage\n")      # the scanner's next read fails
        notes = wait_for_note(pane, "process feed stopped")
        assert notes[0].startswith("process feed stopped: "), notes
    finally:
        pane.close()


def test_procs_tab_without_a_counter_is_disabled_not_fatal(tmp_path):
    fake_proc(tmp_path, 4242)                                # no loadavg in this tree
    pane = netsnoop.ProcsPane(netsnoop.ProcFS(str(tmp_path)), 4242, backend="python")
    pane.start()
    assert not pane.active and not pane.poll()
    notes = pane.tables()[0].notes
    assert notes == ["process feed failed to start: cannot read the last-PID counter %s: "
                     "No such file or directory" % (tmp_path / "loadavg")]
    pane.close()


def test_session_shows_a_stopped_feed_and_goes_on(tmp_path):
    pid = 4242
    fake_proc(tmp_path, pid)
    (tmp_path / "loadavg").write_text(LOADAVG % pid)
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3", "--backend", "python"]) as term:
        term.wait_for("rows 2")
        term.send("0")
        term.wait_for(lambda t: "[0:procs]" in t and "backend python" in t)
        (tmp_path / "loadavg").write_text("garbage\n")
        term.wait_for("(process feed stopped: ")
        term.send("1")                                       # the other tabs still work
        term.wait_for(lambda t: "== tcp ==" in t and "127.0.0.1:8080" in t)
        quit_ok(term)


def plain_session(tmp_path, pid, stdout, env=None):
    return subprocess.Popen([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                             "--interval", "0.2", "--tab", "traffic"],
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                            env=env)


def test_no_tty_snapshots_on_an_ascii_stdout(tmp_path):
    pid = 4242
    base = fake_proc(tmp_path, pid)
    (base / "stat").write_text("%d (n\u00e9t\u7f51) S 1 %d %d 0 -1 4194560 0 0 0 0\n"
                               % (pid, pid, pid), encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = plain_session(tmp_path, pid, subprocess.PIPE, env)
    try:
        heading = proc.stdout.readline().decode("ascii")
        os.rename(str(base), str(tmp_path / "gone"))              # the process is gone
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert heading.startswith("netsnoop %s: pid %d (n\\xe9t\\u7f51), netns unknown"
                              % (netsnoop.__version__, pid)), heading
    assert proc.returncode == 0, err
    assert err.decode().splitlines()[-1] == "netsnoop: process %d exited" % pid


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_no_tty_snapshots_to_a_full_disk(tmp_path):
    fake_proc(tmp_path, 4242)
    with open("/dev/full", "w") as full:
        proc = plain_session(tmp_path, 4242, full)
        _, err = proc.communicate(timeout=10)
    err = err.decode()
    assert proc.returncode == 1
    assert err.splitlines()[-1] == "netsnoop: cannot write output: No space left on device"
    assert "Traceback" not in err and "internal error" not in err


WIDE_NAMES = ["\u7f51\u53610", "x\u0301th1", "lo"]     # CJK (2 columns each); a combining
# accent with no precomposed form (pyte composes to NFC)


def right_edge(line, field):
    """Terminal column where `field` (the first occurrence) ends in line."""
    return wcwidth.wcswidth(line[:line.index(field) + len(field)])


def second_field_edges(lines):
    return [right_edge(line, line.split()[1]) for line in lines]


def test_section_pads_by_terminal_columns():
    Column, Row, Table = netsnoop.Column, netsnoop.Row, netsnoop.Table
    rows = [Row([name, str(10 ** i), "x"], None, name) for i, name in enumerate(WIDE_NAMES)]
    view = netsnoop.TabView([Table("t", [Column("Name", "<"), Column("Bytes", ">"),
                                         Column("End", "<")], rows, [])])
    view.layout()
    header, *rows = [text for text, _ in view.visible(1, 4)]
    assert second_field_edges(rows) == [right_edge(header, "Bytes")] * 3, rows
    assert len({wcwidth.wcswidth(line) for line in rows}) == 1, rows


def test_column_slice_cuts_by_terminal_columns():
    cut = netsnoop.column_slice
    assert cut("abcdef", 1, 3) == "bc"
    assert cut("ab\u7f51cd", 0, 3) == "ab "           # half a wide char: a blank
    assert cut("ab\u7f51cd", 3) == " cd"
    assert cut("ab\u7f51cd", 2, 4) == "\u7f51"
    assert cut("x\u0301yz", 0, 1) == "x\u0301"      # the accent stays with its letter
    assert cut("x\u0301yz", 1) == "yz"               # ... and goes with it


def fake_proc_with_interfaces(tmp_path, pid, names):
    """A fake tree whose net/dev lists lo and then an interface for each of `names`."""
    base = fake_proc(tmp_path, pid)
    dev = DEV % 1280
    lo = dev.splitlines(True)[-1]
    (base / "net" / "dev").write_text(dev + "".join(lo.replace("    lo:", "%6s:" % name)
                                                    for name in names),
                                      encoding="utf-8")


def test_session_columns_stay_aligned_with_wide_names(tmp_path):
    pid = 4242
    fake_proc_with_interfaces(tmp_path, pid, WIDE_NAMES[:2])
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3", "--tab", "traffic"]) as term:
        text = term.wait_for(lambda t: all(name in t for name in WIDE_NAMES))
        header = next(ln for ln in text.splitlines() if "RX bytes" in ln)
        rows = [ln for ln in text.splitlines() if any(name in ln for name in WIDE_NAMES)]
        assert len(rows) == 3, rows
        assert second_field_edges(rows) == [right_edge(header, "RX bytes")] * 3, rows
        quit_ok(term)


def test_narrow_session_clips_and_pans_by_terminal_columns(tmp_path):
    pid = 4242
    # the wide names last: a line drawn too long would run into the blank line below
    fake_proc_with_interfaces(tmp_path, pid, WIDE_NAMES[1::-1])
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3", "--tab", "traffic"], cols=31) as term:
        term.wait_for(lambda t: all(name in t for name in WIDE_NAMES))
        lines = term.screen.display
        last = next(i for i, ln in enumerate(lines) if WIDE_NAMES[0] in ln)
        # below: a blank line, or the table's note (no TCP bytes from a --proc tree)
        assert lines[last + 1].strip() == "" or lines[last + 1].startswith("  (TCP"), lines
        assert all(wcwidth.wcswidth(ln) <= 31 for ln in lines), lines
        term.send(">")                                       # pan past the names
        lines = term.wait_for(lambda t: WIDE_NAMES[0] not in t).splitlines()
        top = next(i for i, ln in enumerate(lines) if "RX pkts" in ln)
        rows = lines[top + 1:top + 4]
        edges = [right_edge(ln, ln.split()[1]) for ln in rows]
        assert edges == [right_edge(lines[top], "RX pkts")] * 3, lines
        quit_ok(term)


def test_a_tab_seen_again_keeps_its_rates_and_deltas(tmp_path):
    # traffic -> tcp -> traffic: the traffic tab still has its last data, so its
    # rate columns (and the analysis tab its deltas) do not fall back to "since boot"
    pid = 4243
    base = fake_proc(tmp_path, pid)
    procfs = netsnoop.ProcFS(str(tmp_path))
    state = netsnoop.SessionState(pid, "traffic", 2.0)
    procs = netsnoop.ProcsPane(procfs, pid)

    def titles():
        return [c.title for c in state.view.tables[0].columns]

    def rx_rates():
        return [r.cells[titles().index("RX/s")] for r in state.view.tables[0].rows]

    netsnoop.refresh_tab(state, procfs, procs)
    assert rx_rates() == [""]                       # no earlier data: no rates yet
    state.tab = "tcp"
    netsnoop.refresh_tab(state, procfs, procs)
    (base / "net" / "dev").write_text(DEV % 99999)
    time.sleep(0.05)
    state.tab = "traffic"
    netsnoop.refresh_tab(state, procfs, procs)
    assert "TX/s" in titles() and rx_rates()[0].endswith("/s")


STAT_WITH_START = "%d (target) S 1 %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n"


def test_session_ends_when_the_pid_names_another_process(tmp_path):
    # the same PID, a new start time: the process watched is gone (PID reuse)
    pid = 4244
    base = fake_proc(tmp_path, pid)
    (base / "stat").write_text(STAT_WITH_START % (pid, pid, pid, 1000))
    (base / "ns").mkdir()
    os.symlink("net:[4026531001]", str(base / "ns" / "net"))
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3"]) as term:
        term.wait_for("net:[4026531001]")
        os.unlink(str(base / "ns" / "net"))                 # PID changes namespace
        os.symlink("net:[4026531002]", str(base / "ns" / "net"))
        term.wait_for("moved to another network namespace: net:[4026531002]")
        assert "net:[4026531002]" in status_line(term)
        (base / "stat").write_text(STAT_WITH_START % (pid, pid, pid, 2000))    # reused
        assert term.wait_exit() == 0
        assert term.stderr() == "netsnoop: process %d exited\n" % pid


def test_status_line_drops_whole_items_rather_than_cutting_numbers():
    st = netsnoop.SessionState(4242, "tcp", 2.0)
    st.comm, st.netns, st.refreshed_at = "python3", "net:[4026531833]", time.time()
    rows = [netsnoop.Row(["r%d" % i], None, i) for i in range(10005)]
    st.view = netsnoop.TabView([netsnoop.Table("tcp", [netsnoop.Column("Row", netsnoop.L)],
                                               rows, [])])
    st.owned_problem = "cannot read /proc/4242/fd"
    # from 48 columns the essentials fit: PID, interval, rows, ownership unknown
    for width in range(48, 81):
        text = netsnoop.status_text(st, width)
        assert len(text) <= width, (width, text)
        assert "rows 10005" in text and text.endswith("ownership unknown"), (width, text)
    wide = netsnoop.status_text(st, 120)
    assert "net:[4026531833]" in wide and "every 2s" in wide


# --- the procs tab on a fake tree: processes appear as directories -------------------------

PROC_STAT = ("%d (%s) S %d %d %d 0 -1 %d 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0 0 0 0 0 0 0 0 0 0 0 0 "
             "0 0 0 17 0\n")
PF_KTHREAD = 0x00200000


def fake_process(root, pid, ppid, comm, kernel=False, last=True):
    """root/PID/{stat,cmdline}; last: the last-PID counter (loadavg) moves to it."""
    base = root / str(pid)
    base.mkdir()
    (base / "stat").write_text(PROC_STAT % (pid, comm, ppid, pid, pid,
                                            PF_KTHREAD if kernel else 0x400000, 100 + pid))
    (base / "cmdline").write_bytes(b"" if kernel else comm.encode() + b"\0--run\0")
    if last:
        set_last_pid(root, pid)


def set_last_pid(root, pid):
    """Rewrite loadavg in place, at one length: the feed holds it open and re-reads it
    every millisecond, so it must never see it truncated (write_text would)."""
    path = root / "loadavg"
    with open(str(path), "r+" if path.exists() else "w") as f:
        f.write("0.00 0.01 0.05 1/80 %7d\n" % pid)


def wait_for_events(pane, pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not set(pids) <= {e["pid"] for e in pane.events}:
        assert time.monotonic() < deadline, [e["pid"] for e in pane.events]
        pane.poll()
        time.sleep(0.02)
    return {e["pid"]: e["descendant"] for e in pane.events}


def test_a_fake_tree_gets_no_records_of_the_machines_programs(tmp_path):
    """Under --proc DIR the machine's own program opens (inotify on /usr/bin) are not the
    tree's processes: they were turned into partial records with "pid": null."""
    fake_process(tmp_path, 1, 0, "init")
    pane = netsnoop.ProcsPane(netsnoop.ProcFS(str(tmp_path)), 1, backend="python")
    try:
        pane.start()
        assert pane.active, pane.tables()[0].notes
        for _ in range(10):                 # real programs, opened from /usr/bin
            subprocess.run([shutil.which("true") or "/bin/true"])
        time.sleep(0.2)
        fake_process(tmp_path, 300, 1, "worker")
        wait_for_events(pane, (300,))
        time.sleep(0.3)
        pane.poll()
        assert [e["pid"] for e in pane.events] == [300], list(pane.events)
    finally:
        pane.close()


def test_procs_tab_of_pid_1_marks_every_process_but_the_kernels(tmp_path):
    """`netsnoop.py 1`: children of marked processes were left unmarked when a parent
    in their chain had exited (its stat gone) -- yet everything descends from PID 1."""
    fake_process(tmp_path, 1, 0, "init")
    fake_process(tmp_path, 2, 0, "kthreadd", kernel=True)
    fake_process(tmp_path, 100, 1, "sshd")
    pane = netsnoop.ProcsPane(netsnoop.ProcFS(str(tmp_path)), 1, backend="python")
    try:
        pane.start()
        assert pane.active, pane.tables()[0].notes
        # 250 (a shell) ran 300 and exited before the feed could read it
        fake_process(tmp_path, 300, 250, "worker")
        fake_process(tmp_path, 301, 300, "helper")
        fake_process(tmp_path, 302, 100, "session")
        fake_process(tmp_path, 303, 2, "kworker/0:1", kernel=True)
        marked = wait_for_events(pane, (300, 301, 302, 303))
        assert marked == {300: True, 301: True, 302: True, 303: False}
    finally:
        pane.close()


def test_procs_tab_of_another_pid_leaves_a_broken_chain_unmarked(tmp_path):
    """For any PID but init, a parent that exited unread leaves the chain unknown: no mark."""
    fake_process(tmp_path, 1, 0, "init")
    fake_process(tmp_path, 100, 1, "target")
    pane = netsnoop.ProcsPane(netsnoop.ProcFS(str(tmp_path)), 100, backend="python")
    try:
        pane.start()
        fake_process(tmp_path, 300, 250, "orphan")           # 250 gone: unknown
        fake_process(tmp_path, 301, 100, "child")
        fake_process(tmp_path, 302, 301, "grandchild")
        fake_process(tmp_path, 303, 1, "stranger")
        marked = wait_for_events(pane, (300, 301, 302, 303))
        assert marked == {300: False, 301: True, 302: True, 303: False}
    finally:
        pane.close()


def test_status_clock_is_as_new_as_the_newest_procs_row(tmp_path):
    """The procs rows arrive between refreshes; the status line's clock stayed at the last
    refresh, older than the rows below it."""
    pid = 4242
    fake_proc(tmp_path, pid)
    set_last_pid(tmp_path, pid)
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "60", "--backend", "python", "--tab", "procs"]) as term:
        term.wait_for("backend python")
        time.sleep(1.2)                                      # the next second at least
        fake_process(tmp_path, 4300, pid, "newcomer")
        term.wait_for("newcomer --run")
        row = next(ln for ln in term.text().splitlines() if "newcomer --run" in ln)
        row_time = re.search(r"(\d\d:\d\d:\d\d)\.\d\d\d", row).group(1)
        clock = re.search(r" (\d\d:\d\d:\d\d)( |$)", status_line(term)).group(1)
        assert clock >= row_time or row_time.startswith("23:59"), (clock, row)
        quit_ok(term)


def test_a_file_that_cannot_be_read_is_shown_not_taken_for_an_exit(tmp_path):
    """A damaged file under --proc ended the session as 'process N exited' (status 0).
    Only an exit ends it: the error takes the tab's place, other tabs still work."""
    pid = 4242
    base = fake_proc(tmp_path, pid)
    tcp = (base / "net" / "tcp").read_text()
    with PtyTerm([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                  "--interval", "0.3"]) as term:
        term.wait_for("rows 2")
        (base / "net" / "tcp").unlink()
        (base / "net" / "tcp").mkdir()                         # read() fails: EISDIR
        said = "process %d: cannot read net/tcp: Is a directory" % pid
        term.wait_for(lambda t: "(cannot show tcp: %s)" % said in t
                      and term.line(23) == said)
        term.pump(1.0)                                         # a few refreshes later
        assert term.proc.poll() is None, term.stderr()
        term.send("4")                                         # the other tabs still read
        term.wait_for(lambda t: any(ln.startswith("  lo ") for ln in t.splitlines()))
        (base / "net" / "tcp").rmdir()
        (base / "net" / "tcp").write_text(tcp)
        term.send("1")
        term.wait_for("127.0.0.1:8080")
        (base / "stat").write_text("%d (evil" % pid)            # damaged: no state
        term.wait_for("(cannot show tcp: process %d: damaged stat" % pid)
        term.pump(1.5)                                         # past an alive check
        assert term.proc.poll() is None, term.stderr()
        os.rename(str(base), str(tmp_path / "gone"))           # now it exits
        assert term.wait_exit() == 0
        assert term.stderr() == "netsnoop: process %d exited\n" % pid


def test_no_tty_snapshots_go_on_past_a_file_that_cannot_be_read(tmp_path):
    pid = 4242
    base = fake_proc(tmp_path, pid)
    proc = subprocess.Popen([sys.executable, NETSNOOP, str(pid), "--proc", str(tmp_path),
                             "--interval", "0.2"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        assert proc.stdout.readline().startswith("netsnoop ")
        (base / "net" / "tcp").unlink()
        (base / "net" / "tcp").mkdir()
        time.sleep(1.0)                                        # ~5 intervals
        assert proc.poll() is None
        os.rename(str(base), str(tmp_path / "gone"))
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert err.splitlines()[1:] == [                           # said once, then the exit
        "netsnoop: process %d: cannot read net/tcp: Is a directory" % pid,
        "netsnoop: process %d exited" % pid]
