"""Connection events (--conns) through the outputs, to real receivers: a syslog
unix datagram socket (a path: it reaches into the namespace) and the HTTP recorder
of test_delivery.py, listening inside the helper's namespace (a thread enters it
to make the socket; the socket stays there).  Events in ECS form: source.*,
destination.*, network.*, and the new-listener finding as an alert."""
import ctypes
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from conftest import NETSNOOP, needs_root_netns
from test_conns import Space
from test_delivery import Recorder, no_proxy_env, parse_5424, smtp_server

pytestmark = [needs_root_netns, pytest.mark.live]

CLONE_NEWNET = 0x40000000
PAYLOAD = 100

# inside the namespace: a listener every host could reach (0.0.0.0), one
# connection to it carrying PAYLOAD bytes, then all closed
TRAFFIC = (
    "import os, socket, sys, time\n"
    "lst = socket.socket(); lst.bind(('0.0.0.0', 0)); lst.listen(4)\n"
    "print(lst.getsockname()[1], flush=True); time.sleep(0.5)\n"
    "c = socket.create_connection(('127.0.0.1', lst.getsockname()[1])); a, _ = lst.accept()\n"
    "print(c.getsockname()[1], os.getpid(), flush=True)\n"
    "c.sendall(b'x' * %d); got = 0\n"
    "while got < %d: got += len(a.recv(4096))\n"
    "time.sleep(0.5); c.close(); a.close(); time.sleep(0.3); lst.close()\n" % (PAYLOAD, PAYLOAD))


@pytest.fixture(scope="module")
def space():
    s = Space()
    yield s
    s.close()


def in_netns(pid, make):
    """make() run by a thread inside PID's network namespace (sockets made there stay)."""
    result = []

    def enter():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/proc/%d/ns/net" % pid, os.O_RDONLY)
        try:
            assert libc.setns(fd, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
        result.append(make())
    t = threading.Thread(target=enter)
    t.start()
    t.join()
    return result[0]


def start_conns_feed(space, args, stdout):
    """netsnoop --conns ARGS run in the namespace (its banner is the caller's to check,
    inside the try that stops it)."""
    return subprocess.Popen(
        ["nsenter", "--net=/proc/%d/ns/net" % space.pid, sys.executable, NETSNOOP,
         "--conns"] + args, stdout=stdout, stderr=subprocess.PIPE, universal_newlines=True,
        env=no_proxy_env())


def run_traffic(space):
    """TRAFFIC in the namespace -> (listening port, client port, its pid)."""
    traffic = subprocess.run(["nsenter", "--net=/proc/%d/ns/net" % space.pid,
                              sys.executable, "-c", TRAFFIC], stdout=subprocess.PIPE,
                             universal_newlines=True, timeout=30)
    port, client_port, pid = (int(x) for x in traffic.stdout.split())
    return port, client_port, pid


def test_conn_events_reach_syslog_and_webhook_in_ecs_form(space, tmp_path):
    """Every connection event is one RFC 5424 datagram with its ECS JSON (a bug that
    skipped conn events, or crashed on their missing process fields, fails); the
    webhook at --alert warn gets the listener on 0.0.0.0 only, as an ECS alert."""
    hook = in_netns(space.pid, Recorder)
    path = str(tmp_path / "log.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10)
    out = open(str(tmp_path / "out"), "w+")
    feed = start_conns_feed(space, ["--ecs", "--syslog", "unix:" + path, "--webhook",
                                    hook.url, "--alert", "warn"], out)
    try:
        assert "watching TCP connections" in feed.stderr.readline()
        port, client_port, _ = run_traffic(space)
        datagrams = []
        while True:             # listen, 2 opens, 3 closes (client, server, listener)
            datagrams.append(parse_5424(rx.recv(65536)))
            mine = [d for d in datagrams if port in (d[5]["source"]["port"],
                                                     d[5]["destination"]["port"])]
            if len([d for d in mine if d[4] == "close"]) == 3:
                break
    finally:
        feed.send_signal(signal.SIGINT)
        err = feed.communicate(timeout=30)[1]
        rx.close()
        hook.close()
    assert feed.returncode == 0 and "Traceback" not in err, err
    out.seek(0)
    printed = [json.loads(line) for line in out]
    listen = [d for d in mine if d[4] == "listen"]
    assert len(listen) == 1
    pri, _, _, _, _, ecs = listen[0]
    assert pri == 1 * 8 + 4, "a listener other hosts can reach: severity warning"
    assert ecs["event"]["kind"] == "alert" and ecs["event"]["severity"] == 47
    assert ecs["rule"]["name"] == ["new-listener"]
    assert (ecs["source"]["ip"], ecs["source"]["port"]) == ("0.0.0.0", port)
    assert ecs["network"] == {"transport": "tcp", "type": "ipv4"}
    assert ecs["event"]["dataset"] == "netsnoop.conns"
    closes = {d[5]["source"]["port"]: d[5] for d in mine if d[4] == "close"}
    client = closes[client_port]
    assert client["destination"]["port"] == port
    assert abs(client["source"]["bytes"] - PAYLOAD) <= 2        # SYN and FIN count 1 each
    assert client["event"]["type"] == ["end", "connection"] and client["event"]["kind"] == "event"
    assert [d for d in mine if d[4] == "open"], "the opens too"
    # the webhook: the warning only, its body the event as printed
    assert hook.bodies() == [e for e in printed if e.get("rule")
                             and e["source"]["port"] == port], hook.bodies()
    summary = printed[-1]["netsnoop"]["summary"]
    assert summary["delivery"]["webhook"]["delivered"] == 1
    assert summary["delivery"]["syslog"]["delivered"] >= 6
    assert "webhook http://127.0.0.1" in err and "SECRET-TOKEN" not in err


def test_new_listener_mail_names_the_connection(space, tmp_path):
    """--mail-to (default --alert warn): one mail, for the listener on 0.0.0.0, whose
    subject names the rule, the port and the process (a conn event has no ppid: the
    process events' subject would fail on it)."""
    controller, received = in_netns(space.pid, smtp_server)
    feed = start_conns_feed(space, ["--mail-to", "soc@example.org",
                                    "--smtp", "127.0.0.1:%d" % controller.port],
                            subprocess.DEVNULL)
    try:
        assert "watching TCP connections" in feed.stderr.readline()
        port, _, pid = run_traffic(space)
    finally:
        feed.send_signal(signal.SIGINT)
        err = feed.communicate(timeout=30)[1]
        controller.stop()
    assert feed.returncode == 0 and "Traceback" not in err, err
    assert len(received) == 1, [r.content[:300] for r in received]
    mail = email.message_from_bytes(received[0].content, policy=email.policy.default)
    assert mail["Subject"] == "netsnoop new-listener on %s: listen tcp 0.0.0.0:%d (pid %d " \
        "python3, uid %d)" % (socket.gethostname(), port, pid, os.getuid()), mail["Subject"]
    body = mail.get_content()
    assert body.startswith("netsnoop on %s: listen tcp 0.0.0.0:%d" % (socket.gethostname(), port))
    assert "warn new-listener: listens on 0.0.0.0:%d (every address), reachable from other " \
        "hosts" % port in body
    assert "mail to soc@example.org via 127.0.0.1:%d: 1 delivered" % controller.port in err
