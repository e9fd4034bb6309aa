"""Where events go: real receivers on loopback -- an HTTP server that records POSTs (one
that hangs, too), syslog receivers (UDP, TCP with octet counting, a unix socket), an SMTP
server (aiosmtpd), and two rsyslogd instances forwarding to each other.

The feeds run with --filter MARK so that only this test's processes reach the outputs
(other processes on the machine would change the counts)."""
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import NETSNOOP
from feedrun import JsonFeed

import netsnoop

SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
RFC5424 = re.compile(r"<(\d+)>1 (\S+) (\S+) netsnoop (\d+) (\S+) - (.*)\Z", re.S)


def Feed(tmp_path, mark, *args, env=None):
    """The feed with --filter MARK: only this test's processes reach the outputs."""
    return JsonFeed(tmp_path, "--filter", mark, *args, env=env)


def marker():
    return "nsdeliv-%s" % uuid.uuid4().hex[:10]


def run_from(directory, mark, seconds=0.05):
    """A copy of sleep named MARK-N run from `directory` (/tmp: a warn finding,
    /dev/shm: an alert); returns its pid."""
    path = os.path.join(directory, "%s-%s" % (mark, uuid.uuid4().hex[:6]))
    shutil.copy(SLEEP, path)
    try:
        proc = subprocess.Popen([path, "%g" % seconds])
        proc.wait()
    finally:
        os.unlink(path)
    return proc.pid


def run_plain(mark, seconds=0.05):
    """/usr/bin/sleep with argv[0] MARK: no finding; returns its pid."""
    proc = subprocess.Popen([mark, "%g" % seconds], executable=SLEEP)
    proc.wait()
    return proc.pid


# --- an HTTP receiver ------------------------------------------------------------------

class Recorder(object):
    """http.server on 127.0.0.1 recording each POST; `delay` seconds before answering,
    `fail_first` requests answered 503."""

    def __init__(self, delay=0.0, fail_first=0):
        self.posts = []
        self.delay, self.fail_left = delay, fail_first
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recorder.posts.append((self.path, dict(self.headers), body))
                time.sleep(recorder.delay)
                status = 200
                if recorder.fail_left > 0:
                    recorder.fail_left -= 1
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = "http://127.0.0.1:%d/hook/SECRET-TOKEN" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self):
        return [json.loads(body) for _, _, body in self.posts]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made = []

    def make(**kw):
        made.append(Recorder(**kw))
        return made[-1]
    yield make
    for r in made:
        r.close()


def no_proxy_env():
    env = dict(os.environ)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NETSNOOP_WEBHOOK"):
        env.pop(name, None)
    return env


def test_webhook_posts_each_event_at_or_above_the_alert_level_once(tmp_path, recorder):
    warn_hook, alert_hook = recorder(), recorder()
    mark = marker()
    at_warn = Feed(tmp_path, mark, "--webhook", warn_hook.url, env=no_proxy_env())
    at_alert = Feed(tmp_path, mark, "--webhook", alert_hook.url, "--alert", "alert",
                    env=no_proxy_env())
    tmp_pid = run_from("/tmp", mark)
    shm_pid = run_from("/dev/shm", mark)
    plain_pid = run_plain(mark)
    at_warn.stop()
    at_alert.stop()
    posted = warn_hook.bodies()
    assert sorted(b["pid"] for b in posted) == sorted([tmp_pid, shm_pid]), posted
    assert plain_pid in [e["pid"] for e in at_warn.events()], "the quiet one was seen"
    # the body is the event as the feed printed it
    printed = {e["pid"]: e for e in at_warn.events()}
    assert all(b == printed[b["pid"]] for b in posted)
    assert warn_hook.posts[0][1]["Content-Type"] == "application/json"
    assert [b["pid"] for b in alert_hook.bodies()] == [shm_pid]
    assert at_warn.summary()["delivery"]["webhook"]["delivered"] == 2
    assert "SECRET-TOKEN" not in at_warn.stderr, "the webhook's path is its secret"


def test_webhook_slack_format_is_text_only(tmp_path, recorder):
    hook = recorder()
    mark = marker()
    feed = Feed(tmp_path, mark, "--webhook", hook.url, "--webhook-format", "slack",
                env=no_proxy_env())
    pid = run_from("/dev/shm", mark)
    feed.stop()
    bodies = hook.bodies()
    assert len(bodies) == 1 and list(bodies[0]) == ["text"], bodies
    assert "pid %d" % pid in bodies[0]["text"] and "writable-dir-exe" in bodies[0]["text"]


