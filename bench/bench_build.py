#!/usr/bin/env python3
"""Benchmark of netsnoop --procs on a real build, against the kernel's own record.

    python3 bench/bench_build.py SRC_DIR          a configure script + Makefile (zlib, GNU hello)
    python3 bench/bench_build.py                  a generated project (sed, cat, mkdir, gcc, as, ld)
    python3 bench/bench_build.py --quick SRC_DIR  one round, 20 lone spawns

Needs root (perf record -a) and perf.  Each scanner -- netsnoop's `fast` backend,
its `python` backend run from a lone copy of netsnoop.py, and the naive poller of
bench_procs.py (a /proc listing every 100 ms) -- runs as `nobody`, as a user would
run it, while:
1. build: a fresh copy of SRC_DIR runs `./configure && make -j2` (both cores busy)
   under `perf record -e sched:sched_process_exec -e sched:sched_process_fork -a`.
   Every exec of the build's process tree (followed through the fork records) must
   show in the feed under its PID with the right program: the exec'd file's name
   as comm, or as the base name of argv[0] (argv[1] for a script run by its
   interpreter).  An event naming a program that PID never ran is counted wrong.
   Partial records (comm only, no command line) are counted apart.
2. lone: a fork and exec of /bin/echo after 1.2 s of quiet, 50 times (the cron
   job case); caught = an event with the child's PID and the program echo.
3. CPU (utime+stime, % of one core) of the scanner during the build, and idle
   (no spawns) with 1,000 extra processes present.
Scanners alternate round by round; the machine may be shared, so compare the
rows of one run, not figures of different runs.
"""
import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_procs  # noqa: E402  -- the scanners, CPU and stop code are shared

LONE_QUIET = 1.2
ECHO = "/bin/echo"

# A generated project for machines without a source tree at hand: a configure
# script and a Makefile that run what a real one does (sh, sed, cat, mkdir, tee,
# mv, rm, gcc -> cc1, as, collect2, ld, ar).
GEN_CONFIGURE = r'''#!/bin/sh
set -e
echo "checking for a C compiler..."
CC=${CC:-cc}
mkdir -p conftest.dir
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
    printf 'int main(void) { return %d - %d; }\n' "$i" "$i" > conftest.dir/t$i.c
    $CC -c conftest.dir/t$i.c -o conftest.dir/t$i.o
    $CC conftest.dir/t$i.o -o conftest.dir/t$i
    ./conftest.dir/t$i
    echo "checking feature $i... yes" | tee -a config.log >/dev/null
    grep -c feature config.log >/dev/null
done
rm -rf conftest.dir
sed -e "s|@CC@|$CC|" Makefile.in > Makefile.tmp
mv Makefile.tmp Makefile
cat config.log | wc -l > /dev/null
echo "configure done"
'''

GEN_MAKEFILE_IN = r'''CC = @CC@
SRCS = $(wildcard src/*.c)
OBJS = $(SRCS:src/%.c=build/%.o)
all: build/libgen.a build/prog
build/%.o: src/%.c
	@mkdir -p build
	$(CC) -O1 -c $< -o $@
build/libgen.a: $(OBJS)
	ar rcs $@ $(OBJS)
build/prog: build/libgen.a
	$(CC) -o $@ build/main.o build/libgen.a
	sed -n 1p src/main.c | cat > build/stamp
'''


def generate_project(path, units=24):
    """A small configure + Makefile project in PATH (see GEN_CONFIGURE)."""
    os.makedirs(os.path.join(path, "src"))
    with open(os.path.join(path, "configure"), "w") as f:
        f.write(GEN_CONFIGURE)
    os.chmod(os.path.join(path, "configure"), 0o755)
    with open(os.path.join(path, "Makefile.in"), "w") as f:
        f.write(GEN_MAKEFILE_IN)
    for i in range(units):
        with open(os.path.join(path, "src", "u%d.c" % i), "w") as f:
            f.write("int u%d(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * %d;"
                    " return s; }\n" % (i, i + 1))
    with open(os.path.join(path, "src", "main.c"), "w") as f:
        f.write("/* main */\nint u0(int);\nint main(void) { return u0(0); }\n")


# --- the kernel's record -----------------------------------------------------------

_FORK = re.compile(r"sched:sched_process_fork: comm=.* pid=(\d+) child_comm=.* child_pid=(\d+)")
_EXEC = re.compile(r"sched:sched_process_exec: filename=(.*) pid=(\d+) old_pid=(\d+)")


