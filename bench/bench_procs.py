#!/usr/bin/env python3
"""Benchmark of netsnoop --procs: catch rate, latency, CPU and memory.

    python3 bench/bench_procs.py --quick      one round, < 60 s (CI)
    python3 bench/bench_procs.py              three alternating rounds, medians
    python3 bench/bench_procs.py --installed VENV/bin/netsnoop
                                              the pip-installed command too

For each scanner -- netsnoop's `fast` backend (this tree's netsnoop.py, the
.so beside it), its `python` backend run from a lone copy of netsnoop.py
(`python3 -I`, in a temp dir), with --installed the `netsnoop` command that
pip installed (its own interpreter, the fast backend), and a naive poller
that lists /proc every 100 ms (pspy's default, without inotify) -- the bench:
1. starts it as a subprocess with JSON output to a file, while 1,000 idle
   extra processes exist;
2. spawns marked processes at 50/s that live 1, 5, 20 and 100 ms
   (`/bin/sleep SECONDS` with a unique argv[0]: comm stays "sleep", the
   marker is only in the command line);
3. counts those reported with their full command line ([marker, SECONDS]),
   the detection latency (event time - spawn time), the scanner's CPU while
   spawning (utime+stime of /proc/PID/stat) and, with no spawns, idle CPU;
   memory three ways: the peak over the whole life, start-up included
   (ru_maxrss from wait4), the
   peak after start-up (VmHWM, reset through /proc/PID/clear_refs once the
   scanner says it is watching) and VmRSS at the end.
The machine may be shared: figures are medians over rounds that alternate
the scanners; expect noise of a few tenths of a percent of CPU.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETSNOOP = os.path.join(ROOT, "netsnoop.py")
SLEEP = shutil.which("sleep") or "/bin/sleep"
LIFETIMES_MS = (1, 5, 20, 100)
RATE = 50.0                     # spawns per second
TICKS = os.sysconf("SC_CLK_TCK")

# pspy's default without inotify: list /proc every 100 ms, read what is new.
NAIVE = r'''
import json, os, sys, time
sys.stderr.write("naive: watching\n"); sys.stderr.flush()
seen = set(int(p) for p in os.listdir("/proc") if p.isdigit())
while True:
    time.sleep(0.1)
    now = set(int(p) for p in os.listdir("/proc") if p.isdigit())
    for pid in now - seen:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                raw = f.read()
        except OSError:
            continue
        args = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []
        sys.stdout.write(json.dumps({"event": "new", "time": time.time(), "pid": pid,
                                     "cmdline": args}) + "\n")
    sys.stdout.flush()
    seen = now
'''

# 1,000 idle processes: forked children that wait for a signal.
IDLE_FARM = r'''
import os, signal, sys
n = int(sys.argv[1])
for _ in range(n):
    if os.fork() == 0:
        signal.pause()
        os._exit(0)
sys.stdout.write("ready\n"); sys.stdout.flush()
signal.pause()
'''


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / float(TICKS)


def reset_peak_rss(pid):
    """Start VmHWM again from the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def stop_scanner(proc):
    """SIGTERM, reap; -> the peak RSS of its whole life in MB (ru_maxrss of wait4)."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:       # reaped elsewhere (seen once on a shared machine)
            proc.returncode = -1 if proc.returncode is None else proc.returncode
            return float("nan")
        if pid:
            proc.returncode = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                               else os.WEXITSTATUS(status))
            return usage.ru_maxrss / 1024.0
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            deadline = None
        time.sleep(0.02)


def memory_mb(pid, field):
    """VmHWM (peak RSS) or VmRSS of /proc/PID/status, in MB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


PYTHON = [sys.executable]      # the interpreter that runs the scanners (--python)
INSTALLED = []                 # the pip-installed command (--installed)


def scanner_command(name, lone_dir):
    if name == "fast":
        return PYTHON + [NETSNOOP, "--procs", "--json", "--backend", "fast"]
    if name == "installed":
        return INSTALLED + ["--procs", "--json", "--backend", "fast"]
    if name == "python":
        return PYTHON + ["-I", os.path.join(lone_dir, "netsnoop.py"), "--procs",
                         "--json", "--backend", "python"]
    return PYTHON + ["-I", "-c", NAIVE]


def start_scanner(name, lone_dir, out_path):
    out = open(out_path, "w")
    proc = subprocess.Popen(scanner_command(name, lone_dir), stdout=out,
                            stderr=subprocess.PIPE, universal_newlines=True)
    out.close()
    line = proc.stderr.readline()       # "...watching..." once it is ready
    if "watching" not in line:
        proc.kill()
        raise SystemExit("%s did not start: %s%s" % (name, line, proc.stderr.read()))
    return proc


def spawn_marked(tag, per_lifetime):
    """Spawn marked sleeps at RATE/s, interleaving lifetimes; -> {marker: (spawn time, arg)}."""
    spawned, children = {}, []
    period = 1.0 / RATE
    order = [(ms, i) for i in range(per_lifetime) for ms in LIFETIMES_MS]
    start = time.monotonic()
    for n, (ms, i) in enumerate(order):
        delay = start + n * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        marker = "nsbench-%s-%dms-%d" % (tag, ms, i)
        arg = "%g" % (ms / 1000.0)
        spawned[marker] = (time.time(), arg, ms)
        children.append(subprocess.Popen([marker, arg], executable=SLEEP))
        for child in children[:]:
            if child.poll() is not None:
                children.remove(child)
    for child in children:
        child.wait()
    return spawned