def test_webhook_503_is_retried_with_backoff_then_delivered(tmp_path, recorder):
    hook = recorder(fail_first=2)
    mark = marker()
    feed = Feed(tmp_path, mark, "--webhook", hook.url, env=no_proxy_env())
    run_from("/dev/shm", mark)
    deadline = time.monotonic() + 10
    while len(hook.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    feed.stop()
    counts = feed.summary()["delivery"]["webhook"]
    assert (counts["delivered"], counts["retried"], counts["dropped"]) == (1, 2, 0), counts
    assert len(hook.posts) == 3


def latencies(feed, spawned):
    """Detection latency (feed time - spawn time) of each plain process, by pid."""
    seen = {e["pid"]: e["time"] for e in feed.events()}
    return [seen[pid] - when for pid, when in spawned if pid in seen]


def test_hanging_webhook_never_slows_the_feed_and_drops_are_counted(tmp_path, recorder):
    """A receiver that sleeps 30 s per request: the feed's latency for other events stays
    that of a feed without webhook watching the same processes; what does not fit the
    queue is counted dropped."""
    hook = recorder(delay=30)
    mark = marker()
    slowed = Feed(tmp_path, mark, "--webhook", hook.url, "--queue-size", "3",
                  env=no_proxy_env())
    control = Feed(tmp_path, mark)
    alerts, spawned = 12, []
    for _ in range(alerts):
        run_from("/dev/shm", mark, 0.01)
        when = time.time()
        spawned.append((run_plain(mark, 0.05), when))
    for _ in range(20):
        when = time.time()
        spawned.append((run_plain(mark, 0.05), when))
        time.sleep(0.02)
    started = time.monotonic()
    slowed.stop()
    stop_took = time.monotonic() - started
    control.stop()
    counts = slowed.summary()["delivery"]["webhook"]
    slow, base = sorted(latencies(slowed, spawned)), sorted(latencies(control, spawned))
    median = lambda xs: xs[len(xs) // 2]  # noqa: E731
    print("\nhanging webhook: %s; latency median %.1f ms (control %.1f ms), max %.1f ms "
          "(control %.1f ms), exit in %.1f s" % (
              json.dumps(counts), 1e3 * median(slow), 1e3 * median(base), 1e3 * slow[-1],
              1e3 * base[-1], stop_took))
    assert len(slow) >= 0.9 * len(spawned) and len(base) >= 0.9 * len(spawned)
    assert counts["delivered"] == 0
    assert counts["delivered"] + counts["dropped"] == alerts, counts    # none lost silently
    assert counts["dropped_queue_full"] >= alerts - 3 - 1, counts        # queue 3 + 1 in flight
    # a feed that waited for the receiver would take >= 5 s (one attempt) per alert
    assert slow[-1] < 1.0, slow[-1]
    assert median(slow) < 3 * median(base) + 0.02, (median(slow), median(base))
    assert stop_took < 10, "exit waits DRAIN_AT_EXIT, not the receiver"


def test_webhook_refusing_connections_gives_up_and_counts_it(tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()                # nothing listens there now: connection refused
    mark = marker()
    feed = Feed(tmp_path, mark, "--webhook", "http://127.0.0.1:%d/x" % port,
                env=no_proxy_env())
    run_from("/dev/shm", mark)
    time.sleep(8.0)             # 0.5 + 2 + 5 s of back-off
    feed.stop()
    counts = feed.summary()["delivery"]["webhook"]
    assert counts["delivered"] == 0 and counts["retried"] == netsnoop.RETRIES, counts
    assert counts["dropped_failed"] == 1, counts
    assert "refused" in feed.stderr.lower(), feed.stderr


# --- secrets ---------------------------------------------------------------------------

def test_webhook_url_from_a_0600_file_or_the_environment(tmp_path, recorder):
    from_file, from_env = recorder(), recorder()
    secret = tmp_path / "hook"
    secret.write_text(from_file.url + "\n")
    os.chmod(str(secret), 0o600)
    env = no_proxy_env()
    env["NETSNOOP_WEBHOOK"] = from_env.url
    mark = marker()
    feeds = [Feed(tmp_path, mark, "--webhook-file", secret, env=no_proxy_env()),
             Feed(tmp_path, mark, env=env)]
    pid = run_from("/dev/shm", mark)
    for feed in feeds:
        feed.stop()
    assert [b["pid"] for b in from_file.bodies()] == [pid]
    assert [b["pid"] for b in from_env.bodies()] == [pid]


def test_secret_file_readable_by_others_is_refused(tmp_path):
    secret = tmp_path / "hook"
    secret.write_text("http://127.0.0.1:9/x\n")
    os.chmod(str(secret), 0o644)
    r = subprocess.run([sys.executable, NETSNOOP, "--procs", "--webhook-file", str(secret)],
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert r.returncode == 1 and "others may read it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,says", [
    (["--procs", "--mail-to", "a@example.org"], "--mail-to and --smtp go together"),
    (["--procs", "--webhook", "file:///etc/passwd"], "http:// or https://"),
    (["--procs", "--syslog", "tcp:nowhere"], "--syslog takes"),
    (["1", "--ecs"], "goes with --procs"),
    (["--procs", "--mail-to", "a@b", "--smtp", "h", "--smtp-user", "u"], "needs a password"),
])
def test_bad_delivery_options_are_usage_errors(args, says):
    env = no_proxy_env()
    env.pop("NETSNOOP_SMTP_PASSWORD", None)
    r = subprocess.run([sys.executable, NETSNOOP] + args, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=30, env=env)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_syslog_target_parsing():
    """The default is /dev/log; IPv6 hosts in brackets."""
    assert netsnoop.parse_syslog_target("") == ("unix", "/dev/log")
    assert netsnoop.parse_syslog_target("tcp:[::1]:6514") == ("tcp", ("::1", 6514))
    assert netsnoop.parse_syslog_target("udp:log.example.org:514") == (
        "udp", ("log.example.org", 514))
    with pytest.raises(netsnoop.UsageError):
        netsnoop.parse_syslog_target("udp:host:0")


# --- syslog receivers ---------------------------------------------------------------

def parse_5424(data):
    m = RFC5424.match(data.decode("ascii"))
    assert m, data
    pri, stamp, host, procid, msgid, msg = m.groups()
    return int(pri), stamp, host, int(procid), msgid, json.loads(msg)


def test_syslog_udp_one_rfc5424_datagram_per_event(tmp_path):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    mark = marker()
    feed = Feed(tmp_path, mark, "--syslog", "udp:127.0.0.1:%d" % rx.getsockname()[1])
    warn_pid, plain_pid = run_from("/tmp", mark), run_plain(mark)
    got = [parse_5424(rx.recv(65536)) for _ in range(2)]
    feed.stop()
    rx.close()
    by_pid = {msg["pid"]: (pri, stamp, procid, msgid) for pri, stamp, _, procid, msgid, msg in got}
    assert by_pid[warn_pid][0] == 1 * 8 + 4, "facility user, severity warning"
    assert by_pid[plain_pid][0] == 1 * 8 + 6, "no finding: informational"
    assert by_pid[warn_pid][2] == feed.proc.pid and by_pid[warn_pid][3] == "new"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z", by_pid[warn_pid][1])


def read_octet_counted(conn, count):
    """RFC 6587 octet counting: "LEN SP MSG" frames -> [MSG]."""
    buf, out = b"", []
    while len(out) < count:
        m = re.match(rb"([1-9][0-9]*) ", buf)
        if m and len(buf) >= m.end() + int(m.group(1)):
            end = m.end() + int(m.group(1))
            out.append(buf[m.end():end])
            buf = buf[end:]
            continue
        chunk = conn.recv(65536)
        assert chunk, "connection closed with %d of %d frames" % (len(out), count)
        buf += chunk
    return out


def test_syslog_tcp_frames_by_octet_counting_in_order(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(10)
    mark = marker()
    feed = Feed(tmp_path, mark, "--syslog", "tcp:127.0.0.1:%d" % server.getsockname()[1],
                "--ecs")
    pids = [run_plain(mark, 0.01) for _ in range(5)]
    conn, _ = server.accept()
    conn.settimeout(10)
    frames = read_octet_counted(conn, 5)
    feed.stop()
    conn.close()
    server.close()
    assert [parse_5424(f)[5]["process"]["pid"] for f in frames] == pids


def test_syslog_unix_datagram_socket(tmp_path):
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    mark = marker()
    feed = Feed(tmp_path, mark, "--syslog", "unix:" + path)
    pid = run_from("/dev/shm", mark)
    pri, _, _, _, _, msg = parse_5424(rx.recv(65536))
    feed.stop()
    rx.close()
    assert msg["pid"] == pid and pri == 1 * 8 + 1, "an alert finding: severity alert"
    assert feed.summary()["delivery"]["syslog"]["delivered"] == 1


# --- ECS -----------------------------------------------------------------------------

def test_ecs_names_carry_the_process_facts(tmp_path):
    mark = marker()
    feed = Feed(tmp_path, mark, "--ecs")
    proc = subprocess.Popen([mark, "0.1"], executable=SLEEP)
    proc.wait()
    feed.stop()
    lines = feed.lines()
    ev = [e for e in lines if e.get("process", {}).get("pid") == proc.pid][0]
    assert ev["process"]["parent"]["pid"] == os.getpid()
    assert ev["process"]["args"] == [mark, "0.1"]
    assert ev["process"]["command_line"] == "%s 0.1" % mark
    assert ev["process"]["executable"] == SLEEP
    assert ev["user"]["id"] == str(os.getuid())
    assert ev["event"]["category"] == ["process"] and ev["event"]["type"] == ["start"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z", ev["@timestamp"])
    assert lines[-1]["event"]["dataset"] == "netsnoop.summary"


# --- mail ----------------------------------------------------------------------------

def smtp_server(**kw):
    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd not installed")
    received = []

    class Handler(object):
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    controller = controller_mod.Controller(Handler(), hostname="127.0.0.1", port=free_port(),
                                           **kw)
    controller.start()
    return controller, received


def smtp_port(controller):
    return controller.port


def wait_for_mail(received, timeout=10.0):
    """Until the SMTP server has a message (or timeout: the test's asserts say what)."""
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)


def test_mail_one_message_per_alert(tmp_path):
    controller, received = smtp_server()
    try:
        mark = marker()
        feed = Feed(tmp_path, mark, "--mail-to", "soc@example.org",
                    "--smtp", "127.0.0.1:%d" % smtp_port(controller))
        pid = run_from("/dev/shm", mark)
        run_plain(mark)
        wait_for_mail(received)
        feed.stop()
    finally:
        controller.stop()
    assert len(received) == 1, "the plain process sends no mail"
    text = received[0].content.decode("utf-8", "replace")
    assert received[0].rcpt_tos == ["soc@example.org"]
    assert re.search(r"Subject: netsnoop writable-dir-exe .*\(pid %d\)" % pid, text), text
    assert feed.summary()["delivery"]["mail"]["delivered"] == 1


def test_mail_login_takes_the_password_from_the_environment(tmp_path):
    auth_mod = pytest.importorskip("aiosmtpd.smtp")
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return auth_mod.AuthResult(success=auth_data.password == b"s3cret")

    controller, received = smtp_server(authenticator=authenticator, auth_require_tls=False)
    try:
        env = dict(os.environ, NETSNOOP_SMTP_PASSWORD="s3cret")
        mark = marker()
        feed = Feed(tmp_path, mark, "--mail-to", "soc@example.org", "--smtp-user", "alice",
                    "--smtp", "127.0.0.1:%d" % smtp_port(controller), env=env)
        run_from("/dev/shm", mark)
        wait_for_mail(received)
        feed.stop()
    finally:
        controller.stop()
    assert logins == [(b"alice", b"s3cret")] and len(received) == 1
    assert "s3cret" not in " ".join(map(str, feed.proc.args))


# --- a fleet through rsyslog -----------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("rsyslogd did not listen on %d" % port)


RELAY_CONF = """global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
if $app-name == "netsnoop" then {{
    action(type="omfwd" target="127.0.0.1" port="{to}" protocol="tcp"
           TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
    stop
}}
"""
SINK_CONF = """global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="msgonly" type="string" string="%msg%\\n")
if $app-name == "netsnoop" then action(type="omfile" file="{out}" template="msgonly")
"""


@pytest.mark.skipif(shutil.which("rsyslogd") is None,
                    reason="rsyslogd absent (apt-get install rsyslog)")
def test_fleet_through_two_rsyslogd_every_event_once_in_order(tmp_path):
    """netsnoop -> rsyslogd (relay, TCP) -> rsyslogd (sink, TCP) -> a file of ECS JSON."""
    relay_port, sink_port = free_port(), free_port()
    out = tmp_path / "fleet.log"
    daemons = []
    for name, conf, port in (("sink", SINK_CONF, sink_port), ("relay", RELAY_CONF, relay_port)):
        work = tmp_path / name
        work.mkdir()
        path = tmp_path / (name + ".conf")
        path.write_text(conf.format(dir=work, port=port, to=sink_port, out=out))
        daemons.append(subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(path), "-i", str(tmp_path / (name + ".pid"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        wait_listening(port)
    try:
        mark = marker()
        feed = Feed(tmp_path, mark, "--ecs", "--syslog", "tcp:127.0.0.1:%d" % relay_port)
        pids = [run_plain(mark, 0.01) for _ in range(10)] + [run_from("/tmp", mark)]
        feed.stop()
        sent = [e["process"]["pid"] for e in feed.lines() if "process" in e]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= len(sent):
                break
            time.sleep(0.1)
        time.sleep(0.3)             # nothing more may come
    finally:
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(10)
    arrived = [json.loads(line) for line in out.read_text().splitlines()]
    assert sent == pids, "the feed saw them all, in spawn order"
    assert [a["process"]["pid"] for a in arrived] == sent, "once each, in order"
    last = arrived[-1]
    assert last["event"]["kind"] == "alert" and last["rule"]["name"] == ["writable-dir-exe"]
    assert {"@timestamp", "event", "process", "user", "ecs"} <= set(arrived[0])
