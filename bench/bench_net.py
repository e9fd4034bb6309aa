#!/usr/bin/env python3
"""Benchmark: `netsnoop.py PID --once --tab tcp --json` against `ss -tanp`.

    sudo python3 bench/bench_net.py [--sockets 20000] [--runs 15] [--quick]

Builds a private network namespace (`unshare -n`) in which a helper
process holds N TCP sockets open (listeners, connected pairs on 127.0.0.1
and ::1 with explicit ports, and some TIME_WAIT), then times, in
alternating rounds:

  netsnoop   python netsnoop.py PID --once --tab tcp --json   (from here)
  ss+nsenter nsenter --net=/proc/PID/ns/net ss -tanp         (from here)
  nsenter    nsenter --net=/proc/PID/ns/net true             (its exec cost)
  ss         ss -tanp, started by a runner already in the namespace

  netsnoop -I -S   the same as netsnoop, without site start-up

Every command's output goes to a pipe that is drained.  It prints the
median wall and CPU times, the median per-round ratios netsnoop/ss (the
target is <= 1.0 against ss run inside the namespace) and where netsnoop's
time goes, measured in-process around netsnoop's own functions.  The
machine is shared: figures are noisy, hence medians of alternating runs.

ss -p reads the fd links of every process on the host, so other processes
holding many fds (another run of this benchmark) slow ss down: run it alone.
netsnoop is started with this interpreter (sys.executable), not through a
`python3` shim (pyenv's costs ~50 ms a run).
"""

import argparse
import errno
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NETSNOOP = os.path.join(REPO, "netsnoop.py")
PYTHON = sys.executable          # the real interpreter: a pyenv shim adds ~50 ms a run

LISTEN_PORT = 5000
FIRST_CLIENT_PORT = 10000
PORTS_PER_ADDRESS = 50000        # 10000..59999 on 127.0.0.1, then 127.0.1.1, ...
ACCEPT_BATCH = 1000              # well under the accept backlog (somaxconn 4096)


# ---------------------------------------------------------------------------
# The socket mix
# ---------------------------------------------------------------------------

