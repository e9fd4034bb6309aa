#!/usr/bin/env python3
"""Benchmark: who talks to whom (socket owners, TCP bytes, the --conns feed).

    sudo python3 bench/bench_conns.py [--rate 100] [--seconds 30] [--sockets 20000] [--runs 7]

1. The --conns feed at RATE connections per second, in a private network namespace
   (`unshare -n`): a load process connects to a local server RATE times a second
   (each connection sends 100 bytes and closes).  Beside it, in the same namespace
   and for the same time, run `netsnoop --conns --json` and its peer `ss -tniE`
   (ss's event mode: the same destroy multicast, printing each closing socket with
   its tcp_info).  Printed: the CPU of each (share of one core), their ratio, and
   the closes each reported against the connections made.  30 s by default: the
   feed's dump budget lets a burst of 60 ms of dumps go at its start (then 2 ms a
   second), which over 10 s alone reads as 0.6 points of a core (10 s: 2.0-2.3%,
   30 s: 1.4%, same machine).
2. The tcp snapshot with owners and bytes on SOCKETS sockets (bench_net.py's
   namespace): `netsnoop PID --once --tab tcp --json` against `ss -tanp` and
   `ss -tanpi` run inside the namespace, in alternating rounds: median wall and
   CPU, and the ratios.

The machine is shared: figures are noisy, hence ratios of peers run side by side
(part 1) or in alternating rounds (part 2), and medians.
"""

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_net  # noqa: E402

PYTHON = bench_net.PYTHON
NETSNOOP = bench_net.NETSNOOP


# ---------------------------------------------------------------------------
# 1. the feed at a steady connection rate
# ---------------------------------------------------------------------------

