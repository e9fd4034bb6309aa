"""A --serve dashboard run as a user would (a subprocess), and clients for it:
plain HTTP requests (urllib, redirects not followed) and an event-stream reader."""
import http.client
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import NETSNOOP

URL_LINE = re.compile(r"netsnoop: dashboard at (http://(\S+?):(\d+))/\?token=(\S+)\n\Z")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


OPENER = urllib.request.build_opener(_NoRedirect)


class Served(object):
    """`netsnoop.py --serve 127.0.0.1:0 ARGS...`; .base, .token, .port once it is up."""

    def __init__(self, *args, serve="127.0.0.1:0", **kw):
        self.proc = subprocess.Popen(
            [sys.executable, NETSNOOP, "--serve", serve] + [str(a) for a in args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, **kw)
        ready, _, _ = select.select([self.proc.stderr], [], [], 20)
        self.line = self.proc.stderr.readline() if ready else ""
        match = URL_LINE.match(self.line)
        if not match:
            self.close()
            raise AssertionError("no dashboard line on stderr: %r" % self.line)
        self.base, self.host, self.port, self.token = match.groups()
        self.port = int(self.port)

    def request(self, path, token=True, method="GET", headers=None):
        """-> (status, headers, body bytes); token: True (Bearer header), False or a str."""
        headers = dict(headers or {})
        if token is True:
            headers["Authorization"] = "Bearer " + self.token
        elif token:
            headers["Authorization"] = "Bearer " + token
        req = urllib.request.Request(self.base + path, method=method, headers=headers)
        try:
            with OPENER.open(req, timeout=20) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers, err.read()

    def events(self, headers=None):
        return EventStream(self, headers)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class EventStream(object):
    """GET /api/events, read one Server-Sent Event at a time."""

    def __init__(self, served, headers=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        all_headers = {"Authorization": "Bearer " + served.token}
        all_headers.update(headers or {})
        self.conn.request("GET", "/api/events", headers=all_headers)
        self.sock = self.conn.sock      # http.client lets go of it for a Connection: close answer
        self.resp = self.conn.getresponse()

    def next(self, timeout=5.0):
        """-> {"id", "event", "data"} of the next event (comments skipped), or None at timeout."""
        self.sock.settimeout(timeout)
        fields = {}
        try:
            while True:
                line = self.resp.fp.readline()
                if not line:
                    return None
                line = line.decode("utf-8").rstrip("\n")
                if not line:
                    if "data" in fields:
                        return fields
                    fields = {}
                    continue
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                if key in fields:
                    raise AssertionError("two %r lines in one event" % key)
                fields[key] = value
        except OSError:
            return None

    def until(self, pred, timeout):
        """Events until one satisfies pred (returned), or None after timeout seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ev = self.next(max(0.01, end - time.monotonic()))
            if ev is not None and pred(ev):
                return ev
        return None

    def close(self):
        self.resp.close()
        self.sock.close()


def spawn_tagged(tag, seconds=3):
    """A real process whose command line is "TAG SECONDS" (argv[0] set, /bin/sleep runs)."""
    return subprocess.Popen([tag, str(seconds)], executable="/bin/sleep")


def unique_tag(prefix="nsdash"):
    return "%s-%d-%d" % (prefix, os.getpid(), time.monotonic_ns())