def score(events_path, spawned):
    """-> ({lifetime ms: fraction caught with full cmdline}, [latencies ms])."""
    first = {}
    with open(events_path) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            args = ev.get("cmdline") or []
            if args and args[0] in spawned and args[0] not in first \
                    and args[1:] == [spawned[args[0]][1]]:
                first[args[0]] = ev["time"]
    caught, latencies = {}, []
    for ms in LIFETIMES_MS:
        mine = [m for m, v in spawned.items() if v[2] == ms]
        hits = [m for m in mine if m in first]
        caught[ms] = len(hits) / float(len(mine))
        latencies.extend((first[m] - spawned[m][0]) * 1000 for m in hits)
    return caught, latencies


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def run_one(name, tag, lone_dir, per_lifetime, idle_seconds, workdir):
    out_path = os.path.join(workdir, "%s.jsonl" % tag)
    proc = start_scanner(name, lone_dir, out_path)
    life_peak = float("nan")
    try:
        time.sleep(0.5)                             # after start-up
        peak_known = reset_peak_rss(proc.pid)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        spawned = spawn_marked(tag, per_lifetime)
        time.sleep(0.3)                             # let the last reports land
        load_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        time.sleep(0.5)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        rss = memory_mb(proc.pid, "VmHWM") if peak_known else float("nan")
        rss_now = memory_mb(proc.pid, "VmRSS")
    finally:
        life_peak = stop_scanner(proc)
    caught, latencies = score(out_path, spawned)
    return {"caught": caught, "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99), "load_cpu": 100 * load_cpu,
            "idle_cpu": 100 * idle_cpu, "rss": rss, "rss_now": rss_now,
            "rss_life": life_peak}


def median_of(results, key, sub=None):
    values = [r[key][sub] if sub is not None else r[key] for r in results]
    return statistics.median(values)


def print_table(by_scanner, rounds, per_lifetime, idle_seconds):
    print("\nnetsnoop --procs bench: %d round(s), %d spawns per lifetime at %d/s, "
          "1,000 idle extra processes, idle %.0f s; medians; scanners run by %s" % (
              rounds, per_lifetime, RATE, idle_seconds, PYTHON[0]))
    head = "%-22s" % "scanner" + "".join("%8s" % ("%dms" % ms) for ms in LIFETIMES_MS) + \
        "%9s%9s%10s%10s%9s%9s%9s" % ("p50 ms", "p99 ms", "CPU load", "CPU idle", "RSS run",
                                     "RSS end", "RSS life")
    print(head)
    print("-" * len(head))
    labels = {"fast": "fast (C, cffi)", "python": "python (-I lone copy)",
              "installed": "installed (pip, fast)", "naive": "naive /proc 100 ms"}
    for name, results in by_scanner.items():
        cells = "".join("%7.1f%%" % (100 * median_of(results, "caught", ms))
                        for ms in LIFETIMES_MS)
        print("%-22s%s%9.1f%9.1f%9.2f%%%9.2f%%%9.1f%9.1f%9.1f" % (
            labels[name], cells, median_of(results, "p50"), median_of(results, "p99"),
            median_of(results, "load_cpu"), median_of(results, "idle_cpu"),
            median_of(results, "rss"), median_of(results, "rss_now"),
            median_of(results, "rss_life")))
    print("caught = reported with the full command line; CPU = utime+stime of the "
          "scanner (% of one core);\nRSS in MB: run = peak after start-up (VmHWM reset "
          "once watching), end = VmRSS at the end,\nlife = peak of the whole life, "
          "start-up included (ru_maxrss)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (< 60 s)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3, quick 1)")
    parser.add_argument("--scanners", default="fast,python,naive")
    parser.add_argument("--isolated", action="store_true",
                        help="as root: run in a private PID namespace (unshare -p -f "
                             "--mount-proc) so other users of the machine do not count")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the scanners (default: this one)")
    parser.add_argument("--installed", metavar="COMMAND",
                        help="also bench this pip-installed netsnoop command (e.g. "
                        "VENV/bin/netsnoop of a venv made by --python)")
    args = parser.parse_args()
    PYTHON[:] = [args.python]
    names = args.scanners.split(",")
    if args.installed:
        INSTALLED[:] = [os.path.abspath(args.installed)]
        if "installed" not in names:
            names.insert(1, "installed")
    if args.isolated and os.environ.get("NSBENCH_IN_NS") != "1":
        os.environ["NSBENCH_IN_NS"] = "1"
        os.execvp("unshare", ["unshare", "-p", "-f", "--mount-proc", sys.executable,
                              os.path.abspath(__file__)] + sys.argv[1:])
    rounds = args.rounds or (1 if args.quick else 3)
    per_lifetime = 50 if args.quick else 250
    idle_seconds = 4.0 if args.quick else 15.0
    workdir = tempfile.mkdtemp(prefix="nsbench-")
    lone_dir = os.path.join(workdir, "lone")
    os.mkdir(lone_dir)
    shutil.copy(NETSNOOP, lone_dir)                 # no _fastscan*.so beside it
    farm = subprocess.Popen([sys.executable, "-c", IDLE_FARM, "1000"],
                            stdout=subprocess.PIPE, universal_newlines=True,
                            start_new_session=True)
    by_scanner = {name: [] for name in names}
    try:
        farm.stdout.readline()
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                result = run_one(name, "r%d%s" % (r, name), lone_dir, per_lifetime,
                                 idle_seconds, workdir)
                by_scanner[name].append(result)
                sys.stderr.write("round %d %-6s %s\n" % (r, name, json.dumps(result)))
    finally:
        os.killpg(farm.pid, signal.SIGTERM)
        farm.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(by_scanner, rounds, per_lifetime, idle_seconds)
    if os.environ.get("NSBENCH_IN_NS") == "1":
        print("(in a private PID namespace: other processes on the machine are not seen, "
              "but their execs still wake inotify)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
