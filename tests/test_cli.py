"""The README's exit statuses and --once output, through the real program (a subprocess).

Real processes are spawned for the live cases (a zombie, a vanished PID, another user's
process seen through setpriv); fake /proc trees are built under tmp_path with real
socket:[N] symlinks for the output cases."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import netsnoop as ns
from conftest import FIXTURES, NETSNOOP, python_for_nobody, run_netsnoop

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def assert_one_line_error(res, status, *words):
    """One line `netsnoop: ...` on stderr, the right status, never a traceback."""
    assert res.returncode == status, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("netsnoop: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def pid_max():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def wait_state(pid, letters, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open("/proc/%d/stat" % pid) as f:
            if ns.parse_stat_line(f.read())[1][0] in letters:
                return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------------
# Usage errors: status 2
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--once"], ["--json"], ["--tab", "tcp"]],
                         ids=["nothing", "once", "json", "tab"])
def test_no_pid(args):
    assert_one_line_error(run_netsnoop(*args), 2, "PID")


@pytest.mark.parametrize("pid", ["abc", "-5", "0", "12x", "1.5", "", " 7", "\u0661\u0662"])
def test_bad_pid(pid):
    line = assert_one_line_error(run_netsnoop(pid, "--once"), 2)
    assert "PID" in line or "argument" in line


def test_unknown_tab():
    assert_one_line_error(run_netsnoop(os.getpid(), "--once", "--tab", "nosuch"), 2, "nosuch")


def test_unknown_option():
    assert_one_line_error(run_netsnoop(os.getpid(), "--bogus"), 2, "--bogus")


def test_tab_all_needs_once():
    assert_one_line_error(run_netsnoop(os.getpid(), "--tab", "all"), 2, "--once")


def test_pid_and_procs_together():
    assert_one_line_error(run_netsnoop(os.getpid(), "--procs"), 2)


@pytest.mark.parametrize("args, names", [
    (["PID", "--json"], "--json"),                  # no JSON session: a usage error
    (["--procs", "--once"], "--once"),
    (["--procs", "--tab", "udp"], "--tab"),
    (["PID", "--once", "--filter", "x"], "--filter"),
    (["PID", "--once", "--interval", "1"], "--interval"),
], ids=["json-without-once", "procs-once", "procs-tab", "filter-with-pid", "once-interval"])
def test_options_that_do_not_apply_are_refused(args, names):
    args = [str(os.getpid()) if a == "PID" else a for a in args]
    assert_one_line_error(run_netsnoop(*args), 2, names)


def test_procs_interval_above_one_second_is_refused_not_capped():
    """It was accepted and silently capped at 1 s; --help says so."""
    line = assert_one_line_error(run_netsnoop("--procs", "--interval", "2"), 2, "--interval")
    assert "at most 1 second" in line and "not 2" in line
    res = run_netsnoop("--procs", "--interval", "1", "--duration", "0.2")
    assert res.returncode == 0, res.stderr
    help_text = " ".join(run_netsnoop("--help").stdout.split())
    assert "at most 1: a longer one is refused" in help_text


@pytest.mark.parametrize("regex, says", [
    ("(", "unterminated subpattern"),
    ("x{99999999999}", "too large"),                # OverflowError inside re
    ("[[:digit:]]", "[0-9]"),                       # a FutureWarning, made an error
])
def test_bad_filter_is_one_usage_line(regex, says):
    line = assert_one_line_error(run_netsnoop("--procs", "--duration", "0.1", "--filter", regex),
                                 2, "bad --filter regex")
    assert says in line


def test_control_characters_in_bad_arguments_are_escaped():
    res = run_netsnoop("1\x1b[2J", "--once")
    line = assert_one_line_error(res, 2)
    assert "\x1b" not in line


# ---------------------------------------------------------------------------
# The PID: status 1, the message names the PID and the reason
# ---------------------------------------------------------------------------

def test_pid_beyond_pid_max_does_not_exist():
    pid = pid_max() + 1
    assert_one_line_error(run_netsnoop(pid, "--once"), 1, str(pid), "does not exist")


def test_reaped_child_does_not_exist():
    proc = subprocess.Popen(["true"])
    proc.wait()
    if os.path.exists("/proc/%d" % proc.pid):
        pytest.skip("PID %d was reused at once" % proc.pid)
    assert_one_line_error(run_netsnoop(proc.pid, "--once", "--json"), 1, str(proc.pid),
                          "does not exist")


def test_zombie():
    proc = subprocess.Popen(["true"])     # never waited for until the end: a zombie
    try:
        assert wait_state(proc.pid, "Z"), "child did not become a zombie"
        with pytest.raises(OSError) as err:
            os.listdir("/proc/%d/net" % proc.pid)
        assert err.value.errno == 22      # EINVAL: what makes a zombie's net view unreadable
        for args in (["--once"], ["--once", "--json", "--tab", "all"], []):
            assert_one_line_error(run_netsnoop(proc.pid, *args), 1, str(proc.pid), "zombie")
    finally:
        proc.wait()


def test_procfs_net_read_on_zombie_raises():
    """The net/* files of a zombie fail with ENOENT, not EINVAL: they must not read as
    "file absent" (which would give an empty, successful snapshot)."""
    proc = subprocess.Popen(["true"])
    try:
        assert wait_state(proc.pid, "Z")
        procfs = ns.ProcFS()
        with pytest.raises(ns.ProcessGone, match="zombie"):
            procfs.net_read(proc.pid, "tcp")
        with pytest.raises(ns.ProcessGone):
            ns.collect_tab(procfs, proc.pid, "routing")
    finally:
        proc.wait()


def test_procfs_on_vanished_pid(sleeper):
    """A PID that exits after netsnoop started on it: every read reports it gone."""
    procfs = ns.ProcFS()
    pid = sleeper.pid
    assert procfs.check_net(pid) == "sleep"
    sleeper.kill()
    sleeper.wait()
    for call in (lambda: ns.snapshot(procfs, pid, ["tcp"]),
                 lambda: ns.collect_tab(procfs, pid, "udp"),
                 lambda: ns.collect_tab(procfs, pid, "arp"),
                 lambda: procfs.net_read(pid, "dev"),
                 lambda: procfs.socket_inodes(pid),
                 lambda: procfs.pid_read(pid, "stat")):
        with pytest.raises(ns.ProcessGone, match=str(pid)):
            call()


def test_pid_exiting_during_the_read():
    """Best effort at the race: processes that die while netsnoop reads them.  Each run
    must end either with a full snapshot (0) or one `netsnoop:` line naming the PID (1);
    fails on a traceback, a half-written snapshot, or an error that does not name the PID."""
    for delay in ("0.02", "0.04", "0.06", "0.08", "0.1", "0.12"):
        proc = subprocess.Popen(["sleep", delay])
        res = run_netsnoop(proc.pid, "--once", "--json", "--tab", "all")
        proc.wait()
        if res.returncode == 0:
            assert json.loads(res.stdout)["pid"] == proc.pid
            assert res.stderr == ""
        else:
            assert_one_line_error(res, 1, str(proc.pid))


# ---------------------------------------------------------------------------
# --proc DIR
# ---------------------------------------------------------------------------

def test_proc_dir_missing(tmp_path):
    missing = str(tmp_path / "nowhere")
    assert_one_line_error(run_netsnoop("--proc", missing, "1", "--once"), 1, missing)


def test_proc_dir_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    assert_one_line_error(run_netsnoop("--proc", str(path), "1", "--once"), 1, str(path))


def run_as_nobody(*args):
    """NETSNOOP (in a directory nobody can read, see conftest) run by user 65534."""
    python = python_for_nobody()
    if python is None or not shutil.which("setpriv"):
        pytest.skip("needs root, setpriv and a python that user 65534 can run")
    return subprocess.run(["setpriv"] + NOBODY + [python, NETSNOOP] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
                          universal_newlines=True, timeout=60)


def test_proc_dir_unreadable(public_tmp):
    locked = public_tmp / "locked"
    locked.mkdir()
    os.chmod(str(locked), 0)
    res = run_as_nobody("--proc", str(locked), "1", "--once")
    assert_one_line_error(res, 1, str(locked), "ermission denied")


# ---------------------------------------------------------------------------
# Closed pipes, --version, --help
# ---------------------------------------------------------------------------

def test_output_into_a_closed_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)                                  # nobody will ever read
    try:
        res = subprocess.run([sys.executable, NETSNOOP, str(os.getpid()), "--once",
                              "--tab", "all"], stdout=write_end, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=60)
    finally:
        os.close(write_end)
    assert res.returncode == 0
    assert res.stderr == ""


@pytest.mark.parametrize("fmt", [[], ["--json"]], ids=["text", "json"])
def test_head_closes_the_pipe_early(fmt, tmp_path):
    """`netsnoop ... | head -1`: the reader takes one line and goes away.  The output is
    made larger than a pipe's buffer (64 KiB) so that the writer really hits EPIPE.
    Fails on a traceback or status 1 at EPIPE, or when the first line is not the heading."""
    root = build_tree(tmp_path, extra_tcp=3000)
    proc = subprocess.Popen([sys.executable, NETSNOOP, "--proc", root, str(FAKE_PID),
                             "--once", "--tab", "all"] + fmt,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    heading = b'{"pid": %d, ' % FAKE_PID if fmt else b"netsnoop %s: pid %d " % (
        ns.__version__.encode(), FAKE_PID)
    assert first.startswith(heading), first[:80]
    assert err == ""


def test_main_returns_a_status_for_help_and_version(capsys):
    assert ns.main(["--help"]) == 0 and ns.main(["--version"]) == 0
    assert "process scanner:" in capsys.readouterr().out


def test_version():
    res = run_netsnoop("--version")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("netsnoop %s" % ns.__version__)


def test_help():
    res = run_netsnoop("--help")
    assert res.returncode == 0 and res.stderr == ""
    assert "usage:" in res.stdout
    for word in ("--once", "--json", "--procs", "--proc", "--tab") + ns.TABS:
        assert word in res.stdout


# ---------------------------------------------------------------------------
# --once text and --json on a fake tree with real socket:[N] links
# ---------------------------------------------------------------------------

FAKE_PID = 4242
TCP_HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode")
UDP_HEADER = TCP_HEADER + " ref pointer drops"


def tcp_line(sl, local, remote, state, inode, uid=1000):
    return ("%4d: %s %s %s 00000000:00000000 00:00000000 00000000 %5d        0 %d 1 "
            "0000000000000000 100 0 0 10 0" % (sl, local, remote, state, uid, inode))


def build_tree(root, comm="fake", fd_links=None, extra_tcp=0):
    """root/PID/{stat,net/*,fd/N -> socket:[..],ns/net}; tcp6 deliberately absent."""
    pid_dir = root / str(FAKE_PID)
    (pid_dir / "net").mkdir(parents=True)
    (pid_dir / "fd").mkdir()
    (pid_dir / "ns").mkdir()
    (pid_dir / "stat").write_text(
        "%d (%s) S 1 %d %d 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"
        % (FAKE_PID, comm, FAKE_PID, FAKE_PID))
    (pid_dir / "net" / "tcp").write_text("\n".join([
        TCP_HEADER,
        tcp_line(0, "0100007F:1F90", "00000000:0000", "0A", 1001),
        tcp_line(1, "0100007F:1F90", "0100007F:C350", "01", 1002),
        tcp_line(2, "0100007F:C350", "0100007F:1F90", "01", 1004),
        "   3: 0100007F:1F90 0100007F:C352 06 00000000:00000000 03:00001770 00000000"
        "     0        0 0 3 0000000000000000",
        "   4: damaged line",
    ] + [tcp_line(5 + i, "0100007F:%04X" % (10000 + i), "0100007F:1F90", "01", 20000 + i)
         for i in range(extra_tcp)]) + "\n")
    (pid_dir / "net" / "udp").write_text(
        UDP_HEADER + "\n" + " 8749: 0100007F:0035 00000000:0000 07 00000000:00000000 "
        "00:00000000 00000000     0        0 1003 2 0000000000000000 0\n")
    links = fd_links if fd_links is not None else {
        "0": "/dev/null", "3": "socket:[1001]", "4": "pipe:[77]", "5": "socket:[1003]",
        "6": "socket:[99999]"}
    for fd, target in links.items():
        os.symlink(target, str(pid_dir / "fd" / fd))
    os.symlink("net:[4026530000]", str(pid_dir / "ns" / "net"))
    return str(root)


def by_inode(sockets):
    return {s["inode"]: s for s in sockets}


def test_once_json_on_fake_tree(tmp_path):
    root = build_tree(tmp_path)
    res = run_netsnoop("--proc", root, FAKE_PID, "--once", "--json", "--tab", "all")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    snap = json.loads(res.stdout)
    assert (snap["pid"], snap["comm"], snap["netns"]) == (FAKE_PID, "fake", "net:[4026530000]")
    assert isinstance(snap["time"], float) and abs(snap["time"] - time.time()) < 60
    assert list(snap["tabs"]) == list(ns.TABS)
    tcp = snap["tabs"]["tcp"]
    assert tcp["owned_known"] is True
    socks = by_inode(tcp["sockets"])
    assert sorted(socks) == [0, 1001, 1002, 1004]
    assert {i: s["owned"] for i, s in socks.items()} == \
        {0: False, 1001: True, 1002: False, 1004: False}
    listen = socks[1001]
    assert (listen["proto"], listen["local_address"], listen["local_port"], listen["state"],
            listen["remote_address"], listen["remote_port"], listen["uid"]) == \
        ("tcp", "127.0.0.1", 8080, "LISTEN", "0.0.0.0", 0, 1000)
    assert socks[0]["state"] == "TIME_WAIT"
    assert tcp["skipped_lines"] == 1
    assert tcp["files_missing"] == ["tcp6"]
    udp = snap["tabs"]["udp"]
    assert [(s["inode"], s["owned"], s["state"], s["local_port"]) for s in udp["sockets"]] == \
        [(1003, True, "CLOSE", 53)]
    for key in ("proto", "local_address", "local_port", "remote_address", "remote_port",
                "state", "tx_queue", "rx_queue", "uid", "inode", "owned"):
        assert key in listen
    # every net file of the other tabs is missing from this tree: reported, not fatal
    assert snap["tabs"]["traffic"]["interfaces"] == []
    assert "dev" in snap["tabs"]["traffic"]["files_missing"]
    assert snap["tabs"]["routing"] == {"ipv4": [], "ipv6": [], "skipped_lines": 0,
                                       "files_missing": ["route", "ipv6_route"]}


def test_once_text_on_fake_tree(tmp_path):
    root = build_tree(tmp_path, comm="fa\x1bke")
    res = run_netsnoop("--proc", root, FAKE_PID, "--once")
    assert res.returncode == 0 and res.stderr == ""
    out = res.stdout
    assert "\x1b" not in out                               # comm escaped for the terminal
    assert "pid %d (fa\\eke)" % FAKE_PID in out
    # Netid State Recv-Q Send-Q Local Peer UID Inode [Own] [Process]
    rows = {line.split()[7]: line.split() for line in out.splitlines()
            if line.startswith("tcp ")}
    assert rows["1001"][8:] == ["*", "fa\\eke/%d" % FAKE_PID]     # owner escaped too
    assert rows["1002"][8:] == []
    rows = {inode: " ".join(fields) for inode, fields in rows.items()}
    assert "127.0.0.1:8080" in rows["1001"] and "LISTEN" in rows["1001"]
    assert "1 owned by the process" in out
    assert "not present: tcp6" in out
    assert "1 damaged line skipped" in out


def test_json_comm_with_control_characters_stays_valid(tmp_path):
    root = build_tree(tmp_path, comm="a\x07\u202eb")
    res = run_netsnoop("--proc", root, FAKE_PID, "--once", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["comm"] == "a\x07\u202eb"
    assert "\x07" not in res.stdout                        # json escapes it


def test_fake_tree_pid_missing_says_so(tmp_path):
    root = build_tree(tmp_path)
    assert_one_line_error(run_netsnoop("--proc", root, FAKE_PID + 1, "--once"), 1,
                          str(FAKE_PID + 1), "does not exist")


def hidepid_tree(root, cap_eff=None):
    """A tree whose self/mountinfo says it is mounted with hidepid; cap_eff: self/status's
    CapEff (netsnoop's own capabilities as this tree tells them)."""
    tree = build_tree(root)
    (root / "self").mkdir()
    (root / "self" / "mountinfo").write_text(
        "22 1 0:21 / %s rw,nosuid,nodev,noexec,relatime shared:12 - proc proc "
        "rw,hidepid=invisible\n" % os.path.realpath(tree))
    if cap_eff is not None:
        (root / "self" / "status").write_text("Name:\tnetsnoop\nCapEff:\t%016x\n" % cap_eff)
    return tree


ALL_CAPS = (1 << 41) - 1
NO_SYS_PTRACE = ALL_CAPS & ~(1 << 19)


def test_fake_tree_hidepid_named_in_message(public_tmp):
    root = hidepid_tree(public_tmp)
    os.chmod(str(public_tmp / "self"), 0o755)
    assert_one_line_error(run_as_nobody("--proc", root, FAKE_PID + 1, "--once"), 1,
                          str(FAKE_PID + 1), "hidepid")


@pytest.mark.parametrize("cap_eff, hint", [(None, False), (ALL_CAPS, False),
                                           (NO_SYS_PTRACE, True)],
                         ids=["caps-unknown", "sys_ptrace", "no-sys_ptrace"])
def test_hidepid_hint_not_shown_to_root_it_hides_nothing_from(tmp_path, cap_eff, hint):
    """Root was told a missing PID may be hidden by hidepid: hidepid hides nothing from
    root with CAP_SYS_PTRACE, only from a root that lacks it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = hidepid_tree(tmp_path, cap_eff)
    line = assert_one_line_error(run_netsnoop("--proc", root, FAKE_PID + 1, "--once"), 1,
                                 "process %d does not exist" % (FAKE_PID + 1))
    assert ("hidepid" in line) == hint, line


def test_fake_tree_zombie_state(tmp_path):
    root = build_tree(tmp_path)
    stat = tmp_path / str(FAKE_PID) / "stat"
    stat.write_text(stat.read_text().replace(") S ", ") Z "))
    assert_one_line_error(run_netsnoop("--proc", root, FAKE_PID, "--once"), 1,
                          str(FAKE_PID), "zombie")


def test_fake_tree_unreadable_stat_is_access_denied(public_tmp):
    root = build_tree(public_tmp)
    os.chmod(str(public_tmp / str(FAKE_PID) / "stat"), 0)
    res = run_as_nobody("--proc", root, FAKE_PID, "--once")
    assert_one_line_error(res, 1, str(FAKE_PID), "permission denied")


def test_another_users_process_ownership_unknown(sleeper):
    """As nobody, /proc/PID/fd of a root process cannot be listed: the sockets are still
    shown (net/* is world-readable) but `owned` cannot be known, and JSON says why."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own the target while the viewer is nobody")
    res = run_as_nobody(sleeper.pid, "--once", "--json", "--tab", "all")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    for tab in ("tcp", "udp", "raw", "icmp"):
        data = snap["tabs"][tab]
        assert data["owned_known"] is False
        assert "permission denied" in data["owned_reason"]
        assert str(sleeper.pid) in data["owned_reason"]
        assert all(s["owned"] is False for s in data["sockets"])
    assert "run as its user or root" in snap["tabs"]["tcp"]["owned_reason"]
    assert snap["netns"] == "unknown" and snap["netns_reason"] == "another user's process"
    text = run_as_nobody(sleeper.pid, "--once")
    assert text.returncode == 0
    assert "ownership unknown" in text.stdout
    assert "netns unknown (another user's process)" in text.stdout.splitlines()[0]


@pytest.mark.parametrize("wrapper, says, short", [
    (["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"], "CAP_SYS_PTRACE",
     "root without CAP_SYS_PTRACE"),
    (["unshare", "-U", "-r"], "root is that of a user namespace", "root of a user namespace"),
], ids=["no-sys_ptrace", "user-namespace"])
def test_root_is_told_the_real_reason_its_reads_are_refused(wrapper, says, short):
    """Root without CAP_SYS_PTRACE (a container that drops it), or the root of a user
    namespace, cannot read another user's fds or ns links: it was told to 'run as its
    user or root', and `netns unknown` came without a reason."""
    if os.geteuid() != 0 or not shutil.which(wrapper[0]) or not shutil.which("setpriv"):
        pytest.skip("needs root, setpriv and %s" % wrapper[0])
    if subprocess.run(wrapper + ["true"]).returncode != 0:
        pytest.skip("%s does not work here" % " ".join(wrapper))
    target = subprocess.Popen(["setpriv"] + NOBODY + ["sleep", "60"])
    try:
        time.sleep(0.2)                                 # setpriv has exec'd sleep
        res = subprocess.run(
            wrapper + [sys.executable, NETSNOOP, str(target.pid), "--once", "--json",
                       "--tab", "tcp"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        assert res.returncode == 0, res.stderr
        snap = json.loads(res.stdout)
        reason = snap["tabs"]["tcp"]["owned_reason"]
        assert "permission denied: even to root" in reason and says in reason, reason
        assert "run as its user or root" not in reason
        assert (snap["netns"], snap["netns_reason"]) == ("unknown", short)
        # with every capability, in the first user namespace, root reads them
        full = json.loads(run_netsnoop(target.pid, "--once", "--json").stdout)
        assert full["tabs"]["tcp"]["owned_known"] is True and full["netns"] != "unknown"
    finally:
        target.kill()
        target.wait()


def test_ctrl_c_while_reading_is_quiet(tmp_path):
    """Ctrl+C during --once: no traceback.  net/tcp is a FIFO, so netsnoop is surely
    inside main() (blocked reading it) when the signal arrives; signalling a process
    that is still starting Python would test the interpreter, not netsnoop."""
    root = build_tree(tmp_path)
    fifo = str(tmp_path / str(FAKE_PID) / "net" / "tcp")
    os.unlink(fifo)
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, NETSNOOP, "--proc", root, str(FAKE_PID),
                             "--once"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = None
    deadline = time.time() + 20
    while writer is None and time.time() < deadline:
        try:                            # succeeds once netsnoop has the FIFO open to read
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    assert writer is not None, "netsnoop never opened net/tcp"
    try:
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
    assert proc.returncode == 130
    assert err == b"" and out == b""


# ---------------------------------------------------------------------------
# Output that cannot be written, and hostile --proc trees: still one line, never a traceback
# ---------------------------------------------------------------------------

def test_output_to_a_full_disk(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    root = build_tree(tmp_path)
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, NETSNOOP, "--proc", root, str(FAKE_PID),
                              "--once"], stdout=full, stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=60)
    assert_one_line_error(res, 1, "No space left")


def test_stdout_closed(tmp_path):
    root = build_tree(tmp_path)
    res = subprocess.run([sys.executable, NETSNOOP, "--proc", root, str(FAKE_PID), "--once"],
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                         preexec_fn=lambda: os.close(1))
    assert_one_line_error(res, 1, "standard output")


@pytest.mark.parametrize("target", ["socket:[abc]", "socket:[]", "socket:[12", "socket:"])
def test_malformed_socket_links_are_ignored(tmp_path, target):
    root = build_tree(tmp_path, fd_links={"3": "socket:[1001]", "4": target})
    res = run_netsnoop("--proc", root, FAKE_PID, "--once", "--json")
    assert res.returncode == 0, res.stderr
    owned = {s["inode"]: s["owned"] for s in json.loads(res.stdout)["tabs"]["tcp"]["sockets"]}
    assert owned[1001] is True and owned[1002] is False


@pytest.mark.parametrize("content", ["", "garbage", "4242 (x", "4242 (x)", "\xff\xfe"])
def test_damaged_stat_in_tree(tmp_path, content):
    root = build_tree(tmp_path)
    (tmp_path / str(FAKE_PID) / "stat").write_bytes(content.encode("latin-1"))
    assert_one_line_error(run_netsnoop("--proc", root, FAKE_PID, "--once"), 1, str(FAKE_PID))


def test_net_file_that_is_a_directory(tmp_path):
    root = build_tree(tmp_path)
    (tmp_path / str(FAKE_PID) / "net" / "tcp6").mkdir()
    assert_one_line_error(run_netsnoop("--proc", root, FAKE_PID, "--once"), 1,
                          str(FAKE_PID), "tcp6")


def test_ascii_only_stdout(tmp_path):
    root = build_tree(tmp_path, comm="caf\u00e9")
    res = run_netsnoop("--proc", root, FAKE_PID, "--once",
                       env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert res.returncode == 0, res.stderr
    assert "pid %d (caf\\xe9)" % FAKE_PID in res.stdout


# ---------------------------------------------------------------------------
# The README's JSON keys, on the tree captured from a real namespace
# ---------------------------------------------------------------------------

SOCKET_KEYS = {"proto", "local_address", "local_port", "remote_address", "remote_port",
               "state", "tx_queue", "rx_queue", "uid", "inode", "owned"}
JSON_STATES = {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
               "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}


def captured_tree():
    tree = os.path.join(FIXTURES, "netns_live")
    with open(os.path.join(tree, "capture.json")) as f:
        return os.path.join(tree, "proc"), json.load(f)


def test_json_contract_on_captured_tree():
    proc, meta = captured_tree()
    res = run_netsnoop("--proc", proc, meta["pid"], "--once", "--tab", "all", "--json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    assert set(snap) >= {"pid", "comm", "netns", "time", "tabs"}
    tabs = snap["tabs"]
    owned_inodes = set(meta["owned_inodes"][str(meta["pid"])])
    seen_owned = set()
    for tab, protos in (("tcp", {"tcp", "tcp6"}), ("udp", {"udp", "udp6"}),
                        ("raw", {"raw", "raw6"}), ("icmp", {"icmp", "icmp6"})):
        assert tabs[tab]["sockets"], tab
        for s in tabs[tab]["sockets"]:
            assert set(s) >= SOCKET_KEYS
            assert s["proto"] in protos and s["state"] in JSON_STATES
            for key in ("local_port", "remote_port", "tx_queue", "rx_queue", "uid", "inode"):
                assert isinstance(s[key], int)
            assert s["owned"] == (s["inode"] in owned_inodes)
            if s["owned"]:
                seen_owned.add(s["inode"])
    assert seen_owned == owned_inodes
    assert set(tabs["icmp"]["counters"]) == {"Icmp", "IcmpMsg", "Icmp6"}
    for entry in tabs["arp"]["entries"]:
        assert set(entry) >= {"ip_address", "hw_type", "flags", "hw_address", "mask", "device"}
    # stat/arp_cache exists only in the host namespace: no stats, and said so
    assert (tabs["arp"]["stats"], tabs["arp"]["stats_available"]) == ({}, False)
    for iface in tabs["traffic"]["interfaces"]:
        assert set(iface) == {"name"} | set(ns.DEV_FIELDS)
    assert {"TcpExt", "IpExt"} <= set(tabs["stats"])
    assert all(isinstance(v, int) for v in tabs["stats"]["TcpExt"].values())
    for r in tabs["routing"]["ipv4"]:
        assert set(r) >= {"iface", "destination", "gateway", "mask", "flags", "metric", "mtu",
                          "window", "irtt", "refcnt", "use"}
    for r in tabs["routing"]["ipv6"]:
        assert set(r) >= {"destination", "prefix_len", "source", "source_prefix_len",
                          "next_hop", "metric", "refcnt", "use", "flags", "iface"}
    analysis = tabs["analysis"]
    assert {"Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"} <= set(analysis["snmp"])
    for row in analysis["softnet"]:
        assert set(row) >= {"cpu", "processed", "dropped", "time_squeeze"}
    for f in analysis["findings"]:
        assert f["severity"] in ("info", "warn", "alert") and f["text"]


def test_captured_tree_other_process_owns_nothing():
    proc, meta = captured_tree()
    other = meta["other_pid_owns_nothing"]
    res = run_netsnoop("--proc", proc, other, "--once", "--tab", "all", "--json")
    assert res.returncode == 0, res.stderr
    snap = json.loads(res.stdout)
    for tab in ("tcp", "udp", "raw", "icmp"):
        assert snap["tabs"][tab]["owned_known"] is True
        assert snap["tabs"][tab]["sockets"]
        assert not any(s["owned"] for s in snap["tabs"][tab]["sockets"])


def test_an_internal_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    """A bug anywhere below main() reaches the user as one line and status 1."""
    def broken(args):
        raise RuntimeError("boom\x1b[2J")
    monkeypatch.setattr(ns, "run", broken)
    monkeypatch.delenv("NETSNOOP_DEBUG", raising=False)
    assert ns.main(["1", "--once"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netsnoop: internal error: RuntimeError: boom")
    assert "\x1b" not in err and "Traceback" not in err
    monkeypatch.setenv("NETSNOOP_DEBUG", "1")
    with pytest.raises(RuntimeError):
        ns.main(["1", "--once"])


def test_stats_without_netstat_says_so(tmp_path):
    """No net/netstat in the tree: no section, files_missing says why (as every tab does)."""
    root = build_tree(tmp_path)
    res = run_netsnoop(FAKE_PID, "--proc", root, "--once", "--tab", "stats", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout)["tabs"]["stats"] == {"skipped_lines": 0,
                                                        "files_missing": ["netstat"]}
    res = run_netsnoop(FAKE_PID, "--proc", root, "--once", "--tab", "stats")
    assert res.returncode == 0 and "(not present: netstat)" in res.stdout


def test_stats_json_is_sections_of_ints_and_the_read_notes(tmp_path):
    """stats had no skipped_lines/files_missing, unlike every other tab."""
    root = build_tree(tmp_path)
    (tmp_path / str(FAKE_PID) / "net" / "netstat").write_text(
        "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 0 7\nbroken line\n"
        "IpExt: InOctets\nIpExt: 1234\n")
    res = run_netsnoop(FAKE_PID, "--proc", root, "--once", "--tab", "stats", "--json")
    assert json.loads(res.stdout)["tabs"]["stats"] == {
        "TcpExt": {"SyncookiesSent": 0, "ListenOverflows": 7}, "IpExt": {"InOctets": 1234},
        "skipped_lines": 1, "files_missing": []}
    res = run_netsnoop(FAKE_PID, "--proc", root, "--once", "--tab", "stats")
    assert "ListenOverflows" in res.stdout and "1 damaged line skipped" in res.stdout


def test_every_net_tab_has_the_read_notes(tmp_path):
    root = build_tree(tmp_path)
    res = run_netsnoop(FAKE_PID, "--proc", root, "--once", "--tab", "all", "--json")
    for tab in ns.NET_TABS:
        data = json.loads(res.stdout)["tabs"][tab]
        assert isinstance(data["skipped_lines"], int), tab
        assert isinstance(data["files_missing"], list), tab
