"""The C scanner (_fastscan.c via cffi) against its pure-Python twin."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import need_fast, needs_fast

import netsnoop

# conftest built the C scanner for this run and put it where netsnoop looks (sys.path)
module, reason = netsnoop._load_fastscan()
needs_c = needs_fast
BACKENDS = ["python", pytest.param("fast", marks=needs_c)]


@pytest.fixture
def fast():
    need_fast()
    assert module is not None, "the C scanner was built but does not load: " + reason
    return netsnoop.FastBackend(module)


def make_tree(root, names, files=(), links=()):
    for name in names:
        os.mkdir(os.path.join(root, name))
    for name in files:
        open(os.path.join(root, name), "w").close()
    for name in links:
        os.symlink("1", os.path.join(root, name))


def test_listings_agree_on_a_fixture_tree(tmp_path, fast):
    make_tree(str(tmp_path), ["1", "42", "0042x", "007", "self-ish", "2147483647",
                              "2147483648", "0", "\u0661\u0662"],
              files=["77", "net"], links=["99", "self"])
    python = netsnoop.PythonBackend().list_pids(str(tmp_path))
    assert sorted(fast.list_pids(str(tmp_path))) == sorted(python)
    assert sorted(python) == [1, 7, 42, 2147483647]


def test_listing_grows_past_its_buffer(tmp_path, fast):
    make_tree(str(tmp_path), [str(n) for n in range(1, 5001)])
    assert sorted(fast.list_pids(str(tmp_path))) == list(range(1, 5001))


def test_listings_agree_on_the_real_proc(fast):
    python = netsnoop.PythonBackend()
    for _ in range(3):          # processes come and go between two listings: retry
        a = set(fast.list_pids("/proc"))
        b = set(python.list_pids("/proc"))
        if a == b:
            break
    assert os.getpid() in a and 1 in a
    assert len(a ^ b) <= 2


def test_listing_a_missing_dir_raises(tmp_path, fast):
    with pytest.raises(OSError):
        fast.list_pids(str(tmp_path / "none"))


def test_counter_reads_the_last_pid(tmp_path, fast):
    """The C parser and read_counter() agree, and refuse a damaged last field."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.00 0.01 0.05 1/80 4242\n")
    fd = os.open(str(loadavg), os.O_RDONLY)
    try:
        assert module.lib.fs_read_counter(fd) == 4242 == netsnoop.read_counter(fd)
        loadavg.write_text("0.00 0.01 0.05 1/80 \n")
        assert module.lib.fs_read_counter(fd) < 0
        with pytest.raises(ValueError):
            netsnoop.read_counter(fd)
    finally:
        os.close(fd)