def socket_plan(total):
    """How many of each kind make `total` rows of tcp+tcp6.

    1% TIME_WAIT (no inode, held by nobody), a few listeners, the rest
    ESTABLISHED pairs (both ends held by the helper), one pair in ten on ::1.
    """
    listeners = 10
    time_wait = total // 100
    pairs = max(0, (total - listeners - 2 - time_wait) // 2)
    pairs6 = pairs // 10
    return {"listeners": listeners, "time_wait": time_wait,
            "pairs4": pairs - pairs6, "pairs6": pairs6}


def client_address(i, family):
    """The i-th explicit client (address, port): binding port 0 slows down as ports fill."""
    port = FIRST_CLIENT_PORT + i % PORTS_PER_ADDRESS
    if family == socket.AF_INET6:
        if i >= PORTS_PER_ADDRESS:
            raise ValueError("too many ::1 clients")
        return ("::1", port)
    return ("127.0.%d.1" % (i // PORTS_PER_ADDRESS), port)


def connect_pairs(listener, family, server, start, count, held):
    """Connect `count` clients to `listener`, accepting in batches; keep both ends."""
    done = 0
    while done < count:
        batch = min(ACCEPT_BATCH, count - done)
        clients = []
        for i in range(start + done, start + done + batch):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind(client_address(i, family))
            c.connect(server)
            clients.append(c)
        for c in clients:
            held.append(c)
            held.append(listener.accept()[0])
        done += batch
    return start + done


def make_time_wait(listener, server, start, count):
    """Close the client end first: the client side sits in TIME_WAIT for 60 s."""
    held = []
    end = connect_pairs(listener, socket.AF_INET, server, start, count, held)
    for i in range(0, len(held), 2):
        held[i].close()
    time.sleep(0.2)                 # FIN_WAIT2 -> wait for the server end's FIN
    for i in range(1, len(held), 2):
        held[i].close()
    return end


def raise_fd_limit(needed):
    """Make room for `needed` fds; without CAP_SYS_RESOURCE only up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(needed, hard)))
    except (ValueError, OSError):
        if needed > hard:
            raise SystemExit("bench_net: the helper needs %d open files but the hard "
                             "limit is %d (no CAP_SYS_RESOURCE): use fewer --sockets"
                             % (needed, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def helper_main(total):
    """Run inside `unshare -n`: bring up lo, build the sockets, hold them until stdin closes."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    plan = socket_plan(total)
    raise_fd_limit(plan["listeners"] + 2 * (plan["pairs4"] + plan["pairs6"]) + 64)
    held = []
    listeners = []
    for n in range(plan["listeners"]):
        family, host = (socket.AF_INET6, "::1") if n % 5 == 4 else (socket.AF_INET, "127.0.0.1")
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, LISTEN_PORT + n))
        s.listen(4096)
        listeners.append((s, (host, LISTEN_PORT + n)))
        held.append(s)
    lis4, addr4 = listeners[0]
    lis6, addr6 = listeners[4]
    nxt = connect_pairs(lis4, socket.AF_INET, addr4, 0, plan["pairs4"], held)
    nxt = make_time_wait(lis4, addr4, nxt, plan["time_wait"])
    connect_pairs(lis6, socket.AF_INET6, addr6, 0, plan["pairs6"], held)
    sys.stdout.write("READY %d %s\n" % (os.getpid(), json.dumps(plan)))
    sys.stdout.flush()
    sys.stdin.read()                # until the benchmark closes our stdin
    return 0


# ---------------------------------------------------------------------------
# Timing commands
# ---------------------------------------------------------------------------

def timed(argv):
    """Run argv with stdout drained from a pipe -> (seconds, output bytes, cpu seconds).

    cpu is the child's user + system time: less disturbed than wall time
    when other work shares the machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (argv[0], proc.returncode,
                                                    err.decode(errors="replace").strip()))
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, out, cpu


def runner_main():
    """Inside the namespace: run each JSON argv read from stdin, reply with its time."""
    for line in sys.stdin:
        argv = json.loads(line)
        elapsed, out, cpu = timed(argv)
        sys.stdout.write(json.dumps({"seconds": elapsed, "cpu": cpu,
                                     "lines": out.count(b"\n")}) + "\n")
        sys.stdout.flush()
    return 0


class Namespace(object):
    """The helper holding the sockets (its PID names the namespace) and a runner inside it."""

    def __init__(self, total):
        self.helper = subprocess.Popen(
            ["unshare", "-n", PYTHON, os.path.abspath(__file__), "--helper", str(total)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        ready = self.helper.stdout.readline().split(None, 2)
        if len(ready) != 3 or ready[0] != "READY":
            self.close()
            raise RuntimeError("the namespace helper did not start")
        self.pid = int(ready[1])
        self.plan = json.loads(ready[2])
        self.netns = "--net=/proc/%d/ns/net" % self.pid
        self.runner = subprocess.Popen(
            ["nsenter", self.netns, PYTHON, os.path.abspath(__file__), "--runner"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)

    def run_inside(self, argv):
        """-> (seconds, output lines, cpu seconds) of argv run by the runner in the namespace."""
        self.runner.stdin.write(json.dumps(argv) + "\n")
        self.runner.stdin.flush()
        reply = self.runner.stdout.readline()
        if not reply:
            raise RuntimeError("the in-namespace runner died (did %s fail?)" % argv[0])
        reply = json.loads(reply)
        return reply["seconds"], reply["lines"], reply["cpu"]

    def close(self):
        for proc in (getattr(self, "runner", None), self.helper):
            if proc is None:
                continue
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()


def netsnoop_argv(pid, *extra):
    return [PYTHON] + list(extra) + [NETSNOOP, str(pid), "--once", "--tab", "tcp", "--json"]


def count_sockets(ns):
    """Sockets in the namespace as netsnoop and as ss count them, taken back to back."""
    out = timed(netsnoop_argv(ns.pid))[1]
    tab = json.loads(out.decode())["tabs"]["tcp"]
    owned = sum(1 for s in tab["sockets"] if s["owned"])
    ss_lines = ns.run_inside(["ss", "-tanH"])[1]
    return len(tab["sockets"]), ss_lines, owned


def host_fds():
    """-> (open fds of all processes, processes): what ss -p reads besides the helper's."""
    total = procs = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % name
        try:
            count = os.stat(fd_dir).st_size or len(os.listdir(fd_dir))   # size: Linux 6.2+
        except OSError:
            continue                # gone, or a kernel thread
        total += count
        procs += 1
    return total, procs


def time_rounds(ns, runs):
    """Alternating rounds (the order rotates each round) -> ({name: [seconds]}, {name: [cpu]})."""
    def here(argv):
        def run():
            elapsed, _, cpu = timed(argv)
            return elapsed, cpu
        return run

    def inside(argv):
        def run():
            elapsed, _, cpu = ns.run_inside(argv)
            return elapsed, cpu
        return run

    cmds = [
        ("netsnoop", here(netsnoop_argv(ns.pid))),
        ("ss+nsenter", here(["nsenter", ns.netns, "ss", "-tanp"])),
        ("nsenter", here(["nsenter", ns.netns, "true"])),
        ("ss", inside(["ss", "-tanp"])),
        ("netsnoop -I -S", here(netsnoop_argv(ns.pid, "-I", "-S"))),
    ]
    times = {name: [] for name, _ in cmds}
    cpus = {name: [] for name, _ in cmds}
    for r in range(runs):
        for k in range(len(cmds)):
            name, fn = cmds[(r + k) % len(cmds)]
            elapsed, cpu = fn()
            times[name].append(elapsed)
            cpus[name].append(cpu)
    return times, cpus


# ---------------------------------------------------------------------------
# Where netsnoop's time goes
# ---------------------------------------------------------------------------

PROBE = """
import sys, time
path = sys.argv[1]
with open(path, "rb") as f:
    src = f.read()
t0 = time.perf_counter()
code = compile(src, path, "exec")
t1 = time.perf_counter()
exec(code, {"__name__": "netsnoop_probe", "__file__": path})
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def best_of(fn, repeat):
    """Median seconds of fn() over `repeat` calls, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def startup_costs(repeat):
    """Bare interpreter start, compile of netsnoop.py, and its module body (stdlib imports)."""
    bare = statistics.median(timed([PYTHON, "-c", "pass"])[0] for _ in range(repeat))
    bare_is = statistics.median(timed([PYTHON, "-I", "-S", "-c", "pass"])[0]
                                for _ in range(repeat))
    compiles, bodies = [], []
    for _ in range(repeat):
        out = timed([PYTHON, "-c", PROBE, NETSNOOP])[1]
        c, b = out.split()
        compiles.append(float(c))
        bodies.append(float(b))
    return bare, bare_is, statistics.median(compiles), statistics.median(bodies)


def in_process_costs(pid, repeat):
    """Time netsnoop's own functions on the namespace (imported from the repo).

    The parts are timed one by one; run_once runs them as the command does
    (the fd scan in a thread, overlapping the reads), so it can be less
    than their sum.
    """
    sys.path.insert(0, REPO)
    import netsnoop
    procfs = netsnoop.ProcFS("/proc")
    names = netsnoop.SOCKET_FILES["tcp"]
    costs = {}
    costs["read"], texts = best_of(lambda: [procfs.net_read(pid, n) for n in names], repeat)
    costs["parse"], parsed = best_of(
        lambda: [netsnoop.parse_sockets(t, n) for t, n in zip(texts, names)], repeat)
    costs["fd scan"], (held, _) = best_of(lambda: procfs.socket_inodes(pid), repeat)
    records = [s for recs in parsed for s in recs]
    if hasattr(netsnoop, "SocketRows"):
        costs["json rows"], _ = best_of(
            lambda: netsnoop.SocketRows(records, held).json_text(), repeat)
    else:                               # the code before SocketRows: dicts, then json
        costs["json rows"], _ = best_of(lambda: json.dumps(
            [netsnoop.socket_dict(s, s.inode in held) for s in records]), repeat)
    costs["run_once"], _ = best_of(lambda: run_once_quiet(netsnoop, pid), repeat)
    return costs


def run_once_quiet(netsnoop, pid):
    """netsnoop.run_once with stdout on /dev/null (what the timed runs do, minus the pipe)."""
    args = netsnoop.parse_args([str(pid), "--once", "--tab", "tcp", "--json"])
    saved = sys.stdout
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        try:
            return netsnoop.run_once(args, netsnoop.ProcFS("/proc"))
        finally:
            sys.stdout = saved


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def ms(seconds):
    return "%7.1f ms" % (seconds * 1000)


def ratios(times, other, minus=None, name="netsnoop"):
    """Median of per-round name / other (optionally other minus `minus` of that round)."""
    out = []
    for i, t in enumerate(times[name]):
        base = times[other][i] - (times[minus][i] if minus else 0)
        if base > 0:
            out.append(t / base)
    return statistics.median(out) if out else float("nan")


def report(times, cpus, ns, counts, fds, startup, inproc, out=sys.stdout):
    w = out.write
    med = {name: statistics.median(v) for name, v in times.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    w("sockets: netsnoop %d, ss %d (%s); owned by the helper: %d\n"
      % (counts[0], counts[1], "equal" if counts[0] == counts[1] else "DIFFERENT",
         counts[2]))
    w("plan: %s\n" % json.dumps(ns.plan, sort_keys=True))
    w("python: %s\n" % PYTHON)
    w("host: %d / %d open fds in %d processes before / after the rounds "
      "(ss -p reads them all; the helper holds %d)\n"
      % (fds[0][0], fds[1][0], fds[1][1], len(os.listdir("/proc/%d/fd" % ns.pid))))
    w("median of %d alternating runs (shared 2-core machine: noisy)     wall       cpu\n"
      % len(times["netsnoop"]))
    for label, name in (("netsnoop --once --tab tcp --json", "netsnoop"),
                        ("  the same with python3 -I -S", "netsnoop -I -S"),
                        ("nsenter --net=... ss -tanp", "ss+nsenter"),
                        ("nsenter --net=... true", "nsenter"),
                        ("ss -tanp (run inside the netns)", "ss")):
        w("  %-40s %s %s\n" % (label, ms(med[name]), ms(cpu[name])))
    w("  %-40s %s\n" % ("nsenter+ss minus nsenter true", ms(med["ss+nsenter"] - med["nsenter"])))
    w("ratio netsnoop/ss (median of per-round ratios):\n")
    w("  vs ss run inside the netns            %.2f\n" % ratios(times, "ss"))
    w("  vs nsenter+ss                         %.2f\n" % ratios(times, "ss+nsenter"))
    w("  vs nsenter+ss minus nsenter true      %.2f\n"
      % ratios(times, "ss+nsenter", "nsenter"))
    w("  netsnoop -I -S vs ss inside           %.2f\n"
      % ratios(times, "ss", name="netsnoop -I -S"))
    w("  cpu time, median netsnoop / ss        %.2f\n" % (cpu["netsnoop"] / cpu["ss"]))
    bare, bare_is, comp, body = startup
    w("where netsnoop's time goes (medians, in-process parts timed one by one):\n")
    w("  interpreter start-up (-c pass)        %s   (-I -S: %s)\n" % (ms(bare), ms(bare_is)))
    w("  compile netsnoop.py (every run)       %s\n" % ms(comp))
    w("  module body (stdlib imports)          %s\n" % ms(body))
    w("  read /proc/PID/net/tcp+tcp6           %s\n" % ms(inproc["read"]))
    w("  parse_sockets tcp+tcp6                %s\n" % ms(inproc["parse"]))
    w("  fd scan (socket_inodes)               %s\n" % ms(inproc["fd scan"]))
    w("  JSON out (rows to JSON text)          %s\n" % ms(inproc["json rows"]))
    w("  run_once in-process (all of it)       %s\n" % ms(inproc["run_once"]))
    parts = inproc["read"] + inproc["parse"] + inproc["fd scan"] + inproc["json rows"]
    w("  sum of the four parts                 %s   (run_once - sum: overlap/other %+.1f ms)\n"
      % (ms(parts), (inproc["run_once"] - parts) * 1000))
    w("RATIO %.2f\n" % ratios(times, "ss"))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=20000, help="TCP sockets (default 20000)")
    p.add_argument("--runs", type=int, default=15, help="alternating rounds (default 15)")
    p.add_argument("--quick", action="store_true",
                   help="CI mode: 5000 sockets, 5 rounds (well under 30 s)")
    p.add_argument("--helper", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sockets, args.runs = 5000, 5
    if args.sockets < 100 or args.runs < 1:
        p.error("--sockets must be >= 100 and --runs >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.helper is not None:
        return helper_main(args.helper)
    if args.runner:
        return runner_main()
    if os.geteuid() != 0:
        sys.stderr.write("bench_net: needs root (unshare -n, nsenter, ss -p on "
                         "another process); run it with sudo\n")
        return 1
    try:
        ns = Namespace(args.sockets)
    except (OSError, RuntimeError) as err:
        sys.stderr.write("bench_net: cannot build the namespace: %s\n" % err)
        return 1
    try:
        counts = count_sockets(ns)
        fds_before = host_fds()
        times_, cpus = time_rounds(ns, args.runs)
        fds_after = host_fds()
        startup = startup_costs(max(3, args.runs // 2))
        inproc = in_process_costs(ns.pid, max(3, args.runs // 2))
        report(times_, cpus, ns, counts, (fds_before, fds_after), startup, inproc)
    finally:
        ns.close()
    return 0 if counts[0] == counts[1] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as err:
        if err.errno == errno.EPIPE:
            sys.exit(0)
        raise
