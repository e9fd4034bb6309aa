#!/usr/bin/env python3
"""Write the README's examples from real runs of netsnoop.py.

    tools/readme_examples.py            rewrite README.md's example blocks from runs now
    tools/readme_examples.py --check    only say which blocks a run now disagrees with (status 1)
    tools/readme_examples.py --show N   print what example N's run gives, README untouched
    tools/readme_examples.py --force    rewrite every block, even where only clocks differ

Each example in README.md sits between two markers:

    <!-- example: NAME -->
    ```
    $ python3 netsnoop.py ...            the command, exactly as it was run (from the
                                         repository's top directory)
    ...                                  what it printed
    ```
    <!-- /example -->

The tab examples and the session screen read the captured namespace tree
(fixtures/netns_live, made by tools/capture_fixtures.py --netns) through --proc, so
they are the same on every machine but for the clock.  The process feed is a real
run: it watches while this script starts a few processes, one of them in a new PID
namespace (as root; without unshare that one is left out and the block differs).
A block is rewritten only when the run differs from it in more than its clock,
PIDs and counts, so running this twice changes nothing.

tests/test_readme.py runs every example the same way (run_example) and fails when
the README no longer shows what netsnoop prints.
"""

import argparse
import collections
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")
NETSNOOP = os.path.join(ROOT, "netsnoop.py")
TREE = "fixtures/netns_live/proc"           # relative to ROOT, as the README shows it
TREE_PID = "24654"

OPEN = re.compile(r"^<!-- example: (\S+) -->$")
CLOSE = "<!-- /example -->"
CUT = "..."                 # a block's last line when the run printed more than is shown

# kind "once": --once through --proc; `tables` keeps the first N tables (None: all).
# kind "session": the curses screen in a pseudo-terminal of `size` (rows, cols).
# kind "feed": --procs while MEANWHILE runs.
Example = collections.namedtuple("Example", "kind args tables note")

EXAMPLES = collections.OrderedDict([
    ("tcp", Example("once", ["--tab", "tcp"], None, "")),
    ("udp", Example("once", ["--tab", "udp"], None, "")),
    ("arp", Example("once", ["--tab", "arp"], None, "")),
    ("traffic", Example("once", ["--tab", "traffic"], None, "")),
    ("stats", Example("once", ["--tab", "stats"], None, "")),
    ("raw", Example("once", ["--tab", "raw"], None, "")),
    ("icmp", Example("once", ["--tab", "icmp"], 2, "")),
    ("routing", Example("once", ["--tab", "routing"], None, "")),
    ("analysis", Example("once", ["--tab", "analysis"], 2, "")),
    ("procs", Example("once", ["--tab", "procs"], None, "")),
    ("session", Example("session", ["--tab", "traffic"], None,
                        "in an 80x12 terminal, after the first refresh")),
    ("feed", Example("feed", ["--procs", "--filter", r"sleep 0\.[123]5",
                              "--duration", "2"], None,
                     "and meanwhile, in another shell:")),
])
SESSION_SIZE = (12, 80)
# Started one after the other while the feed watches; each is waited for, so the
# lines come in this order.  The sh lives long enough to be seen before its exec.
# (A process of a millisecond, alone after a quiet spell, can be missed: the feed's
# documented limit, so none is here.)
MEANWHILE = (["/bin/sleep", "0.25"],
             ["unshare", "-p", "-f", "sh", "-c", "sleep 0.15; exec /bin/sleep 0.35"])
FEED_SETTLE = 0.3           # after the banner, before the first command


def argv_of(name):
    """The command line of example NAME, as run from ROOT (and shown after `$ `)."""
    ex = EXAMPLES[name]
    if ex.kind == "feed":
        return ["python3", "netsnoop.py"] + ex.args
    once = ["--once"] if ex.kind == "once" else []
    return ["python3", "netsnoop.py", "--proc", TREE, TREE_PID] + once + ex.args


def shell_line(argv):
    return " ".join(shlex.quote(a) for a in argv)


def command_lines(name):
    """The block's first lines: how the example was run, as `$ ` lines."""
    ex = EXAMPLES[name]
    lines = ["$ " + shell_line(argv_of(name)) + ("    # " + ex.note if ex.note else "")]
    if ex.kind == "feed":
        lines.append("$ " + "; ".join(shell_line(argv) for argv in MEANWHILE))
    return lines


def real_argv(name):
    """argv_of(name) with this interpreter for `python3`."""
    return [sys.executable] + argv_of(name)[1:]