def fixed_counter(tmp_path, value=4242):
    """A loadavg whose counter never moves (the real one does, on a shared machine)."""
    path = tmp_path / "loadavg"
    path.write_text("0.00 0.01 0.05 1/80 %d\n" % value)
    return os.open(str(path), os.O_RDONLY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_returns_on_a_new_pid(backend):
    io = netsnoop.make_backend(backend)
    fd = os.open("/proc/loadavg", os.O_RDONLY)
    try:
        last = netsnoop.read_counter(fd)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        woke, cur = io.wait(fd, -1, last, 0.5, 0.001)
        assert woke == netsnoop.WAIT_MOVED and cur != last
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_times_out_when_nothing_moves(tmp_path, backend):
    io = netsnoop.make_backend(backend)
    fd = fixed_counter(tmp_path)
    try:
        start = time.monotonic()
        assert io.wait(fd, -1, 4242, 0.05, 0.01) == (netsnoop.WAIT_TIMEOUT, 4242)
        assert 0.04 <= time.monotonic() - start < 0.5
        assert io.wait(fd, -1, 4241, 1.0, 0.5) == (netsnoop.WAIT_MOVED, 4242)
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_takes_steps_and_timeouts_past_a_c_int(tmp_path, backend):
    """--interval 3000 gives a 3000 s step: 3e9 us does not fit fs_wait's int."""
    io = netsnoop.make_backend(backend)
    fd = fixed_counter(tmp_path)
    try:
        start = time.monotonic()
        assert io.wait(fd, -1, 4242, 0.05, 3000.0) == (netsnoop.WAIT_TIMEOUT, 4242)
        assert time.monotonic() - start < 0.5
        assert io.wait(fd, -1, 4241, 3000.0, 3000.0) == (netsnoop.WAIT_MOVED, 4242)
    finally:
        os.close(fd)


def fake_stat(root, pid, state, cpu, comm="sh"):
    """/proc/PID/stat in a fake tree: fields 3 (state) to 39 (the CPU last run on)."""
    rest = [state] + ["7777"] * 35 + [str(cpu), "7777", "7777"]   # no CPU but the one
    os.makedirs(os.path.join(root, str(pid)), exist_ok=True)
    with open(os.path.join(root, str(pid), "stat"), "w") as f:
        f.write("%d (%s) %s\n" % (pid, comm, " ".join(rest)))


def current_cpu():
    with open("/proc/thread-self/stat", "rb") as f:
        return netsnoop.parse_proc_stat(f.read()).cpu


def step_aside_from_own_cpu(call, root, pid, **stat):
    """call() after writing PID's stat as runnable on this thread's CPU; again if the
    thread moved meanwhile (on its own) -> (call()'s result, the CPU it was on)."""
    for _ in range(5):
        mine = current_cpu()
        fake_stat(root, pid, "R", mine, **stat)
        got = call()
        if got or current_cpu() == mine:
            return got, mine
    return got, mine


def test_fs_step_aside_leaves_only_the_cpu_of_a_runnable_newborn(tmp_path, fast):
    """fs_step_aside: a newborn runnable (R) on this thread's CPU -> the thread moves
    to the others; asleep, on another CPU, gone or unreadable -> it stays."""
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        pytest.skip("one CPU: nowhere to step aside to")
    root = str(tmp_path)
    step_aside = module.lib.fs_step_aside
    try:
        got, mine = step_aside_from_own_cpu(lambda: step_aside(root.encode(), 42), root, 42)
        assert got == 1
        assert os.sched_getaffinity(0) == everywhere - {mine}
        assert current_cpu() != mine            # moved at once
        os.sched_setaffinity(0, everywhere)
        # a name holding ") R 1" is read up to its last ")": the state is S
        fake_stat(root, 43, "S", current_cpu(), comm="x) R 1 (y")
        fake_stat(root, 44, "R", max(everywhere) + 1)     # a CPU this thread never runs on
        with open(os.path.join(root, "45"), "w"):
            pass                                # not a directory: no stat
        for pid in (43, 44, 45, 46):
            assert step_aside(root.encode(), pid) == 0, pid
            assert os.sched_getaffinity(0) == everywhere, pid
        # limited to one CPU already: nowhere to go
        os.sched_setaffinity(0, {current_cpu()})
        got, _ = step_aside_from_own_cpu(lambda: step_aside(root.encode(), 47), root, 47)
        assert got == 0
    finally:
        os.sched_setaffinity(0, everywhere)


def test_the_c_wait_steps_aside_as_it_wakes_on_a_new_pid(tmp_path, fast):
    """With aside_root, fs_wait checks the newest PID the moment the counter moves and
    says so (stepped_aside); without it, it never moves the thread."""
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        pytest.skip("one CPU: nowhere to step aside to")
    fd = fixed_counter(tmp_path)
    try:
        root = str(tmp_path)
        got, mine = step_aside_from_own_cpu(
            lambda: fast.wait(fd, -1, 4241, 0.5, 0.01) and fast.stepped_aside, root, 4242)
        assert not got and os.sched_getaffinity(0) == everywhere     # aside_root unset
        fast.aside_root = root
        got, mine = step_aside_from_own_cpu(
            lambda: fast.wait(fd, -1, 4241, 0.5, 0.01) and fast.stepped_aside, root, 4242)
        assert got is True
        assert os.sched_getaffinity(0) == everywhere - {mine}
        os.sched_setaffinity(0, everywhere)
        assert fast.wait(fd, -1, 4242, 0.02, 0.01) == (netsnoop.WAIT_TIMEOUT, 4242)
        assert fast.stepped_aside is False      # said again at every wait
    finally:
        os.close(fd)
        os.sched_setaffinity(0, everywhere)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_wakes_on_inotify(tmp_path, backend):
    io = netsnoop.make_backend(backend)
    watched = tmp_path / "watched"
    watched.write_text("x")
    notifier = netsnoop.Notifier(io, [])
    assert notifier.add(str(watched))
    fd = fixed_counter(tmp_path)
    try:
        notifier.drain()
        open(str(watched)).close()
        start = time.monotonic()
        woke, _ = io.wait(fd, notifier.fd, 4242, 2.0, 1.0)
        assert time.monotonic() - start < 0.5
        assert woke == netsnoop.WAIT_NOTIFY
        before = notifier.opens
        notifier.drain()
        assert notifier.opens == before + 1
    finally:
        os.close(fd)
        notifier.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_watch_survives_replacement_by_rename(tmp_path, backend):
    """ldconfig writes ld.so.cache~ and renames it over the cache: the watch follows."""
    cache = tmp_path / "ld.so.cache"
    cache.write_text("old")
    notifier = netsnoop.Notifier(netsnoop.make_backend(backend), [], cache=str(cache))
    try:
        assert list(notifier.paths.values()) == [str(cache)]
        fresh = tmp_path / "ld.so.cache~"
        fresh.write_text("new")
        os.rename(str(fresh), str(cache))
        notifier.drain()
        assert not notifier.cache_lost and list(notifier.paths.values()) == [str(cache)]
        before = notifier.opens
        open(str(cache)).close()
        notifier.drain()
        assert notifier.opens == before + 1
    finally:
        notifier.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_quiet_wait_drops_foreign_execs_but_not_a_lost_watch(tmp_path, backend):
    """Quiet (nothing under watch): an open with the counter still put is dropped
    without ending the wait (a bug would return at each of it, or keep it queued);
    a replaced cache ends it with WAIT_REWATCH, and rewatch() watches the new file
    (a bug would leave the feed blind to execs for good)."""
    io = netsnoop.make_backend(backend)
    cache = tmp_path / "ld.so.cache"
    cache.write_text("old")
    notifier = netsnoop.Notifier(io, [], cache=str(cache))
    fd = fixed_counter(tmp_path)
    try:
        open(str(cache)).close()
        start = time.monotonic()
        assert io.wait(fd, notifier.fd, 4242, 0.2, 0.05, quiet=True) == (
            netsnoop.WAIT_TIMEOUT, 4242)
        assert time.monotonic() - start >= 0.15
        before = notifier.opens
        notifier.drain()
        assert notifier.opens == before         # dropped, not left queued
        fresh = tmp_path / "ld.so.cache~"
        fresh.write_text("new")
        os.rename(str(fresh), str(cache))
        woke, _ = io.wait(fd, notifier.fd, 4242, 2.0, 1.0, quiet=True)
        assert woke == netsnoop.WAIT_REWATCH
        notifier.rewatch()
        assert not notifier.cache_lost and list(notifier.paths.values()) == [str(cache)]
        open(str(cache)).close()
        assert io.wait(fd, notifier.fd, 4242, 2.0, 1.0)[0] == netsnoop.WAIT_NOTIFY
    finally:
        os.close(fd)
        notifier.close()


def test_a_signal_ends_the_c_wait_early(tmp_path, fast):
    """fs_wait runs without the GIL: a signal returns to Python (its handler runs,
    then --procs sees its stop flag) long before the timeout."""
    caught = []
    saved = signal.signal(signal.SIGALRM, lambda signum, frame: caught.append(signum))
    fd = fixed_counter(tmp_path)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        assert fast.wait(fd, -1, 4242, 5.0, 5.0) == (netsnoop.WAIT_TIMEOUT, 4242)
        assert time.monotonic() - start < 1.0
        assert caught == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved)
        os.close(fd)


