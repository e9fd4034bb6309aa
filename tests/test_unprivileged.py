"""netsnoop as an unprivileged user (nobody, 65534) looking at root's processes:
what it can read it shows, what it cannot it says (owned_known: false), and
a /proc mounted with hidepid=2 gives the README's one-line message (status 1).

Needs root (to become nobody with setpriv, to mount a private /proc); skips
otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import NETSNOOP, can_unshare

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
PORT = 5555

# Listens on PORT in its own network namespace, then sleeps until its stdin closes.
HOLDER = ("import socket, sys\n"
          "s = socket.socket()\n"
          "s.bind(('0.0.0.0', %d))\n"
          "s.listen(1)\n"
          "print('ready', flush=True)\n"
          "sys.stdin.read()\n" % PORT)


def python_for_nobody():
    """An interpreter nobody may run (pyenv's may sit under a 0700 /root)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        # It must also be able to start itself again (exec checks the whole path).
        check = "import subprocess, sys; sys.exit(subprocess.call([sys.argv[1], '-c', 'pass']))"
        r = subprocess.run(NOBODY + [python, "-c", check, python],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            return python
    return None


def nobody_possible():
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


PYTHON = python_for_nobody() if nobody_possible() else None
needs_nobody = pytest.mark.skipif(
    PYTHON is None, reason="needs root, setpriv and a Python that user nobody can run")


@pytest.fixture(scope="module")
def public_netsnoop():
    """netsnoop.py where nobody can read it (pytest's tmp dirs are 0700)."""
    d = tempfile.mkdtemp(prefix="netsnoop-nobody-")
    os.chmod(d, 0o755)
    copy = os.path.join(d, "netsnoop.py")
    shutil.copyfile(NETSNOOP, copy)
    os.chmod(copy, 0o644)
    yield copy
    shutil.rmtree(d)


@pytest.fixture
def root_holder():
    """A root process with a listening socket in a private network namespace."""
    if not can_unshare():
        pytest.skip("needs root and unshare -n")
    p = subprocess.Popen(["unshare", "-n", sys.executable, "-c", HOLDER],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    assert p.stdout.readline() == "ready\n"
    yield p.pid
    p.stdin.close()
    p.wait(10)


def as_nobody(script, *args, prefix=()):
    return subprocess.run(list(prefix) + NOBODY + [PYTHON, script] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


@needs_nobody
def test_root_process_sockets_listed_ownership_unknown(public_netsnoop, root_holder):
    r = as_nobody(public_netsnoop, root_holder, "--once", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    tcp = json.loads(r.stdout)["tabs"]["tcp"]
    assert [s["local_port"] for s in tcp["sockets"]] == [PORT]
    assert tcp["owned_known"] is False
    assert "permission denied" in tcp["owned_reason"], tcp["owned_reason"]
    assert not any(s["owned"] for s in tcp["sockets"])


@needs_nobody
def test_every_tab_as_nobody_no_crash(public_netsnoop, root_holder):
    r = as_nobody(public_netsnoop, root_holder, "--once", "--tab", "all", "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["netns"] == "unknown"       # ns/net of root's process: not ours to read
    assert set(snap["tabs"]) >= {"tcp", "udp", "arp", "traffic", "routing", "analysis"}
    r = as_nobody(public_netsnoop, root_holder, "--once", "--tab", "all")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "ownership unknown" in r.stdout


@needs_nobody
def test_procs_feed_as_nobody(public_netsnoop):
    r = as_nobody(public_netsnoop, "--procs", "--duration", "1")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    r = as_nobody(public_netsnoop, "--procs", "--json", "--duration", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["event"] == "summary", summary


# --- /proc mounted with hidepid=2, in a private mount namespace ------------------------

def with_private_proc(option, script, argv):
    """As root: a fresh proc mount with `option` on a temp dir, then argv as nobody."""
    mnt = tempfile.mkdtemp(prefix="netsnoop-proc-")
    os.chmod(mnt, 0o755)
    try:
        shell = ('mount -t proc -o "$1" proc "$2" || exit 97; shift 2; exec "$@"')
        cmd = (["unshare", "-m", "sh", "-c", shell, "sh", option, mnt] + NOBODY
               + [PYTHON, script, "--proc", mnt] + [str(a) for a in argv])
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
    finally:
        os.rmdir(mnt)
    if r.returncode == 97:
        pytest.skip("cannot mount proc with %s here: %s" % (option, r.stderr.strip()))
    return r


needs_mount_ns = pytest.mark.skipif(not can_unshare() or PYTHON is None,
                                    reason="needs root, unshare and setpriv")


@needs_mount_ns
def test_hidepid_hides_root_process(public_netsnoop, root_holder):
    r = with_private_proc("hidepid=2", public_netsnoop, [root_holder, "--once"])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("netsnoop: ") and str(root_holder) in lines[0], lines
    assert "hidepid" in lines[0], lines


@needs_mount_ns
def test_hidepid_still_shows_own_process(public_netsnoop):
    """Under hidepid=2 nobody still sees itself: the mount is usable, not just empty."""
    mnt_script = ("import os, subprocess, sys\n"
                  "sys.exit(subprocess.call([sys.argv[3], sys.argv[1], '--proc', sys.argv[2],"
                  " str(os.getpid()), '--once', '--json']))\n")
    mnt = tempfile.mkdtemp(prefix="netsnoop-proc-")
    os.chmod(mnt, 0o755)
    try:
        shell = 'mount -t proc -o hidepid=2 proc "$1" || exit 97; shift; exec "$@"'
        r = subprocess.run(["unshare", "-m", "sh", "-c", shell, "sh", mnt] + NOBODY
                           + [PYTHON, "-c", mnt_script, public_netsnoop, mnt, PYTHON],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
    finally:
        os.rmdir(mnt)
    if r.returncode == 97:
        pytest.skip("cannot mount proc with hidepid=2 here")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tabs"]["tcp"]["owned_known"] is True


@needs_mount_ns
def test_without_hidepid_a_missing_pid_does_not_blame_it(public_netsnoop):
    """The hidepid hint comes from the mount options, not from every missing PID."""
    r = with_private_proc("hidepid=0", public_netsnoop, [999999999, "--once"])
    assert r.returncode == 1
    assert "999999999" in r.stderr and "does not exist" in r.stderr
    assert "hidepid" not in r.stderr, r.stderr


# --- a process whose fd directory lists but whose links are refused ----------------

# Not dumpable: in a user namespace, even its "root" may list /proc/PID/fd but not
# read the links.  Listens on an ephemeral port, sleeps until stdin closes.
NOT_DUMPABLE = ("import ctypes, socket, sys\n"
                "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n"      # PR_SET_DUMPABLE, 0
                "s = socket.socket()\n"
                "s.bind(('127.0.0.1', 0))\n"
                "s.listen(1)\n"
                "print(s.getsockname()[1], flush=True)\n"
                "sys.stdin.read()\n")


def userns_possible():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-U", "-r", "true"]).returncode == 0


@pytest.mark.skipif(not userns_possible(), reason="needs root and unshare -U -r")
@pytest.mark.parametrize("scanner", [[], ["-S"]], ids=["as-built", "python-scan"])
def test_refused_fd_links_leave_ownership_unknown_not_none(scanner):
    holder = subprocess.Popen([sys.executable, "-c", NOT_DUMPABLE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, universal_newlines=True)
    try:
        port = int(holder.stdout.readline())
        cmd = ["unshare", "-U", "-r", sys.executable] + scanner + [
            NETSNOOP, str(holder.pid), "--once", "--tab", "tcp"]
        res = subprocess.run(cmd + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
        assert res.returncode == 0, res.stderr
        tab = json.loads(res.stdout)["tabs"]["tcp"]
        assert tab["owned_known"] is False and "not dumpable" in tab["owned_reason"]
        mine = [s for s in tab["sockets"] if s["local_port"] == port]
        assert len(mine) == 1 and mine[0]["owned"] is False
        text = subprocess.run(cmd, stdout=subprocess.PIPE, universal_newlines=True).stdout
        assert "which of them the process holds is unknown" in text
        assert "owned by the process (*)" not in text
    finally:
        holder.stdin.close()
        holder.wait(10)


@needs_mount_ns
@pytest.mark.parametrize("option, warned", [("hidepid=2", True), ("hidepid=0", False)])
def test_procs_feed_under_hidepid_says_what_it_cannot_see(public_netsnoop, option, warned):
    r = with_private_proc(option, public_netsnoop, ["--procs", "--duration", "0.3"])
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("netsnoop: watching for new processes")
    assert ("other users' processes are hidden from you" in r.stderr) is warned
    assert ("or hidden by hidepid before they could be read" in lines[-1]) is warned