class Perf(object):
    """perf record of every fork and exec on the machine, as root."""

    def __init__(self, path):
        self.path = path
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-m", "1024", "-e", "sched:sched_process_exec",
             "-e", "sched:sched_process_fork", "-a", "-o", path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (os.path.exists(path) and os.path.getsize(path) > 0):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("perf record did not start (root and perf needed)")
            time.sleep(0.05)
        time.sleep(0.5)             # its ring buffers set up on every CPU

    def stop(self):
        """-> the text of perf script."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return subprocess.run(["perf", "script", "-i", self.path], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True,
                              errors="replace").stdout


def tree_execs(script_text, root):
    """perf script text -> ([(pid, program base name)] exec'd in root's tree,
    {pid: set of programs it ran or inherited at fork})."""
    tree = {root}
    program = {}
    ran = collections.defaultdict(set)
    execs = []
    for line in script_text.splitlines():
        m = _FORK.search(line)
        if m:
            parent, child = int(m.group(1)), int(m.group(2))
            if parent in tree:
                tree.add(child)
                if parent in program:
                    program[child] = program[parent]
                    ran[child].add(program[parent])
            continue
        m = _EXEC.search(line)
        if m:
            pid = int(m.group(2))
            if pid in tree:
                path = m.group(1).strip()
                name = os.path.basename(path)
                program[pid] = name
                ran[pid].add(name)
                # a partial record may name the file a link leads to (as -> x86_64-linux-gnu-as)
                real = os.path.basename(os.path.realpath(path)) if path.startswith("/") else name
                ran[pid].add(real)
                REAL_NAMES[name] = real
                execs.append((pid, name))
    return execs, ran


def event_names(ev):
    """The program names an event gives: comm, argv[0]'s and argv[1]'s base names."""
    names = set()
    if ev.get("exe") and ev.get("partial"):
        names.add(os.path.basename(ev["exe"]))
    if ev.get("comm"):
        names.add(ev["comm"])
    args = ev.get("cmdline") or []
    for arg in args[:2]:
        names.add(os.path.basename(arg))
    return names


REAL_NAMES = {}     # program name in perf's record -> the name of the file it links to


def names_program(names, program):
    """comm is cut at 15 bytes; a partial record's exe names a link's target."""
    return program in names or program[:15] in names or REAL_NAMES.get(program) in names


def score_build(events, execs, ran):
    """-> dict: execs, caught (full record, right program), partial (comm only,
    right program), wrong (a program the PID never ran), missed."""
    by_pid = collections.defaultdict(list)
    for ev in events:
        if ev.get("event") in ("new", "exec") and ev.get("pid") is not None:
            by_pid[ev["pid"]].append(ev)
    caught = partial = 0
    missed = collections.Counter()
    causes = collections.Counter()
    for pid, program in execs:
        full = [ev for ev in by_pid.get(pid, ()) if ev.get("cmdline")]
        part = [ev for ev in by_pid.get(pid, ()) if ev.get("partial")]
        if any(names_program(event_names(ev), program) for ev in full):
            caught += 1
        elif any(names_program(event_names(ev), program) for ev in part):
            partial += 1
        else:
            missed[program] += 1
            # the PID reported under another program: seen at fork (or an earlier exec),
            # its exec not read in time; never reported: gone before its first read
            causes["exec lost, pid seen" if by_pid.get(pid) else "never read"] += 1
    wrong = []
    for pid, evs in by_pid.items():
        if pid not in ran:
            continue                # not of the build's tree
        for ev in evs:
            names = event_names(ev)
            if names and not any(names_program(names, p) for p in ran[pid]):
                wrong.append("pid %d ran %s, reported %s" % (
                    pid, "/".join(sorted(ran[pid])), json.dumps(ev)))
    programs = set(program for _, program in execs)
    anonymous = sum(1 for ev in events if ev.get("partial") and ev.get("pid") is None
                    and names_program(event_names(ev), os.path.basename(ev.get("exe") or ""))
                    and any(names_program(event_names(ev), p) for p in programs))
    return {"execs": len(execs), "caught": caught, "partial": partial, "wrong": len(wrong),
            "wrong_events": wrong[:5], "pid_null": anonymous, "missed": dict(missed.most_common(8)),
            "causes": dict(causes)}


def cpu_seconds(pid):
    """CPU time of PID to the nanosecond (schedstat), where the stat ticks are 10 ms."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return bench_procs.cpu_seconds(pid)


# --- runs ----------------------------------------------------------------------------

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


BASELINE = {}      # "dir": a netsnoop.py (and its built .so) to compare with: --baseline


