#!/usr/bin/env python3
"""Benchmark of netsnoop --serve: what the dashboard costs beyond the feed.

    python3 bench/bench_serve.py --quick      short phases (< 90 s)
    python3 bench/bench_serve.py              30 s idle phases, 60 s under load

The peer, `netsnoop.py --procs --conns --json > /dev/null` (the feeds alone), runs beside
`--serve` and is measured over the same windows (CPU: utime+stime of
/proc/PID/stat, threads included), so both see the same processes come and go:
1. idle: `--serve` with nobody looking, then with one browser
   attached (headless Chromium when installed, else a client doing what the
   page does: the event stream plus status, tables and traffic every interval);
2. latency: marked processes spawned one at a time, the time until the page
   shows each (the DOM polled every 5 ms; a Python stream reader without a
   browser);
3. load: marked processes spawned at 100/s (`/bin/sleep 0.2` with a unique
   argv[0]) with the peer feed and `--serve` (browser attached) both running: the
   events the server sent against those the page received (the page's own
   count), the event ids a second stream reader saw (a gap is a lost event),
   the drops the server reported, and the CPU of each.
The machine may be shared: read the CPU as a difference and a ratio against
the peer measured in the same run, expect noise of a few tenths of a percent.
"""
import argparse
import http.client
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETSNOOP = os.path.join(ROOT, "netsnoop.py")
SLEEP = shutil.which("sleep") or "/bin/sleep"
TICKS = os.sysconf("SC_CLK_TCK")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INTERVAL = "2"          # the dashboard's default refresh


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_shares(pids, seconds, during=None):
    """Share of one core each PID used over the same `seconds` (while `during(seconds)`
    runs, if given)."""
    before, start = [cpu_seconds(pid) for pid in pids], time.monotonic()
    if during is not None:
        during(seconds)
    else:
        time.sleep(seconds)
    took = time.monotonic() - start
    return [(cpu_seconds(pid) - b) / took for pid, b in zip(pids, before)]


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_feed():
    proc = subprocess.Popen([sys.executable, NETSNOOP, "--procs", "--conns", "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            universal_newlines=True)
    proc.stderr.readline()          # "watching TCP connections ... and new processes"
    return proc


class Dashboard(object):
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, NETSNOOP, "--serve", "127.0.0.1:0", "--interval", INTERVAL],
            stderr=subprocess.PIPE, universal_newlines=True)
        ready, _, _ = select.select([self.proc.stderr], [], [], 20)
        line = self.proc.stderr.readline() if ready else ""
        match = re.search(r"dashboard at (http://127\.0\.0\.1:(\d+))/\?token=(\S+)", line)
        if not match:
            raise SystemExit("bench_serve: no dashboard line: %r" % line)
        self.base, self.port, self.token = match.group(1), int(match.group(2)), match.group(3)

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.request("GET", path, headers={"Authorization": "Bearer " + self.token})
        body = conn.getresponse().read()
        conn.close()
        return body

    def status(self):
        return json.loads(self.get("/api/status").decode())

    def close(self):
        stop(self.proc)


class StreamReader(object):
    """An /api/events reader in a thread: event ids, drops reported, marked commands seen."""

    def __init__(self, dash, on_event=None):
        self.ids, self.dropped, self.cmdlines = [], 0, {}
        self.on_event = on_event
        self.conn = http.client.HTTPConnection("127.0.0.1", dash.port, timeout=30)
        self.conn.request("GET", "/api/events",
                          headers={"Authorization": "Bearer " + dash.token})
        self.resp = self.conn.getresponse()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        fields = {}
        try:
            for raw in self.resp.fp:
                line = raw.decode("utf-8").rstrip("\n")
                if line:
                    key, _, value = line.partition(": ")
                    fields[key] = value
                    continue
                if fields.get("event") == "dropped":
                    self.dropped = json.loads(fields["data"])["dropped"]
                elif "id" in fields:                # procs and conns events
                    self.ids.append(int(fields["id"]))
                    event = json.loads(fields["data"])
                    if fields["event"] == "procs" and event.get("cmdline"):
                        self.cmdlines[event["cmdline"][0]] = time.monotonic()
                        if self.on_event:
                            self.on_event(event)
                fields = {}
        except (OSError, ValueError):
            pass

    def gaps(self):
        """Event ids missing between the first and the last seen."""
        if not self.ids:
            return 0
        return (self.ids[-1] - self.ids[0] + 1) - len(set(self.ids))

    def close(self):
        self.conn.close()