def keep_tables(lines, count):
    """The heading, then the first `count` tables (blocks apart by a blank line)."""
    if count is None:
        return lines
    blanks = [i for i, line in enumerate(lines) if line == ""]
    if len(blanks) <= count:
        return lines
    return lines[:blanks[count]] + [CUT]


def run_once(name):
    res = subprocess.run(real_argv(name), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    if res.returncode != 0 or res.stderr:
        raise RuntimeError("%s: status %d: %s" % (name, res.returncode, res.stderr.strip()))
    return keep_tables(res.stdout.rstrip("\n").split("\n"), EXAMPLES[name].tables)


def run_session(name):
    """The screen once traffic shows rates (a delta, after the first refresh)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from ptyterm import PtyTerm         # pyte: a test dependency (requirements-test.txt)
    rows, cols = SESSION_SIZE
    cwd = os.getcwd()
    os.chdir(ROOT)                      # TREE is relative, as the README shows it
    try:
        with PtyTerm(real_argv(name), cols=cols, rows=rows) as term:
            term.wait_for("RX/s", timeout=20)
            screen = None
            while screen != term.text():        # a refresh may arrive in several writes
                screen = term.text()
                term.pump(0.3)
            screen = screen.split("\n")
            term.send("q")
            if term.wait_exit() != 0:
                raise RuntimeError("%s: %s" % (name, term.stderr()))
    finally:
        os.chdir(cwd)
    return screen


def run_feed(name):
    """--procs while MEANWHILE runs; stdout and stderr in the order a terminal shows."""
    feed = subprocess.Popen(real_argv(name), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)
    lines = [feed.stdout.readline().rstrip("\n")]          # the banner: it is watching
    time.sleep(FEED_SETTLE)
    for argv in MEANWHILE:
        subprocess.call(argv)
    lines += feed.stdout.read().rstrip("\n").split("\n")
    if feed.wait(30) != 0:
        raise RuntimeError("%s: status %d: %s" % (name, feed.returncode, "\n".join(lines)))
    return lines


def run_example(name):
    """What example NAME prints now: its lines, without the `$ ` command line."""
    run = {"once": run_once, "session": run_session, "feed": run_feed}[EXAMPLES[name].kind]
    return run(name)


# --- README blocks ------------------------------------------------------------

def read_blocks(text):
    """README text -> OrderedDict NAME -> (start, end, lines): lines[start:end] is the
    fenced block between the markers, the lines inside the fence."""
    lines = text.split("\n")
    blocks = collections.OrderedDict()
    for i, line in enumerate(lines):
        m = OPEN.match(line)
        if not m:
            continue
        end = lines.index(CLOSE, i)
        if lines[i + 1] != "```" or lines[end - 1] != "```":
            raise ValueError("example %s: a ``` fence must follow and precede the markers"
                             % m.group(1))
        blocks[m.group(1)] = (i + 2, end - 1, lines[i + 2:end - 1])
    return lines, blocks


def without_clock(name, lines):
    """Lines with what changes from run to run masked: the clock (and, for the feed,
    every number), so an unchanged README is left alone."""
    if EXAMPLES[name].kind == "feed":
        return [re.sub(r"\d+", "N", line) for line in lines]
    return [re.sub(r"\d\d:\d\d:\d\d", "HH:MM:SS", line) for line in lines]


def fresh_block(name):
    return command_lines(name) + run_example(name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; status 1 on drift")
    p.add_argument("--show", metavar="NAME", help="print example NAME as a run gives it now")
    p.add_argument("--force", action="store_true",
                   help="rewrite every block, even where only clocks, PIDs and counts differ")
    args = p.parse_args(argv)
    if args.show:
        print("\n".join(fresh_block(args.show)))
        return 0
    with open(README) as f:
        lines, blocks = read_blocks(f.read())
    unknown = sorted(set(blocks) - set(EXAMPLES))
    absent = sorted(set(EXAMPLES) - set(blocks))
    if unknown or absent:
        p.error("README examples unknown here: %s; not in the README: %s" % (unknown, absent))
    changed = []
    for name, (start, end, old) in reversed(list(blocks.items())):
        new = fresh_block(name)
        if (args.force and new != old) or without_clock(name, new) != without_clock(name, old):
            changed.append(name)
            lines[start:end] = new
    for name in reversed(changed):
        print("%s: %s" % ("differs" if args.check else "rewritten", name))
    if args.check:
        return 1 if changed else 0
    if changed:
        with open(README, "w") as f:
            f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