def scanner_command(name, lone_dir):
    """fast, python, naive; base-fast and base-python run the --baseline copy."""
    if name.startswith("base-"):
        base = BASELINE["dir"]
        if name == "base-fast":
            return bench_procs.PYTHON + [os.path.join(base, "netsnoop.py"), "--procs", "--json",
                                         "--backend", "fast"]
        return bench_procs.PYTHON + ["-I", os.path.join(BASELINE["lone"], "netsnoop.py"),
                                     "--procs", "--json", "--backend", "python"]
    return bench_procs.scanner_command(name, lone_dir)


def start_scanner(name, lone_dir, out_path):
    out = open(out_path, "w")
    cmd = AS_NOBODY + scanner_command(name, lone_dir)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE,
                            universal_newlines=True, cwd="/")
    out.close()
    line = proc.stderr.readline()
    if "watching" not in line:
        proc.kill()
        raise SystemExit("%s did not start: %s%s" % (name, line, proc.stderr.read()))
    return proc


def stop_scanner(proc):
    bench_procs.stop_scanner(proc)
    return proc.stderr.read()


def read_events(path):
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def run_build(name, src, lone_dir, workdir, tag):
    """One build watched by scanner NAME under perf -> score and CPU."""
    build_dir = os.path.join(workdir, "build-" + tag)
    shutil.copytree(src, build_dir, symlinks=True)
    out_path = os.path.join(workdir, tag + ".jsonl")
    proc = start_scanner(name, lone_dir, out_path)
    perf = None
    try:
        perf = Perf(os.path.join(workdir, tag + ".perf"))   # stopped even if the scanner fails
        time.sleep(0.5)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        build = subprocess.Popen(["/bin/sh", "-c", "./configure && make -j2"], cwd=build_dir,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status = build.wait()
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        time.sleep(0.5)                 # the last reports land
    finally:
        summary = stop_scanner(proc)
        text = perf.stop() if perf is not None else ""
    if status != 0:
        raise SystemExit("the build failed in %s (status %d)" % (build_dir, status))
    shutil.rmtree(build_dir, ignore_errors=True)
    execs, ran = tree_execs(text, build.pid)
    result = score_build(read_events(out_path), execs, ran)
    result["cpu"] = 100 * cpu
    result["summary"] = summary.strip().splitlines()[-1] if summary.strip() else ""
    return result


def run_lone(name, lone_dir, workdir, tag, count):
    """COUNT lone /bin/echo spawns, LONE_QUIET s apart -> caught, partial, idle CPU."""
    out_path = os.path.join(workdir, tag + ".jsonl")
    proc = start_scanner(name, lone_dir, out_path)
    pids = []
    try:
        time.sleep(2.0)                 # the scanner's start-up is over
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(4.0)
        idle = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        for _ in range(count):
            time.sleep(LONE_QUIET)
            child = subprocess.Popen([ECHO, "lone"], stdout=subprocess.DEVNULL)
            pids.append(child.pid)
            child.wait()
        time.sleep(0.5)
    finally:
        stop_scanner(proc)
    by_pid = collections.defaultdict(list)
    for ev in read_events(out_path):
        by_pid[ev.get("pid")].append(ev)
    caught = partial = 0
    for pid in pids:
        evs = by_pid.get(pid, ())
        if any(ev.get("cmdline") and names_program(event_names(ev), "echo") for ev in evs):
            caught += 1
        elif any(ev.get("partial") and names_program(event_names(ev), "echo") for ev in evs):
            partial += 1
    return {"lone": count, "lone_caught": caught, "lone_partial": partial,
            "idle_cpu": 100 * idle}


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def print_table(results, rounds, lone_count, src_name):
    print("\nnetsnoop --procs on a real build (%s: ./configure && make -j2), feeds run as "
          "nobody,\nscored against perf sched_process_exec/fork; %d round(s) alternating; "
          "lone = /bin/echo after %.1f s quiet x %d" % (src_name, rounds, LONE_QUIET,
                                                        lone_count))
    head = "%-22s%7s%9s%9s%9s%7s%10s%9s%10s%10s" % (
        "scanner", "execs", "caught", "+partial", "pid null", "wrong", "lone", "+partial",
        "CPU build", "CPU idle")
    print(head)
    print("-" * len(head))
    labels = {"fast": "fast (C, cffi)", "python": "python (-I lone copy)",
              "naive": "naive /proc 100 ms", "base-fast": "baseline fast",
              "base-python": "baseline python"}
    for name, runs in results.items():
        for r in runs:
            b = r["build"]
            lo = r["lone"]
            print("%-22s%7d%8.1f%%%8.1f%%%9d%7d%6d/%-3d%9d%9.2f%%%9.2f%%" % (
                labels.get(name, name), b["execs"], 100.0 * b["caught"] / max(1, b["execs"]),
                100.0 * (b["caught"] + b["partial"]) / max(1, b["execs"]), b["pid_null"],
                b["wrong"],
                lo["lone_caught"], lo["lone"], lo["lone_caught"] + lo["lone_partial"],
                b["cpu"], lo["idle_cpu"]))
    print("caught = the exec reported under its PID with its command line and the right "
          "program;\n+partial = also counting partial records (program known, no command line) "
          "of the right PID;\npid null = partial records naming one of the build's programs "
          "without a PID (which ran which could not be told);\nCPU = % of one core (idle: "
          "1,000 extra processes)")
    print("misses by program and by cause (all rounds):")
    for name, runs in results.items():
        missed = collections.Counter()
        causes = collections.Counter()
        for r in runs:
            missed.update(r["build"]["missed"])
            causes.update(r["build"].get("causes", {}))
        print("  %-11s %s" % (name, ", ".join("%s %d" % kv for kv in missed.most_common(8))
                                 or "none"))
        print("  %-11s causes: %s" % ("", ", ".join("%s %d" % kv for kv in causes.most_common())
                                      or "none"))
        for r in runs:
            print("           summary: %s" % r["build"]["summary"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", nargs="?", help="a project with ./configure and a Makefile "
                        "(copied, never touched); default: a generated one")
    parser.add_argument("--quick", action="store_true", help="one round, 20 lone spawns")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    parser.add_argument("--lone", type=int, help="lone spawns per scanner (default 50)")
    parser.add_argument("--scanners", default="fast,python,naive")
    parser.add_argument("--no-lone", action="store_true", help="the build only")
    parser.add_argument("--baseline", metavar="DIR", help="another netsnoop.py (with its "
                        "_fastscan_cffi*.so built) to run as base-fast and base-python")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("perf"):
        raise SystemExit("bench_build: needs root and perf (perf record -a)")
    rounds = args.rounds or (1 if args.quick else 2)
    lone_count = args.lone or (20 if args.quick else 50)
    names = args.scanners.split(",")
    if args.baseline:
        names += ["base-fast", "base-python"]
    workdir = tempfile.mkdtemp(prefix="nsbuild-")
    os.chmod(workdir, 0o755)            # the scanners run as nobody
    lone_dir = os.path.join(workdir, "lone")
    os.mkdir(lone_dir)
    shutil.copy(bench_procs.NETSNOOP, lone_dir)
    os.chmod(os.path.join(lone_dir, "netsnoop.py"), 0o644)
    if args.baseline:
        BASELINE["dir"] = os.path.abspath(args.baseline)
        BASELINE["lone"] = os.path.join(workdir, "base-lone")
        os.mkdir(BASELINE["lone"])
        shutil.copy(os.path.join(BASELINE["dir"], "netsnoop.py"), BASELINE["lone"])
    if args.src:
        src, src_name = os.path.abspath(args.src), os.path.basename(os.path.abspath(args.src))
    else:
        src, src_name = os.path.join(workdir, "gen"), "generated project"
        generate_project(src)
    results = collections.OrderedDict((n, []) for n in names)
    farm = None
    try:
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                res = {"build": run_build(name, src, lone_dir, workdir, "r%d%s" % (r, name))}
                sys.stderr.write("round %d %-6s build %s\n" % (r, name, json.dumps(res["build"])))
                results[name].append(res)
            if args.no_lone:
                continue
            farm = subprocess.Popen([sys.executable, "-c", bench_procs.IDLE_FARM, "1000"],
                                    stdout=subprocess.PIPE, universal_newlines=True,
                                    start_new_session=True)
            farm.stdout.readline()
            for name in order:
                lone = run_lone(name, lone_dir, workdir, "r%dlone%s" % (r, name), lone_count)
                sys.stderr.write("round %d %-6s lone %s\n" % (r, name, json.dumps(lone)))
                results[name][r]["lone"] = lone
            os.killpg(farm.pid, signal.SIGTERM)
            farm.wait()
            farm = None
    finally:
        if farm is not None:
            os.killpg(farm.pid, signal.SIGTERM)
            farm.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.no_lone:
        for runs in results.values():
            for r in runs:
                r["lone"] = {"lone": 0, "lone_caught": 0, "lone_partial": 0,
                             "idle_cpu": float("nan")}
    print_table(results, rounds, lone_count, src_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
