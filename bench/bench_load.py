#!/usr/bin/env python3
"""netsnoop under load: a fork storm under `--procs --json`, and network
namespaces crowded with TCP sockets under `--once --tab tcp`.

    python3 bench/bench_load.py [--rate 2000] [--seconds 5] [--sockets 20000,50000]
                                [--runs 5] [--skip-storm] [--skip-sockets]

Fork storm: about RATE forks per second for SECONDS (each child lives ~20 ms)
while `netsnoop.py --procs --json` runs.  Reported: forks done, events seen,
netsnoop's own summary (seen / missed), its peak RSS (VmHWM, limit 40 MB), and
whether it kept running.

Sockets: a holder process in a private network namespace (`unshare -n`, needs
root) listens on N TCP ports; `netsnoop.py HOLDER --once --tab tcp` (text and
--json) is timed, alternating, and the medians printed.  The machine is shared:
figures are noisy, compare medians only.

tests/test_ship.py runs a quick variant through fork_storm_run() and socket_run().
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETSNOOP = os.path.join(ROOT, "netsnoop.py")
# What a fork storm may add to the peak memory netsnoop had before it (VmHWM; the
# lone script's own peak, ~38-40 MB, is Python compiling it).  A step holds the
# events it catches up with until the storm pauses, at most STEP_EVENTS (~4 KB each).
STORM_GROWTH_LIMIT_KB = 40 * 1024

# Forks RATE children per second for SECONDS; each child sleeps a little so a
# poller has a chance to see some of them, and is reaped without blocking.
STORM = r"""
import os, sys, time
rate, secs, life = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n = 0
start = time.monotonic()
end = start + secs
while True:
    now = time.monotonic()
    if now >= end:
        break
    while n < int((now - start) * rate):
        if os.fork() == 0:
            time.sleep(life)
            os._exit(0)
        n += 1
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    time.sleep(0.002)
elapsed = time.monotonic() - start
try:
    while os.waitpid(-1, 0):
        pass
except ChildProcessError:
    pass
