"""--serve at the HTTP level, as an attacker and as a client would use it: the
token on every endpoint, GET/HEAD only, the page's CSP, the JSON keys, the
event stream, and a browser too slow to read that must not stall anyone."""
import http.client
import json
import os
import re
import socket
import stat
import threading
import time

import pytest

import netsnoop
from conftest import run_netsnoop
from dashboard_helper import Served, spawn_tagged, unique_tag

ENDPOINTS = ("/", "/?tab=tcp", "/api/status", "/api/snapshot?tab=tcp", "/api/tables?tab=udp",
             "/api/traffic", "/api/events", "/no/such/page", "/favicon.ico")


@pytest.fixture(scope="module")
def served():
    dash = Served("--interval", "0.5")
    yield dash
    dash.close()


def wrong_token(token):
    """Same length, last character changed: a comparison that stops early would pass it."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def test_url_line_and_random_token_per_run(served):
    """One line on stderr with a token that a second run does not repeat."""
    other = Served()
    try:
        assert other.token != served.token
        assert len(served.token) >= 32
    finally:
        other.close()


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("method", ("GET", "HEAD"))
def test_every_endpoint_is_401_and_empty_without_the_token(served, path, method):
    """No token, a wrong one, or the token under another cookie name: 401 and no body
    (a route answered before the check, or a prefix comparison, would show here)."""
    cookie_name = re.search(r"(netsnoop_[0-9a-f]+)=", served.request(
        "/?token=" + served.token, token=False)[1]["Set-Cookie"]).group(1)
    for token, headers in ((False, {}), (wrong_token(served.token), {}),
                           (False, {"Cookie": "%s=%s" % (cookie_name, wrong_token(served.token))}),
                           (False, {"Cookie": "netsnoop=%s" % served.token}),
                           (False, {"Authorization": "Basic " + served.token})):
        status, headers_out, body = served.request(path, token=token, method=method,
                                                   headers=headers)
        assert status == 401, (path, headers)
        assert body == b""
        assert headers_out["Content-Length"] == "0"
    sep = "&" if "?" in path else "?"
    status, _, _ = served.request(path + sep + "token=" + wrong_token(served.token), token=False,
                                  method=method)
    assert status == 401


def test_token_by_query_header_or_the_pages_cookie(served):
    """Each of the three ways in works; the page's cookie is HttpOnly and SameSite=Strict,
    and the token leaves the address bar by a redirect to /."""
    assert served.request("/api/status?token=" + served.token, token=False)[0] == 200
    assert served.request("/api/status")[0] == 200
    status, headers, body = served.request("/?token=" + served.token, token=False)
    assert status == 303 and headers["Location"] == "/" and body == b""
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    pair = cookie.split(";")[0]
    assert served.request("/api/status", token=False, headers={"Cookie": pair})[0] == 200
    status, _, page = served.request("/", token=False, headers={"Cookie": "a=b; " + pair})
    assert status == 200 and b"<title>netsnoop</title>" in page


def test_page_csp_nonce_fresh_and_no_inline_code(served):
    """Script and style only by this response's nonce; nothing inline a CSP would have to
    allow (on*= handlers, javascript: URLs); no HTML-inserting API in the page's code."""
    status, headers, page = served.request("/")
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp).group(1)
    text = page.decode("utf-8")
    tags = re.findall(r"<(script|style)\b([^>]*)>", text)
    assert tags and all('nonce="%s"' % nonce in attrs for _, attrs in tags)
    assert not re.search(r"\son[a-z]+\s*=", text, re.I)
    assert "javascript:" not in text
    for api in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                "new Function"):
        assert api not in text
    assert not re.search(r"(src|href)=\"?(https?:)?//", text)   # nothing from another host
    again = served.request("/")[1]["Content-Security-Policy"]
    assert again != csp


def test_security_headers_everywhere_and_no_cors(served):
    """nosniff and a CSP on every answer (401s too); no Access-Control-* even when a
    foreign Origin asks; JSON as application/json."""
    origin = {"Origin": "http://evil.example"}
    for path in ENDPOINTS[:-1]:
        for token in (True, False):
            if path == "/api/events" and token:
                continue        # a stream: checked below
            _, headers, _ = served.request(path, token=token, headers=origin, method="HEAD")
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert not [k for k in headers if k.lower().startswith("access-control")]
    _, headers, _ = served.request("/api/status", headers=origin)
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("method", ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
                                   "CONNECT", "BREW"))