# --- the fd scan of the net views: C and Python walk the same way ------------------

def fd_scans(dir_path):
    """-> (C result, Python result) for one directory of links, each on a fresh fd."""
    results = []
    for scan in (lambda fd: netsnoop.fast_fd_socket_inodes(module, fd),
                 netsnoop.python_fd_socket_inodes):
        fd = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            results.append(scan(fd))
        finally:
            os.close(fd)
    return tuple(results)


@needs_c
def test_fd_scans_agree_on_a_tree_of_odd_links(tmp_path):
    links = {"0": "socket:[11]", "1": "/dev/null", "2": "socket:[22]", "3": "pipe:[33]",
             "5": "socket:[]", "6": "socket:[4x]", "7": "socket:[44", "8": "Socket:[55]",
             "9": "socket:[" + "9" * 21 + "]", "10": "socket:[\u0661]",     # no 64-bit inode
             "200": "socket:[66]",          # far past a gap: found by the listing
             "007": "socket:[77]",          # not a name probing "7" reads
             "x": "socket:[88]", "11": "socket:[18446744073709551615]", "12": "socket:[0]"}
    for name, target in links.items():
        os.symlink(target, str(tmp_path / name))
    c_scan, py_scan = fd_scans(str(tmp_path))
    assert c_scan == py_scan == {11, 22, 66, 77, 88, 18446744073709551615}


