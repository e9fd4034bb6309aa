#!/usr/bin/env python3
"""CPU of the interactive session, measured in a pseudo-terminal.

    python3 bench/bench_session.py [--seconds 20] [--runs 3] [--sockets 10000]

Scenarios, run alternately (the machine is shared, so figures are noisy:
medians of the runs are printed):
  typical  the session on a process of this (host) network namespace, tcp tab
  20k      as root: a private namespace (unshare -n) whose helper process holds
           N loopback TCP connections (2N sockets, client ports bound
           explicitly because binding port 0 over and over gets slow), plus the
           listeners.  The helper holds the listeners and the N accepted ends, a
           child of it the N client ends (the fd hard limit here is 20,000 and
           raising it needs CAP_SYS_RESOURCE); the session watches the helper,
           so every refresh also reads its N fds to mark owned sockets.
Each run starts the session at the default interval (2 s) in an 80x24 pty,
waits for the first screen, then reads utime+stime of the session from
/proc/PID/stat over --seconds.  On the 20k namespace it also times keys
(End, then PgUp x 10, each until the screen shows the change), and runs once
more with an explicit `--interval 2`, which the session keeps as given
instead of stretching the default interval when refreshing is costly.
The cost of collect_tab(tcp) alone (no session) is printed as the floor.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ptyterm import PtyTerm  # noqa: E402

NETSNOOP = os.path.join(ROOT, "netsnoop.py")
TICKS = os.sysconf("SC_CLK_TCK")

# Runs as `unshare -n python3 -c HELPER N` inside the private namespace.
HELPER = r"""
import os, resource, socket, subprocess, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < n + 100:
    sys.exit("RLIMIT_NOFILE hard limit %d is too low for %d sockets" % (hard, n))
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
listeners = []
for i in range(10):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 5000 + i))
    s.listen(4096)
    listeners.append(s)
# The client ends live in a child: one process cannot hold 2N fds when the hard
# limit is lower and raising it needs CAP_SYS_RESOURCE.  The child lives until
# this process exits (it waits for EOF on a pipe).
life_r, life_w = os.pipe()
done_r, done_w = os.pipe()
if os.fork() == 0:
    os.close(life_w)
    clients = []
    for i in range(n):
        c = socket.socket()
        c.bind(("127.0.0.1", 20000 + i))      # explicit: port 0 searches get slow
        c.connect(("127.0.0.1", 5000 + i % 10))
        clients.append(c)
    os.write(done_w, b"x")
    os.read(life_r, 1)
    os._exit(0)
os.close(life_r)
held = []
for i in range(n):
    a, _ = listeners[i % 10].accept()
    held.append(a)
