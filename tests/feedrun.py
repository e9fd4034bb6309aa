"""One running `netsnoop.py --procs --json` for the findings and delivery tests: its
output goes to files, read back as JSON lines; stop() ends it with SIGTERM."""
import json
import signal
import subprocess
import sys
import time
import uuid

from conftest import NETSNOOP


class JsonFeed(object):
    """netsnoop --procs --json ARGS...; waits until the feed says it is watching."""

    def __init__(self, tmp_path, *args, env=None):
        self.out_path = str(tmp_path / ("feed-%s.out" % uuid.uuid4().hex[:8]))
        self.err_path = self.out_path + ".err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, NETSNOOP, "--procs", "--json"] + [str(a) for a in args],
                stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + 20
        while "watching for new processes" not in self.read_err():
            assert self.proc.poll() is None, self.read_err()
            assert time.monotonic() < deadline, "feed did not start"
            time.sleep(0.02)

    def read_err(self):
        with open(self.err_path) as f:
            return f.read()

    def lines(self):
        """Every JSON line so far, the summary included."""
        with open(self.out_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def events(self):
        return [e for e in self.lines() if e.get("event") in ("new", "exec")]

    def summary(self):
        return [e for e in self.lines() if e.get("event") == "summary"][0]

    def wait_for(self, predicate, timeout=10.0):
        """The events matching predicate, once there are any (or [] after timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if predicate(e)]
            if found:
                return found
            time.sleep(0.02)
        return []

    def stop(self, settle=0.2):
        time.sleep(settle)                  # let the last newborns be reported
        self.proc.send_signal(signal.SIGTERM)
        self.returncode = self.proc.wait(30)
        self.stderr = self.read_err()
        return self