def test_only_get_and_head(served, method):
    """Every other method: 405 with the token (Allow: GET, HEAD), 401 without, and
    nothing in the answer; the body sent along is not taken as a next request."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    body = b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.request(method, "/api/status", body=body,
                 headers={"Authorization": "Bearer " + served.token})
    resp = conn.getresponse()
    assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
    assert resp.read() == b""
    conn.close()
    status, _, out = served.request("/api/status", token=False, method=method)
    assert status == 401 and out == b""


def test_foreign_host_or_cross_site_request_is_403(served):
    """DNS rebinding (Host: evil.example) and cross-site fetches are refused even with the
    token; a loopback name on another port (an SSH tunnel) is fine."""
    assert served.request("/api/status", headers={"Host": "evil.example:%d" % served.port})[0] == 403
    assert served.request("/api/status", headers={"Host": "127.0.0.1.evil.example"})[0] == 403
    assert served.request("/api/status", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert served.request("/api/status", headers={"Sec-Fetch-Site": "same-site"})[0] == 403
    assert served.request("/api/status", headers={"Host": "localhost:9999"})[0] == 200
    assert served.request("/api/status", headers={"Host": "[::1]:9999"})[0] == 200
    assert served.request("/api/status", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_malformed_request_gets_a_bare_status(served):
    """A header line too long: 431 with no page echoing what was sent (http.server's own
    error page would); a request line it cannot parse gets no answer at all."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-<script>: " + b"a" * 70000 + b"\r\n\r\n")
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")
    assert b"<script>" not in answer and answer.endswith(b"Content-Length: 0\r\n"
                                                        b"Content-Security-Policy: " +
                                                        netsnoop.API_CSP.encode() + b"\r\n"
                                                        ) is False
    assert b"\r\nContent-Length: 0\r\n" in answer and answer.endswith(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /<script>alert(1)</script> HTTP/9\r\n\r\n")
        assert sock.recv(4096) == b""


def keys_tree(obj, depth=2):
    """The dict keys down to `depth` levels (lists: their first item)."""
    if isinstance(obj, list):
        return [keys_tree(obj[0], depth)] if obj else []
    if not isinstance(obj, dict) or depth == 0:
        return None
    return {k: keys_tree(v, depth - 1) for k, v in obj.items()}


@pytest.mark.parametrize("tab", netsnoop.TABS + ("all",))
def test_snapshot_carries_the_once_json_keys(sleeper, tab):
    """/api/snapshot?tab=TAB has the keys of `--once --json --tab TAB` (same PID)."""
    dash = Served(sleeper.pid)
    try:
        status, headers, body = dash.request("/api/snapshot?tab=" + tab)
    finally:
        dash.close()
    assert status == 200
    served_snap = json.loads(body.decode("utf-8"))
    once = run_netsnoop(sleeper.pid, "--once", "--json", "--tab", tab)
    assert once.returncode == 0, once.stderr
    once_snap = json.loads(once.stdout)
    assert served_snap["pid"] == sleeper.pid
    assert set(served_snap) == set(once_snap)
    assert list(served_snap["tabs"]) == list(once_snap["tabs"])
    for name in once_snap["tabs"]:
        assert set(served_snap["tabs"][name]) == set(once_snap["tabs"][name]), name


def test_bad_tab_is_400_and_a_gone_pid_410():
    """?tab=nonsense is refused; when PID exits, the tabs say so (410) and the feed stays up."""
    import subprocess
    proc = subprocess.Popen(["sleep", "60"])
    dash = Served(proc.pid)
    try:
        assert dash.request("/api/snapshot?tab=nonsense")[0] == 400
        assert dash.request("/api/tables?tab=all")[0] == 400
        proc.kill()
        proc.wait()
        status, _, body = dash.request("/api/tables?tab=tcp")
        assert status == 410 and b"exited" in body or b"does not exist" in body
        assert dash.request("/api/status")[0] == 200
    finally:
        dash.close()


def test_tables_are_the_sessions_tables(served):
    """/api/tables: the views' titles, columns and cells (tab udp: ss's columns)."""
    data = json.loads(served.request("/api/tables?tab=udp")[2].decode())
    table = data["tables"][0]
    assert [c["title"] for c in table["columns"]][:2] == ["Netid", "State"]
    assert table["columns"][2]["align"] == "right"
    assert data["tab"] == "udp" and data["pid"] == served.proc.pid


def test_event_stream_brings_a_new_process_within_a_second(served):
    """A process started now arrives as a `procs` event, one JSON object per data line,
    with the --procs keys, within 1 s; ids increase."""
    stream = served.events()
    try:
        assert stream.resp.getheader("Content-Type").startswith("text/event-stream")
        tag = unique_tag()
        time.sleep(0.2)
        started = time.monotonic()
        proc = spawn_tagged(tag)
        seen = []

        def wanted(ev):
            seen.append(ev)
            # a partial record (gone before it could be read) has cmdline null
            return ev["event"] == "procs" and tag in (json.loads(ev["data"])["cmdline"] or [])

        ev = stream.until(wanted, 5)
        latency = time.monotonic() - started
        proc.kill()
        proc.wait()
    finally:
        stream.close()
    assert ev is not None, "the new process never arrived"
    assert latency < 1.0, latency
    assert ev["event"] == "procs"
    event = json.loads(ev["data"])
    assert event["event"] == "new" and event["pid"] == proc.pid and event["comm"] == "sleep"
    ids = [int(e["id"]) for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_non_loopback_host_needs_serve_public():
    """0.0.0.0 (or a name) without --serve-public: usage error, nothing listens; with it,
    the token is still required."""
    for host in ("0.0.0.0:0", "[::]:0", "example.com:0"):
        res = run_netsnoop("--serve", host, "--duration", "1")
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("netsnoop: ") and res.stderr.count("\n") == 1
        assert "--serve-public" in res.stderr
    dash = Served("--serve-public", serve="0.0.0.0:0")
    try:
        assert dash.host == "0.0.0.0"
        assert dash.request("/api/status", token=False)[0] == 401
        assert dash.request("/api/status")[0] == 200
    finally:
        dash.close()


@pytest.mark.parametrize("argv", (
    ["--serve", "http"], ["--serve", "::1:80"], ["--serve", "70000"], ["--serve", "0", "--procs"],
    ["--serve", "0", "--once"], ["--serve", "0", "--json"], ["--token-file", "x", "1"],
    ["--serve-public", "--procs"], ["--serve", "0", "--filter", "x"]))
def test_serve_usage_errors(argv):
    res = run_netsnoop(*argv)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr


def test_token_file_created_0600_and_kept(tmp_path):
    """--token-file: a missing file is created 0600 with a new token; the next run uses it."""
    path = tmp_path / "token"
    first = Served("--token-file", path)
    first.close()
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600
    assert path.read_text().strip() == first.token
    second = Served("--token-file", path)
    try:
        assert second.token == first.token
        assert second.request("/api/status")[0] == 200
    finally:
        second.close()


def test_token_file_others_may_read_or_a_symlink_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("A" * 40 + "\n")
    os.chmod(str(path), 0o644)
    res = run_netsnoop("--serve", "0", "--token-file", path, "--duration", "1")
    assert res.returncode == 1 and "chmod 600" in res.stderr
    os.chmod(str(path), 0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    res = run_netsnoop("--serve", "0", "--token-file", link, "--duration", "1")
    assert res.returncode == 1 and "symbolic link" in res.stderr
    path.write_text("short\n")
    res = run_netsnoop("--serve", "0", "--token-file", path, "--duration", "1")
    assert res.returncode == 1 and "16 to 256" in res.stderr


# --- the hub and the stream, in process ------------------------------------------

def test_a_client_that_never_reads_loses_its_own_events_only():
    """publish() never waits for a client: a stalled one drops (and counts) what does not
    fit its queue, while another client gets everything."""
    hub = netsnoop.EventHub(per_client=100, backlog=10)
    stalled, reader = hub.subscribe(), hub.subscribe()
    got = []
    start = time.monotonic()
    for n in range(1000):
        hub.publish("procs", {"n": n})
        if n % 50 == 49:
            got.extend(reader.take(0)[0])
    got.extend(reader.take(0)[0])
    assert time.monotonic() - start < 1.0
    assert len(got) == 1000 and reader.take(0)[1] == 0
    messages, dropped = stalled.take(0)
    assert len(messages) == 100 and dropped == 900
    assert b'"n": 99}' in messages[-1]


def test_new_page_gets_the_backlog_and_a_reconnect_only_what_it_missed():
    hub = netsnoop.EventHub(backlog=3)
    for n in range(5):
        hub.publish("procs", {"n": n})
    first = hub.subscribe().take(0)[0]
    assert [m.split(b"\n")[0] for m in first] == [b"id: 3", b"id: 4", b"id: 5"]
    assert [m.split(b"\n")[0] for m in hub.subscribe(after=4).take(0)[0]] == [b"id: 5"]


class ScriptedScanner(object):
    """An event source for the server alone: `rate` events a second, ~1 KB each."""

    backend = "scripted"

    def __init__(self, rate, seconds):
        self.rate, self.seconds, self.seen = rate, seconds, 0

    def start(self):
        self.began = time.monotonic()

    def step(self, limit):
        time.sleep(0.01)
        due = min(self.rate * (time.monotonic() - self.began), self.rate * self.seconds)
        out = [{"event": "new", "n": n, "pad": "x" * 1000} for n in range(self.seen, int(due))]
        self.seen += len(out)
        return out

    def close(self):
        pass


@pytest.mark.slow
def test_a_stalled_browser_never_stalls_the_feed_for_others():
    """One stream never reads (tiny receive buffer); another reads everything: it gets all
    3000 events in order, and the stalled one, once it reads, is told how many it lost."""
    procfs = netsnoop.ProcFS()
    dash = netsnoop.Dashboard(procfs, os.getpid(), 1.0, "T" * 32)
    dash.hub.per_client = 500
    server = netsnoop.make_server("127.0.0.1", 0, dash)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    port = server.server_address[1]
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer " + b"T" * 32 + b"\r\n\r\n")

    class Reader(object):
        token = "T" * 32

    Reader.port = port
    from dashboard_helper import EventStream
    reader = EventStream(Reader)
    try:
        dash.add_feed("procs", ScriptedScanner(1000, 3))
        got = []
        while len(got) < 3000:
            ev = reader.next(5)
            assert ev is not None, "the reading client stopped getting events at %d" % len(got)
            got.append(json.loads(ev["data"])["n"])
        assert got == list(range(3000))
        stalled.settimeout(10)
        data = b""
        while b"event: dropped" not in data:
            chunk = stalled.recv(65536)
            assert chunk, "stream closed without a dropped event"
            data += chunk
        tail = data.split(b"event: dropped\ndata: ", 1)[1].split(b"\n", 1)[0]
        assert json.loads(tail.decode())["dropped"] > 0
    finally:
        reader.close()
        stalled.close()
        dash.close()
        server.shutdown()
        server.server_close()


def test_traffic_series_rates_gaps_and_busiest():
    """Rates between samples (hand-computed), null for an absent series or a counter that
    went back, and only the busiest `top` lines."""
    samples = [
        {"time": 10.0, "interfaces": {"lo": [1000, 0], "eth0": [0, 0]}},
        {"time": 12.0, "interfaces": {"lo": [5000, 200], "eth0": [10, 0]}},
        {"time": 13.0, "interfaces": {"lo": [4000, 300], "eth0": [20, 0], "veth": [7, 7]}},
        {"time": 14.0, "interfaces": {"lo": [4100, 300], "eth0": [30, 0], "veth": [9, 17]}},
    ]
    out = netsnoop.traffic_series(samples, "interfaces", top=4)
    assert out["times"] == [12.0, 13.0, 14.0]
    series = {s["name"]: s["values"] for s in out["series"]}
    assert list(series) == ["lo rx", "lo tx", "eth0 rx", "veth tx"]
    assert series["lo rx"] == [2000.0, None, 100.0]
    assert series["lo tx"] == [100.0, 100.0, 0.0]
    assert series["veth tx"] == [None, None, 10.0]
    assert netsnoop.traffic_series(samples[:1], "interfaces")["times"] == []


def test_traffic_sample_labels_processes_and_cgroups():
    data = {"interfaces": [{"name": "lo", "rx_bytes": 5, "tx_bytes": 6}],
            "processes": [{"pid": 42, "comm": "curl", "uid": 0, "bytes_received": 10,
                           "bytes_sent": 3},
                          {"pid": None, "comm": None, "uid": 1000, "bytes_received": 1,
                           "bytes_sent": 2}],
            "cgroups": [{"cgroup": "/user.slice", "bytes_received": 11, "bytes_sent": 5}]}
    sample = netsnoop.traffic_sample(1.0, data)
    assert sample["interfaces"] == {"lo": [5, 6]}
    assert sample["processes"] == {"curl (42)": [10, 3], "uid 1000 (?)": [1, 2]}
    assert sample["cgroups"] == {"/user.slice": [11, 5]}


@pytest.mark.slow
def test_100_process_events_a_second_reach_a_stream_without_loss(served):
    """bench_serve's load phase, short: 4 s of marked processes at 100/s; every event the
    server sent reaches the stream (ids without a gap, no drop reported) and every marked
    process is among them."""
    import subprocess
    stream = served.events()
    time.sleep(0.3)
    tag = unique_tag("load")
    procs, start = [], time.monotonic()
    for n in range(400):
        due = start + n / 100.0
        time.sleep(max(0.0, due - time.monotonic()))
        procs.append(subprocess.Popen(["%s-%d" % (tag, n), "0.2"], executable="/bin/sleep"))
    for proc in procs:
        proc.wait()
    ids, names, dropped = [], set(), []
    end = time.monotonic() + 3
    try:
        while time.monotonic() < end and len([x for x in names if x.startswith(tag)]) < 400:
            ev = stream.next(1)
            if ev is None:
                continue
            if ev["event"] == "dropped":
                dropped.append(ev["data"])
                continue
            ids.append(int(ev["id"]))
            cmdline = json.loads(ev["data"]).get("cmdline") or [""]
            names.add(cmdline[0])
    finally:
        stream.close()
    assert not dropped
    assert ids == list(range(ids[0], ids[0] + len(ids))), "an event id was skipped"
    assert {"%s-%d" % (tag, n) for n in range(400)} <= names


def test_a_feed_that_cannot_start_is_said_and_the_tabs_still_work(tmp_path):
    """--proc tree without loadavg: no process feed, and /api/status says why; the
    traffic tab of the fake PID is served from its net/dev."""
    pid_dir = tmp_path / "7"
    (pid_dir / "net").mkdir(parents=True)
    (pid_dir / "stat").write_text("7 (fake) S 1 7 7 0 -1 4194560" + " 0" * 12 + " 100" + " 0" * 30)
    (pid_dir / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets"
        " errs drop fifo colls carrier compressed\n"
        "    lo:    1234      10    0    0    0     0          0         0     1234      10"
        "    0    0    0     0       0          0\n")
    dash = Served(7, "--proc", tmp_path)
    try:
        status = json.loads(dash.request("/api/status")[2].decode())
        assert "procs" not in [f["name"] for f in status["feeds"]]
        why = {u["what"]: u["why"] for u in status["unknown"]}
        assert "last-PID counter" in why["procs feed"]
        assert status["comm"] == "fake"
        tables = json.loads(dash.request("/api/tables?tab=traffic")[2].decode())
        assert tables["tables"][0]["rows"][0]["cells"][:2] == ["lo", "1.2K"]
    finally:
        dash.close()


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback_in_brackets():
    """--serve [::1]:0 listens on ::1 (no --serve-public needed) and prints [::1] in the URL."""
    dash = Served(serve="[::1]:0")
    try:
        assert dash.host == "[::1]"
        assert dash.request("/api/status")[0] == 200
        assert dash.request("/api/status", token=False)[0] == 401
    finally:
        dash.close()


def test_process_events_carry_the_findings_of_the_rules(served):
    """A process whose stdin is a TCP socket arrives with the socket-stdio finding (the
    --procs rules run on the dashboard's feed too); an ordinary one with none."""
    import subprocess
    stream = served.events()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    client = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    tag, plain = unique_tag("stdio"), unique_tag("plain")
    try:
        time.sleep(0.2)
        procs = [subprocess.Popen([tag, "3"], executable="/bin/sleep", stdin=peer.fileno()),
                 spawn_tagged(plain)]
        found = {}
        while len(found) < 2:
            ev = stream.until(lambda e: e["event"] == "procs" and (json.loads(e["data"])[
                "cmdline"] or [])[:1] in ([tag], [plain]), 5)
            assert ev is not None, found
            event = json.loads(ev["data"])
            found[event["cmdline"][0]] = event["findings"]
        for proc in procs:
            proc.kill()
            proc.wait()
    finally:
        stream.close()
        for sock in (client, peer, srv):
            sock.close()
    assert [f["rule"] for f in found[tag]] == ["socket-stdio"]
    assert found[tag][0]["severity"] == "warn" and "stdin" in found[tag][0]["text"]
    assert found[plain] == []