os.read(done_r, 1)
print("ready", flush=True)
sys.stdin.read()
"""


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])      # utime, stime (fields 14, 15)


def start_helper(n):
    helper = subprocess.Popen(["unshare", "-n", sys.executable, "-c", HELPER, str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              universal_newlines=True)
    if helper.stdout.readline().strip() != "ready":
        raise SystemExit("helper did not start")
    return helper


def measure(target_pid, seconds, args=(), keys=False):
    """-> (cpu percent of one core over `seconds`, {key: ms} or None)."""
    term = PtyTerm([sys.executable, NETSNOOP, str(target_pid)] + list(args), cols=80, rows=24)
    try:
        term.wait_for("rows", timeout=60)
        time.sleep(0.5)               # let the first refresh settle
        latency = time_keys(term) if keys else None
        t0, c0 = time.monotonic(), cpu_ticks(term.proc.pid)
        end = t0 + seconds
        while time.monotonic() < end:
            term.pump(0.2)            # drain the pty as a terminal would
        t1, c1 = time.monotonic(), cpu_ticks(term.proc.pid)
        status = term.line(1)
        term.send("q")
        term.wait_exit(timeout=30)
        return 100.0 * (c1 - c0) / TICKS / (t1 - t0), latency, status
    finally:
        term.close()


def collection_cost(pid, rounds=5):
    """CPU seconds of one collect_tab(tcp) here, without the session (median)."""
    sys.path.insert(0, ROOT)
    import netsnoop
    procfs = netsnoop.ProcFS()
    costs = []
    for _ in range(rounds):
        t = time.process_time()
        netsnoop.collect_tab(procfs, pid, "tcp")
        costs.append(time.process_time() - t)
    return statistics.median(costs)


def time_keys(term):
    """Time End and PgUp presses until the screen shows the change."""
    out = {}
    before = term.text()
    t = time.monotonic()
    term.key("end")
    term.wait_for(lambda text: text != before, timeout=30)
    out["End"] = 1000 * (time.monotonic() - t)
    pgup = []
    for _ in range(10):
        before = term.text()
        t = time.monotonic()
        term.key("pgup")
        term.wait_for(lambda text, b=before: text != b, timeout=30)
        pgup.append(1000 * (time.monotonic() - t))
    out["PgUp (median of 10)"] = statistics.median(pgup)
    term.key("home")
    return out


def count_tcp_sockets(pid):
    n = 0
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                n += sum(1 for _ in f) - 1
        except OSError:
            pass
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sockets", type=int, default=10000, help="connections in the 20k namespace")
    args = p.parse_args()

    root = os.geteuid() == 0
    if not root:
        print("not root: the 20k scenarios are skipped")
    names = ["typical"] + (["20k", "20k --interval 2"] if root else [])
    results = {name: [] for name in names}
    latencies = []
    idle = subprocess.Popen(["sleep", "100000"])
    try:
        floor = collection_cost(idle.pid)
        print("typical: host namespace, %d tcp sockets; collect_tab(tcp) alone costs %.1f ms "
              "CPU (%.2f%% at 2s)" % (count_tcp_sockets(idle.pid), 1000 * floor, floor / 2 * 100))
        for run in range(args.runs):
            # typical first, without the 20k namespace: its sockets sit in the
            # kernel's global hash that every /proc/net/tcp read walks
            cpu, _, _ = measure(idle.pid, args.seconds)
            results["typical"].append(cpu)
            print("run %d typical: %.2f%% of one core" % (run + 1, cpu), flush=True)
            if not root:
                continue
            helper = start_helper(args.sockets)
            try:
                if run == 0:
                    floor = collection_cost(helper.pid)
                    print("20k: private namespace, %d tcp sockets; collect_tab(tcp) alone "
                          "costs %.0f ms CPU (%.1f%% at 2s)" % (
                              count_tcp_sockets(helper.pid), 1000 * floor, floor / 2 * 100))
                cpu, lat, status = measure(helper.pid, args.seconds, keys=True)
                results["20k"].append(cpu)
                latencies.append(lat)
                print("run %d 20k:     %.2f%% of one core; keys %s; status: %s" % (
                    run + 1, cpu, ", ".join("%s %.0f ms" % kv for kv in lat.items()),
                    status.strip()), flush=True)
                cpu, _, _ = measure(helper.pid, args.seconds, ["--interval", "2"])
                results["20k --interval 2"].append(cpu)
                print("run %d 20k --interval 2 (kept, not stretched): %.2f%% of one core"
                      % (run + 1, cpu), flush=True)
            finally:
                helper.stdin.close()
                helper.wait()
    finally:
        idle.send_signal(signal.SIGTERM)
        idle.wait()
    for name, values in results.items():
        if values:
            print("median %-17s %.2f%% of one core (runs: %s; %gs each)" % (
                name, statistics.median(values), ", ".join("%.2f" % v for v in values),
                args.seconds))
    if latencies:
        for key in latencies[0]:
            print("median %s: %.0f ms" % (key, statistics.median(lat[key] for lat in latencies)))


if __name__ == "__main__":
    main()
