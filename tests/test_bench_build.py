"""The build benchmark (bench/bench_build.py): its reading of perf's record and its
scoring, on hand-written perf script lines (the bench itself needs root, perf and a
minute per scanner; run it by hand)."""
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_build  # noqa: E402

# perf script lines as perf 6.x prints them: a build's shell forks a child that
# execs cat; a process outside the build execs ls; make forks a child that execs
# sh, whose child execs as through the /usr/bin/as link.
PERF_TEXT = """\
              sh   100 [000]    10.000001: sched:sched_process_fork: comm=sh pid=100 child_comm=sh child_pid=101
             cat   101 [001]    10.000200: sched:sched_process_exec: filename=/usr/bin/cat pid=101 old_pid=101
            bash   900 [000]    10.000300: sched:sched_process_fork: comm=bash pid=900 child_comm=bash child_pid=901
              ls   901 [000]    10.000400: sched:sched_process_exec: filename=/usr/bin/ls pid=901 old_pid=901
              sh   100 [000]    10.001000: sched:sched_process_fork: comm=sh pid=100 child_comm=sh child_pid=102
            make   102 [001]    10.001100: sched:sched_process_exec: filename=/usr/bin/make pid=102 old_pid=102
            make   102 [001]    10.002000: sched:sched_process_fork: comm=make pid=102 child_comm=make child_pid=103
              sh   103 [000]    10.002100: sched:sched_process_exec: filename=/bin/sh pid=103 old_pid=103
"""


def test_only_the_build_tree_execs_are_ground_truth():
    """Forks are followed from the root: an exec elsewhere on the machine (ls) is not
    the build's; a child inherits its parent's program at fork (make's child)."""
    execs, ran = bench_build.tree_execs(PERF_TEXT, 100)
    assert execs == [(101, "cat"), (102, "make"), (103, "sh")]
    assert 901 not in ran
    assert {"make", "sh"} <= ran[103]


def test_score_counts_right_partial_wrong_and_missed():
    """A full record names the right program; a partial one of the right PID counts
    apart; an event naming a program its PID never ran is wrong; nothing for a PID
    is a miss by program."""
    execs, ran = bench_build.tree_execs(PERF_TEXT, 100)
    events = [
        {"event": "new", "pid": 101, "comm": "cat", "cmdline": ["cat", "x"]},
        {"event": "new", "pid": 102, "comm": None, "cmdline": None, "partial": True,
         "exe": "/usr/bin/make"},
        {"event": "new", "pid": 103, "comm": "tee", "cmdline": ["tee"]},
        {"event": "new", "pid": 901, "comm": "ls", "cmdline": ["ls"]},
    ]
    score = bench_build.score_build(events, execs, ran)
    assert (score["execs"], score["caught"], score["partial"], score["wrong"]) == (3, 1, 1, 1)
    assert score["missed"] == {"sh": 1}


def test_a_fork_only_child_reported_with_its_parents_program_is_not_wrong():
    """make's child reported before it exec'd sh shows make's command line: right."""
    execs, ran = bench_build.tree_execs(PERF_TEXT, 100)
    events = [{"event": "new", "pid": 103, "comm": "make", "cmdline": ["make", "-j2"]}]
    assert bench_build.score_build(events, execs, ran)["wrong"] == 0


def test_misses_are_told_apart_by_cause():
    """A miss whose PID was reported under another program (seen at fork, its exec not
    read) is not one never read at all: mixing them up would point at the wrong fix."""
    execs, ran = bench_build.tree_execs(PERF_TEXT, 100)
    events = [{"event": "new", "pid": 103, "comm": "make", "cmdline": ["make", "-j2"]}]
    score = bench_build.score_build(events, execs, ran)
    assert score["causes"] == {"exec lost, pid seen": 1, "never read": 2}
