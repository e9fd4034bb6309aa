"""Shared test helpers: where things are, and skips for what a machine lacks."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")
NETSNOOP = os.path.join(ROOT, "netsnoop.py")

sys.path.insert(0, ROOT)


def run_netsnoop(*args, **kw):
    """Run netsnoop.py as a user would; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, NETSNOOP] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=kw.pop("timeout", 60), **kw)


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"]).returncode == 0


needs_root_netns = pytest.mark.skipif(
    not can_unshare(), reason="needs root and unshare -n (private network namespace)")


@pytest.fixture
def sleeper():
    """A live process of our own (root-owned when we are root), alive for any test."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()