def load_main(rate, seconds):
    """Inside the namespace: a server, then `rate` connections a second for `seconds`."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    address = server.getsockname()

    def serve():
        while True:
            conn, _ = server.accept()
            while conn.recv(4096):
                pass
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    sys.stdout.write("READY %d\n" % os.getpid())
    sys.stdout.flush()
    sys.stdin.readline()                    # go
    made, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        c = socket.create_connection(address)
        c.sendall(b"x" * 100)
        c.close()
        made += 1
        time.sleep(max(0.0, started + made / float(rate) - time.monotonic()))
    time.sleep(0.5)
    sys.stdout.write("DONE %d\n" % made)
    sys.stdout.flush()
    sys.stdin.read()
    return 0


def cpu_of(pid):
    """utime + stime of a process, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def feed_round(rate, seconds):
    load = subprocess.Popen(["unshare", "-n", PYTHON, os.path.abspath(__file__), "--load",
                             str(rate), str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    ready = load.stdout.readline().split()
    netns = "--net=/proc/%s/ns/net" % ready[1]
    watchers = {
        "netsnoop --conns": subprocess.Popen(
            ["nsenter", netns, PYTHON, NETSNOOP, "--conns", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True),
        "ss -tniE": subprocess.Popen(
            ["nsenter", netns, "ss", "-tniE"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True),
    }
    outputs = {}
    readers = []
    for name, proc in watchers.items():
        outputs[name] = []
        t = threading.Thread(target=lambda p=proc, o=outputs[name]: o.extend(p.stdout))
        t.start()
        readers.append(t)
    time.sleep(2.0)                         # both started (netsnoop's first dump taken)
    before = {name: cpu_of(proc.pid) for name, proc in watchers.items()}
    load.stdin.write("go\n")
    load.stdin.flush()
    made = int(load.stdout.readline().split()[1])
    after = {name: cpu_of(proc.pid) for name, proc in watchers.items()}
    for proc in watchers.values():
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:   # ss -E once ignored a SIGINT sent right at its start
            proc.kill()
            proc.wait()
    for t in readers:
        t.join()
    load.stdin.close()
    load.wait(timeout=30)
    closes = {
        "netsnoop --conns": sum(1 for line in outputs["netsnoop --conns"]
                                if '"event": "close"' in line),
        # ss -E prints one line per closing socket, then its tcp_info line
        "ss -tniE": sum(1 for line in outputs["ss -tniE"] if line.startswith("ESTAB")
                        or line.startswith("CLOSE") or line[:1].isalpha()
                        and not line.startswith("State")),
    }
    cpu = {name: after[name] - before[name] for name in watchers}
    return made, cpu, closes


# ---------------------------------------------------------------------------
# 2. the snapshot of 20,000 sockets with owners
# ---------------------------------------------------------------------------

def snapshot_rounds(ns, runs, python=PYTHON, installed=None):
    argv = [python, NETSNOOP, str(ns.pid), "--once", "--tab", "tcp", "--json"]
    cmds = [
        ("netsnoop", lambda: bench_net.timed(argv)),
        ("ss -tanp", lambda: ns.run_inside(["ss", "-tanp"])),
        ("ss -tanpi", lambda: ns.run_inside(["ss", "-tanpi"])),
    ]
    if installed:
        cmds.append(("installed", lambda: bench_net.timed([installed] + argv[2:])))
    times = {name: [] for name, _ in cmds}
    cpus = {name: [] for name, _ in cmds}
    for r in range(runs):
        for k in range(len(cmds)):
            name, fn = cmds[(r + k) % len(cmds)]
            elapsed, _, cpu = fn()
            times[name].append(elapsed)
            cpus[name].append(cpu)
    return times, cpus


def owners_seen(ns):
    out = bench_net.timed(bench_net.netsnoop_argv(ns.pid))[1]
    tab = json.loads(out.decode())["tabs"]["tcp"]
    rows = tab["sockets"]
    return (len(rows), sum(1 for s in rows if s["pid"] is not None),
            sum(1 for s in rows if s.get("bytes_sent") is not None))


def ms(seconds):
    return "%.1f ms" % (seconds * 1000)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--sockets", type=int, default=20000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--load", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--skip-snapshot", action="store_true")
    p.add_argument("--python", default=PYTHON,
                   help="the interpreter that runs netsnoop.py as a lone script in part 2 "
                        "(a venv's: no site hooks of this machine's)")
    p.add_argument("--installed", metavar="COMMAND",
                   help="part 2 also times this installed netsnoop (pip install . into a "
                        "venv: its module compiled once, not at every run)")
    args = p.parse_args(argv)
    if args.load:
        return load_main(int(args.load[0]), float(args.load[1]))
    if os.geteuid() != 0:
        raise SystemExit("bench_conns: needs root (unshare -n, nsenter)")
    load = os.getloadavg()[0]
    print("bench_conns (load average %.1f on %d cores: a shared machine, figures are noisy)"
          % (load, os.cpu_count() or 0))
    made, cpu, closes = feed_round(args.rate, args.seconds)
    print("\n1. --conns at %d connections/s for %gs (%d connections, %d closing sockets)"
          % (args.rate, args.seconds, made, 2 * made))
    for name in cpu:
        print("   %-18s CPU %6.2fs = %5.1f%% of a core, closes reported %d"
              % (name, cpu[name], 100 * cpu[name] / args.seconds, closes[name]))
    if cpu["ss -tniE"] > 0:
        print("   ratio netsnoop/ss CPU: %.2f" % (cpu["netsnoop --conns"] / cpu["ss -tniE"]))
    if args.skip_snapshot:
        return 0
    ns = bench_net.Namespace(args.sockets)
    try:
        rows, owned, with_bytes = owners_seen(ns)
        times, cpus = snapshot_rounds(ns, args.runs, args.python, args.installed)
    finally:
        ns.close()
    print("\n2. tcp snapshot: %d rows, %d with an owner, %d with bytes (%d runs each)"
          % (rows, owned, with_bytes, args.runs))
    print("   netsnoop = %s %s (the lone script, compiled at every run)"
          % (args.python, NETSNOOP))
    for name in times:
        print("   %-10s wall %9s  cpu %9s" % (name, ms(statistics.median(times[name])),
                                              ms(statistics.median(cpus[name]))))
    for mine in [n for n in ("netsnoop", "installed") if n in times]:
        for peer in ("ss -tanp", "ss -tanpi"):
            ratio = statistics.median(a / b for a, b in zip(times[mine], times[peer]))
            print("   median per-round ratio %s/%s (wall): %.2f" % (mine, peer, ratio))
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))
    sys.exit(main())