@needs_c
def test_fd_scans_agree_on_this_process_and_grow_past_their_array():
    import socket
    held = [socket.socket() for _ in range(1500)]      # past the first 1,024 + 64 slots
    try:
        c_scan, py_scan = fd_scans("/proc/self/fd")
        assert c_scan == py_scan
        assert {os.fstat(s.fileno()).st_ino for s in held} <= c_scan
    finally:
        for s in held:
            s.close()


@needs_c
def test_fd_scan_of_a_process_gone_raises(tmp_path):
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    with pytest.raises(OSError):
        netsnoop.fast_fd_socket_inodes(module, fd)      # EBADF, as Python's would


def netsnoop_beside_a_scanner(tmp_path, edit_cdef):
    """netsnoop.py copied into tmp_path beside a C scanner built with edit_cdef(CDEF):
    an older build, which lacks some functions.  -> the script's path."""
    import cffi     # needs_c: conftest built the scanner, so cffi and a compiler are here
    root = os.path.dirname(os.path.abspath(netsnoop.__file__))
    sys.path.insert(0, root)
    try:
        import build_fastscan
    finally:
        sys.path.remove(root)
    ffi = cffi.FFI()
    ffi.cdef(edit_cdef(build_fastscan.CDEF))
    ffi.set_source("_fastscan_cffi", '#include "_fastscan.c"', include_dirs=[root])
    ffi.compile(tmpdir=str(tmp_path))
    shutil.copy(os.path.join(root, "netsnoop.py"), str(tmp_path))
    return str(tmp_path / "netsnoop.py")