class Browser(object):
    """Headless Chromium on the page (selenium), or None without it."""

    def __init__(self, url):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self.profile = tempfile.mkdtemp(prefix="bench-serve-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--user-data-dir=" + self.profile):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.get(url)
        time.sleep(1.0)

    def received(self):
        """Events of both feeds the page has counted."""
        total = 0
        for name in ("procs", "conns"):
            text = self.driver.execute_script(
                "return document.getElementById(arguments[0]).textContent", name + "-count")
            total += int(text.split()[0]) if text else 0
        return total

    def shows(self, tag):
        return self.driver.execute_script(
            "return document.getElementById('procs-rows').textContent.indexOf(arguments[0]) >= 0",
            tag)

    def dropped_shown(self):
        """(dropped, lost) as the status line says: drops the server reported to this page,
        event ids the page never got."""
        text = self.driver.execute_script("return document.getElementById('status').textContent")
        found = re.search(r"dropped (\d+).*lost (\d+)", text)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def close(self):
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


class PageClient(object):
    """Without a browser: what the page does (the stream, and three requests an interval)."""

    def __init__(self, dash):
        self.dash = dash
        self.stream = StreamReader(dash)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.wait(float(INTERVAL)):
            for path in ("/api/status", "/api/tables?tab=tcp", "/api/traffic"):
                self.dash.get(path)

    def received(self):
        return len(self.stream.ids)

    def shows(self, tag):
        return tag in self.stream.cmdlines

    def dropped_shown(self):
        return self.stream.dropped, self.stream.gaps()

    def close(self):
        self.stopping.set()
        self.stream.close()


def attach(dash, use_browser):
    if use_browser:
        return Browser(dash.base + "/?token=" + dash.token)
    return PageClient(dash)


def spawn_at(rate, seconds, tag, life="0.2"):
    """Marked processes at `rate` per second for `seconds`; -> their argv[0]s."""
    tags, procs = [], []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n / rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        name = "%s-%d" % (tag, n)
        procs.append(subprocess.Popen([name, life], executable=SLEEP))
        tags.append(name)
        n += 1
        if len(procs) > 200:
            for p in procs[:100]:
                p.wait()
            del procs[:100]
    for p in procs:
        p.wait()
    return tags


def phase_idle(seconds, use_browser):
    """-> [(feed, serve) CPU shares] with nobody looking, then with the browser."""
    feed, dash = start_feed(), Dashboard()
    time.sleep(1)
    alone = cpu_shares([feed.pid, dash.proc.pid], seconds)
    client = attach(dash, use_browser)
    time.sleep(2)
    attached = cpu_shares([feed.pid, dash.proc.pid], seconds)
    client.close()
    dash.close()
    stop(feed)
    return alone, attached


def phase_latency(count, use_browser):
    dash = Dashboard()
    client = attach(dash, use_browser)
    time.sleep(1)
    latencies = []
    tag = "benchlat-%d" % os.getpid()
    for n in range(count):
        name = "%s-%d" % (tag, n)
        start = time.monotonic()
        proc = subprocess.Popen([name, "2"], executable=SLEEP)
        while not client.shows(name) and time.monotonic() - start < 5:
            time.sleep(0.005)
        latencies.append(time.monotonic() - start)
        proc.kill()
        proc.wait()
        time.sleep(0.2)
    client.close()
    dash.close()
    return latencies


