"""The README's examples are what netsnoop prints now.

Each example block (between `<!-- example: NAME -->` and `<!-- /example -->`) starts with
the command it came from; the test runs that command the same way tools/readme_examples.py
did and compares the shape: the same lines in the same order, the same words on each line,
numbers aside (times, PIDs and counts change from run to run).  It fails when a column is
renamed, a line moves (the heading below the tables), a state or a mark is worded otherwise,
or an example is added or dropped, until `python3 tools/readme_examples.py` is run again.
"""
import os
import re
import sys

import pytest

from conftest import ROOT, needs_root_netns

sys.path.insert(0, os.path.join(ROOT, "tools"))
import readme_examples as examples  # noqa: E402

# Written out here, not taken from the tool: dropping an example from either side fails.
NAMES = ["tcp", "udp", "arp", "traffic", "stats", "raw", "icmp", "routing", "analysis",
         "procs", "session", "feed"]
HEADING = re.compile(r"^netsnoop \d+\.\d+\.\d+: pid \d+ \(.*\), netns .*, "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def readme_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"^<!-- example: (\S+) -->\n```\n(.*?)\n```\n<!-- /example -->$",
                        text, re.M | re.S)
    return {name: body.split("\n") for name, body in blocks}, text


PLURALS = {"thread": "threads", "process": "processes"}


def shape(lines):
    """Per line, its words with every run of digits as N, a count's noun in the plural
    (N is 1 in one run, 4 in another), and the backend's name as B (a checkout without
    the C build runs the python one): what no rerun changes."""
    lines = [re.sub(r"backend (fast|python)", "backend B", line) for line in lines]
    lines = [re.sub(r"\b(\d+ (?:new )?)(thread|process)\b",
                    lambda m: m.group(1) + PLURALS[m.group(2)], line) for line in lines]
    return [tuple(re.sub(r"\d+", "N", word) for word in line.split()) for line in lines]


def compare(name, shown, printed):
    """shown (README, without the `$ ` lines) against printed (a run now)."""
    if shown and shown[-1] == examples.CUT:       # the example shows a first part only
        shown = shown[:-1]
        assert len(printed) > len(shown), "README cuts %s where nothing follows" % name
        printed = printed[:len(shown)]
    assert shape(shown) == shape(printed), "\n".join(
        ["%s: README vs a run now (python3 tools/readme_examples.py rewrites it):" % name]
        + ["  README: %s\n  now:    %s" % (a, b) for a, b in zip(shown, printed)
           if shape([a]) != shape([b])]
        + ["  (README %d lines, now %d)" % (len(shown), len(printed))])


def test_every_example_has_its_block():
    """Fails when an example block is lost (a marker mistyped, a fence dropped) or added
    without a way to run it."""
    blocks, text = readme_blocks()
    assert sorted(blocks) == sorted(NAMES)
    assert text.count("<!-- example: ") == len(NAMES)
    assert list(examples.EXAMPLES) == NAMES


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("session", "feed")])
def test_tab_example_matches_a_run(name):
    """--once on the captured tree: the heading first, then the tab's tables as printed."""
    blocks, _ = readme_blocks()
    block = blocks[name]
    commands = [ln for ln in block if ln.startswith("$ ")]
    assert commands == examples.command_lines(name) == block[:len(commands)]
    shown = block[len(commands):]
    assert HEADING.match(shown[0]), shown[0]             # which process, which namespace, when
    assert shown[1] == "" and shown[2].startswith("== ")
    compare(name, shown, examples.run_example(name))


def test_session_example_matches_the_screen():
    """The curses screen: tab bar, status line, table, key hint, in that order."""
    pytest.importorskip("pyte")         # the screen comes from tests/ptyterm.py
    blocks, _ = readme_blocks()
    block = blocks["session"]
    assert block[:1] == examples.command_lines("session")
    assert block[1].startswith("1:tcp ") and block[2].startswith("PID ")
    compare("session", block[1:], examples.run_example("session"))


@needs_root_netns
def test_feed_example_matches_a_run():
    """--procs: the banner, one line per process with its marks ([ct], exec>) in the order
    they were born, the summary last."""
    blocks, _ = readme_blocks()
    block = blocks["feed"]
    assert block[:2] == examples.command_lines("feed")
    shown = block[2:]
    assert shown[0].startswith("netsnoop: watching for new processes")
    assert re.match(r"netsnoop: \d+ new process(es)? seen", shown[-1])
    printed = examples.run_example("feed")
    if shape(printed) != shape(shown):
        # a busy machine can delay a read past a process's exec: one more run, not more
        printed = examples.run_example("feed")
    compare("feed", shown, printed)