@needs_c
def test_a_c_scanner_built_before_the_fd_scan_still_serves_the_net_views(tmp_path):
    # copying a new netsnoop.py beside an older .so: the fd scan falls back to Python
    script = netsnoop_beside_a_scanner(tmp_path, lambda cdef: "\n".join(
        line for line in cdef.splitlines() if "fs_socket_inodes" not in line))
    version = subprocess.run([sys.executable, script, "--version"], stdout=subprocess.PIPE,
                             universal_newlines=True)
    assert "process scanner: fast" in version.stdout
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        res = subprocess.run([sys.executable, script, str(os.getpid()), "--once", "--tab", "tcp",
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
        assert res.returncode == 0, res.stderr
        port = listener.getsockname()[1]
        mine = [s for s in json.loads(res.stdout)["tabs"]["tcp"]["sockets"]
                if s["local_port"] == port and s["state"] == "LISTEN"]
        assert len(mine) == 1 and mine[0]["owned"] is True
    finally:
        listener.close()


@needs_c
def test_a_c_scanner_built_from_an_older_source_is_refused_and_says_so(tmp_path):
    # without the newest functions (the catcher's) the .so is not loaded: the Python
    # twin runs, and --backend fast says to build it again
    script = netsnoop_beside_a_scanner(
        tmp_path, lambda cdef: cdef.split("struct fs_snapshot {")[0])
    version = subprocess.run([sys.executable, script, "--version"], stdout=subprocess.PIPE,
                             universal_newlines=True)
    assert "process scanner: python" in version.stdout
    res = subprocess.run([sys.executable, script, "--procs", "--backend", "fast",
                          "--duration", "0.1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True)
    assert res.returncode != 0 and "build it again" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def catcher_start(lib):
    paths = [netsnoop.LD_CACHE] + netsnoop.wake_dirs()
    return lib.fs_catcher_start(b"/proc", b"".join(os.fsencode(p) + b"\0" for p in paths),
                                len(paths))


def caught(handle, pid):
    """fs_catcher_find -> (stat text, cmdline bytes, uid), or None."""
    ffi, lib = module.ffi, module.lib
    snap = ffi.new("struct fs_snapshot *")
    if not lib.fs_catcher_find(handle, pid, snap):
        return None
    return (ffi.unpack(snap.stat, snap.stat_len).decode(),
            ffi.unpack(snap.cmdline, snap.cmdline_len), snap.uid)


@needs_c
def test_the_catcher_keeps_each_exec_and_not_a_fork_image(fast):
    """fs_catcher_*: its own thread follows every new PID and keeps a reading only when
    it shows an exec.  A child that execs at once (vfork), one that execs 30 ms after
    its fork, and one that never execs: the last two are first read as their parent's
    image (an exec elsewhere wakes the catcher meanwhile), which is not kept."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    true = shutil.which("true") or "/bin/true"
    lib = module.lib
    before = set(os.listdir("/proc/self/task"))
    handle = catcher_start(lib)
    assert handle != module.ffi.NULL
    try:
        # its thread (another test's may end meanwhile: only the new one is looked at)
        [catcher] = set(os.listdir("/proc/self/task")) - before
        at_once = subprocess.Popen(["nstest-at-once", "0.05"], executable=sleep)
        at_once.wait()
        waker = threading.Timer(0.01, subprocess.run, [[true]])
        waker.start()
        late = subprocess.Popen(["nstest-late", "0.05"], executable=sleep,
                                preexec_fn=lambda: time.sleep(0.03))
        late.wait()
        waker.join()
        forked = os.fork()
        if forked == 0:
            time.sleep(0.1)
            os._exit(0)
        subprocess.run([true])
        os.waitpid(forked, 0)
        time.sleep(0.05)
        for child, argv0 in ((at_once, b"nstest-at-once"), (late, b"nstest-late")):
            stat, cmdline, uid = caught(handle, child.pid)
            assert cmdline == argv0 + b"\x000.05\x00"
            assert stat.startswith("%d (sleep) " % child.pid)
            assert uid == os.geteuid()
        assert caught(handle, forked) is None
        assert caught(handle, 0) is None
    finally:
        lib.fs_catcher_stop(handle)
    assert catcher not in os.listdir("/proc/self/task")        # joined


@needs_c
def test_the_catcher_still_follows_the_newest_after_many_quiet_threads(fast):
    """100 threads made while nothing exec'd move the counter past what the catcher
    follows at once (64): woken by the next exec, it follows the newest PIDs, where
    that exec is, rather than none."""
    sleep = shutil.which("sleep") or "/bin/sleep"
    lib = module.lib
    handle = catcher_start(lib)
    assert handle != module.ffi.NULL
    try:
        time.sleep(0.1)
        for _ in range(100):
            thread = threading.Thread(target=int)
            thread.start()
            thread.join()
        child = subprocess.Popen(["nstest-after-threads", "0.05"], executable=sleep)
        child.wait()
        time.sleep(0.05)
        stat, cmdline, _uid = caught(handle, child.pid)
        assert cmdline == b"nstest-after-threads\x000.05\x00"
    finally:
        lib.fs_catcher_stop(handle)