print(n, elapsed)
"""

# Listens on N TCP ports in the namespace it was started in, then waits for
# its stdin to close.  RLIMIT_NOFILE may not be raised past the hard limit
# (no CAP_SYS_RESOURCE in a container), so past one process's share the
# sockets go to forked helpers in the same namespace: the holder itself owns
# the first share only, like a server among other processes.
HOLDER = r"""
import os, resource, socket, sys
n = int(sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if hard == resource.RLIM_INFINITY:
    hard = n + 1024
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
share = max(1, hard - 256)
ready_r, ready_w = os.pipe()
starts = list(range(0, n, share))
for start in starts[1:]:
    if os.fork() == 0:
        break
else:
    start = 0
socks = []
for port in range(10000 + start, 10000 + min(n, start + share)):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    socks.append(s)
if start:
    os.write(ready_w, b"x")
    sys.stdin.read()
    os._exit(0)
for _ in starts[1:]:
    os.read(ready_r, 1)
print("ready", flush=True)
sys.stdin.read()
"""


def vm_hwm_kb(pid):
    """Peak resident set size of a live process, from /proc/PID/status."""
    try:
        with open("/proc/%d/status" % pid) as f:
            m = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def fork_storm_run(rate=2000, seconds=5.0, life=0.02, python=sys.executable,
                   netsnoop=NETSNOOP, extra=(), workers=2):
    """Run `--procs --json` through a fork storm -> dict of figures."""
    ns = subprocess.Popen([python, netsnoop, "--procs", "--json"] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    lines, errors = [], []
    readers = [threading.Thread(target=lambda: lines.extend(ns.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(ns.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    time.sleep(1.0)                             # let it take its first full scan
    # Several forkers: one Python process cannot fork 2,000/s on a busy box.
    storms = [subprocess.Popen([python, "-S", "-c", STORM, str(rate / workers), str(seconds),
                                str(life)], stdout=subprocess.PIPE, universal_newlines=True)
              for _ in range(workers)]
    hwm_before = vm_hwm_kb(ns.pid) or 0
    hwm, alive = 0, True
    while any(s.poll() is None for s in storms):
        hwm = max(hwm, vm_hwm_kb(ns.pid) or 0)
        alive = alive and ns.poll() is None
        time.sleep(0.1)
    counts = [s.stdout.read().split() for s in storms]
    forks = sum(int(c[0]) for c in counts)
    elapsed = max(float(c[1]) for c in counts)
    time.sleep(0.5)
    hwm = max(hwm, vm_hwm_kb(ns.pid) or 0)
    alive = alive and ns.poll() is None
    if ns.poll() is None:
        ns.send_signal(signal.SIGINT)
    try:
        ns.wait(timeout=30)
    except subprocess.TimeoutExpired:
        ns.kill()
        ns.wait()
    for reader in readers:                      # the only readers of its pipes
        reader.join(5)
    err = "".join(errors)
    events = [json.loads(ln) for ln in lines if ln.strip()]
    summary = [e for e in events if e.get("event") == "summary"]
    return {
        "forks": forks, "forks_per_s": forks / elapsed,
        "events_new": sum(1 for e in events if e.get("event") == "new"),
        "summary": summary[-1] if summary else None,
        "vm_hwm_kb": hwm, "vm_hwm_before_kb": hwm_before, "alive_throughout": alive, "status": ns.returncode,
        "stderr": err.strip(),
    }


class SocketHolder(object):
    """A process in its own network namespace listening on `n` TCP ports."""

    def __init__(self, n, python=sys.executable):
        self.proc = subprocess.Popen(["unshare", "-n", python, "-c", HOLDER, str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     universal_newlines=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError("socket holder did not start (needs root and unshare -n)")
        self.pid = self.proc.pid

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def time_once(pid, json_out, python=sys.executable, netsnoop=NETSNOOP):
    """One `PID --once --tab tcp [--json]` -> (seconds, CompletedProcess)."""
    argv = [python, netsnoop, str(pid), "--once", "--tab", "tcp"] + (["--json"] if json_out else [])
    start = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=300)
    return time.monotonic() - start, r


def socket_run(n, runs=5, python=sys.executable, netsnoop=NETSNOOP):
    """Median wall times of --once --tab tcp (text, json) with n sockets -> dict."""
    text_times, json_times, listed = [], [], None
    with SocketHolder(n, python) as holder:
        for _ in range(runs):                   # alternate, so drift hits both alike
            t, r = time_once(holder.pid, False, python, netsnoop)
            if r.returncode != 0:
                raise RuntimeError("--once failed: %s" % r.stderr.strip())
            text_times.append(t)
            t, r = time_once(holder.pid, True, python, netsnoop)
            if r.returncode != 0:
                raise RuntimeError("--once --json failed: %s" % r.stderr.strip())
            json_times.append(t)
            data = json.loads(r.stdout)["tabs"]["tcp"]
            listed = (len(data["sockets"]), sum(1 for s in data["sockets"] if s["owned"]))
    return {"sockets": n, "text_s": statistics.median(text_times),
            "json_s": statistics.median(json_times), "listed": listed[0],
            "owned": listed[1], "runs": runs}


def load_matrix():
    """.ci/matrix (a script without .py) for its pty driver."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader
    spec = spec_from_loader("matrix", SourceFileLoader("matrix", os.path.join(ROOT, ".ci", "matrix")))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def session_first_screen(n, python=sys.executable, netsnoop=NETSNOOP):
    """Seconds from start until the session shows its tab bar with n sockets, or a skip reason."""
    matrix = load_matrix()
    env = dict(os.environ, TERM="xterm-256color", LANG="C.UTF-8")
    with SocketHolder(n, python) as holder:
        start = time.monotonic()
        seen = []

        def until(screen):
            if matrix.tab_bar_seen(screen) and not seen:
                seen.append(time.monotonic() - start)
            return bool(seen)
        status, _, screen = matrix.drive_session([python, netsnoop, str(holder.pid)], env,
                                                 until=until, timeout=120)
    if not seen:
        raise RuntimeError("no tab bar; screen: %r" % " ".join(screen.split())[:300])
    return seen[0], "status %s after q" % status


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--sockets", default="20000,50000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="forking processes")
    ap.add_argument("--backend", default="auto", help="netsnoop --backend for the fork storm")
    ap.add_argument("--skip-storm", action="store_true")
    ap.add_argument("--skip-sockets", action="store_true")
    args = ap.parse_args()
    print("bench_load: %s, %d CPUs (shared machine: noisy figures)"
          % (sys.version.split()[0], os.cpu_count() or 0))
    if not args.skip_storm:
        r = fork_storm_run(args.rate, args.seconds, workers=args.workers,
                           extra=["--backend", args.backend])
        print("fork storm (--backend %s): %d forks in %.0fs (%.0f/s achieved); netsnoop: %d 'new' events, "
              "summary %s, VmHWM %.1f MB before the storm, %.1f MB after (growth limit %d), "
              "alive throughout: %s, status %s"
              % (args.backend, r["forks"], args.seconds, r["forks_per_s"], r["events_new"],
                 json.dumps(r["summary"]), r["vm_hwm_before_kb"] / 1024.0,
                 r["vm_hwm_kb"] / 1024.0, STORM_GROWTH_LIMIT_KB // 1024,
                 r["alive_throughout"], r["status"]))
        if r["stderr"]:
            print("  netsnoop stderr: %s" % r["stderr"].splitlines()[-1])
    if not args.skip_sockets:
        for n in [int(x) for x in args.sockets.split(",") if x]:
            r = socket_run(n, args.runs)
            print("sockets: %6d listening TCP sockets: --once --tab tcp median %.2fs text, "
                  "%.2fs json (%d runs each, alternating); %d listed, %d owned"
                  % (n, r["text_s"], r["json_s"], r["runs"], r["listed"], r["owned"]))
            first, note = session_first_screen(n)
            print("  session: tab bar after %.2fs (%s)" % (first, note))


if __name__ == "__main__":
    main()