def phase_load(seconds, rate, use_browser):
    tag = "benchload-%d" % os.getpid()
    feed, dash = start_feed(), Dashboard()
    client = attach(dash, use_browser)
    reader = StreamReader(dash)
    time.sleep(1.5)
    sent_before, received_before = dash.status()["events"], client.received()
    tags = []
    peer, share = cpu_shares([feed.pid, dash.proc.pid], seconds,
                             lambda s: tags.extend(spawn_at(rate, s, tag)))
    time.sleep(2)                       # the last events on their way
    sent = dash.status()["events"] - sent_before
    received = client.received() - received_before
    out = dict(peer=peer, serve=share, spawned=len(tags), sent=sent, received=received,
               caught=sum(1 for t in tags if t in reader.cmdlines), gaps=reader.gaps(),
               dropped_reader=reader.dropped, dropped_page=client.dropped_shown())
    reader.close()
    client.close()
    dash.close()
    stop(feed)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (< 90 s)")
    parser.add_argument("--idle", type=float, help="seconds per idle phase (default 30, quick 8)")
    parser.add_argument("--load", type=float, help="seconds under load (default 60, quick 10)")
    parser.add_argument("--rate", type=float, default=100.0, help="spawns per second")
    parser.add_argument("--no-browser", action="store_true",
                        help="emulate the page in Python even when Chromium is there")
    args = parser.parse_args()
    idle = args.idle or (8.0 if args.quick else 30.0)
    load = args.load or (10.0 if args.quick else 60.0)
    use_browser = not args.no_browser and os.access(CHROMIUM, os.X_OK) and \
        os.access(CHROMEDRIVER, os.X_OK)
    if use_browser:
        try:
            import selenium  # noqa: F401
        except ImportError:
            use_browser = False
    who = "headless Chromium" if use_browser else "a Python client doing what the page does"
    print("bench_serve: one browser = %s; refresh every %ss; %.0f s idle phases, %.0f s at "
          "%.0f spawns/s" % (who, INTERVAL, idle, load, args.rate))

    print("\nidle CPU (share of one core; the peer --procs --conns --json runs in the same "
          "window)")
    for what, (peer, serve) in zip(("nobody looking", "one browser attached"),
                                   phase_idle(idle, use_browser)):
        print("  %-22s feeds %5.2f%%  --serve %5.2f%%  beyond the feeds %+.2f points (x%.2f)"
              % (what, 100 * peer, 100 * serve, 100 * (serve - peer),
                 serve / peer if peer else float("nan")))

    latencies = phase_latency(10 if args.quick else 30, use_browser)
    print("\nspawn -> page: median %.0f ms, max %.0f ms (%d processes)" % (
        1000 * statistics.median(latencies), 1000 * max(latencies), len(latencies)))

    res = phase_load(load, args.rate, use_browser)
    print("\nunder load: %d spawned in %.0f s" % (res["spawned"], load))
    print("  CPU feeds alone %.2f%%, --serve with the browser %.2f%% (%+.2f points, x%.2f)" % (
        100 * res["peer"], 100 * res["serve"], 100 * (res["serve"] - res["peer"]),
        res["serve"] / res["peer"] if res["peer"] else float("nan")))
    print("  events sent by the server %d, counted by the page %d (the two counts are read "
          "moments apart)" % (res["sent"], res["received"]))
    print("  page's status line: dropped %s, lost %s (event ids it never got)"
          % res["dropped_page"])
    print("  second stream: id gaps %d, drops reported %d" % (res["gaps"], res["dropped_reader"]))
    print("  marked processes caught by the feed: %d of %d (%.1f%%; the scanner's catch rate)"
          % (res["caught"], res["spawned"], 100.0 * res["caught"] / max(1, res["spawned"])))


if __name__ == "__main__":
    main()
