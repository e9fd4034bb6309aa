#!/usr/bin/env python3
"""Capture a fixture tree for netsnoop's tests from this machine.

    tools/capture_fixtures.py --pid PID --name NAME     capture an existing process
    tools/capture_fixtures.py --netns [--name NAME]     as root: build a private network
                                                        namespace (unshare -n), open known
                                                        sockets in it, capture it

The tree is laid out for `netsnoop.py --proc DIR`:

    fixtures/NAME/proc/PID/net/{tcp,tcp6,udp,...,stat/arp_cache}
    fixtures/NAME/proc/PID/{stat,status,cmdline,comm}
    fixtures/NAME/proc/PID/fd/N -> socket:[INODE]   (real symlinks; pipe:/anon_inode: kept,
                                                     paths to files are not copied)
    fixtures/NAME/proc/PID/ns/net -> net:[INODE]
    fixtures/NAME/capture.json                       what independent tools (ss, ip, nstat)
                                                     said at the same moment, the kernel
                                                     release, the PIDs, the owned inodes

so `netsnoop.py --proc fixtures/NAME/proc PID --once` reproduces the capture and the
tests can compare the parsers with what `ss`/`ip` printed.  With --netns, a second
process in the namespace (a `sleep`) that owns no socket is captured too.

Only addresses from the documentation ranges (TEST-NET, 2001:db8::/32) and loopback
are used inside the namespace; no packet leaves it.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

NET_FILES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6",
             "icmp", "icmp6", "arp", "dev", "netstat", "snmp", "snmp6", "route",
             "ipv6_route", "softnet_stat", "stat/arp_cache")
PID_FILES = ("stat", "status", "cmdline", "comm")
KEPT_LINK_PREFIXES = ("socket:[", "pipe:[", "anon_inode:")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "fixtures")

# The namespace the --netns capture builds (also used by tests/test_live_netns.py's helper).
V4_ADDR, V4_GW, V4_ROUTE = "192.0.2.1", "192.0.2.254", "198.51.100.0/24"
V6_ADDR = "2001:db8::1"
GW_LLADDR = "02:00:00:00:00:fe"
PORTS = {"tcp4": 40001, "tcp6": 40002, "udp4": 40003, "udp6": 40004, "pair": 40005,
         "tcp6only": 40006, "udpconn": 40007, "closed": 40009}


def read_whole(path):
    """One read to the end: seq files are only row-consistent (procfs#576)."""
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)


def copy_file(src, dst):
    try:
        data = read_whole(src)
    except OSError:
        return False                    # absent here (IPv6 off, arp_cache outside init_net)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as f:
        f.write(data)
    return True


def copy_fd_links(src_dir, dst_dir):
    """fd/N links: socket/pipe/anon targets as they are; file paths are not copied."""
    os.makedirs(dst_dir, exist_ok=True)
    sockets = []
    for name in sorted(os.listdir(src_dir), key=int):
        try:
            target = os.readlink(os.path.join(src_dir, name))
        except OSError:
            continue                    # closed since the listing
        if target.startswith(KEPT_LINK_PREFIXES):
            os.symlink(target, os.path.join(dst_dir, name))
            if target.startswith("socket:["):
                sockets.append(int(target[8:-1]))
    if not os.listdir(dst_dir):
        # git keeps no empty directory; without fd/ the tree would say "cannot read fd"
        open(os.path.join(dst_dir, ".gitkeep"), "w").close()
    return sockets


def capture_pid(proc, pid, dest, net_of=None):
    """Copy PID's files from `proc` into dest/PID; -> sorted socket inodes it holds.

    net_of: an already captured PID in the same namespace; PID's net/ becomes a
    symlink to that one's (the kernel shows the same files), which keeps trees small.
    """
    src, dst = os.path.join(proc, str(pid)), os.path.join(dest, str(pid))
    if os.path.exists(dst):
        shutil.rmtree(dst)
    if net_of is None:
        for name in NET_FILES:
            copy_file(os.path.join(src, "net", name), os.path.join(dst, "net", name))
    else:
        os.makedirs(dst)
        os.symlink(os.path.join("..", str(net_of), "net"), os.path.join(dst, "net"))
    for name in PID_FILES:
        copy_file(os.path.join(src, name), os.path.join(dst, name))
    os.makedirs(os.path.join(dst, "ns"))
    os.symlink(os.readlink(os.path.join(src, "ns", "net")), os.path.join(dst, "ns", "net"))
    return sorted(copy_fd_links(os.path.join(src, "fd"), os.path.join(dst, "fd")))


def tool_output(argv):
    """What a tool prints (parsed when it is JSON), or None when it is missing or fails."""
    if not shutil.which(argv[0]):
        return None
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         universal_newlines=True)
    if res.returncode != 0:
        return None
    if "-j" in argv or "--json" in argv:
        return json.loads(res.stdout)
    return res.stdout.splitlines()


def independent_views(prefix=()):
    """ss / ip / nstat as run in the captured namespace (prefix: nsenter ...)."""
    prefix = list(prefix)
    views = {}
    for key, argv in (("ss", ["ss", "-tanuwH"]),
                      ("ip_route", ["ip", "-j", "route"]),
                      ("ip6_route", ["ip", "-j", "-6", "route", "show", "table", "all"]),
                      ("ip_neigh", ["ip", "-j", "-4", "neigh"]),
                      ("ip_link", ["ip", "-j", "-s", "link"]),
                      ("nstat", ["nstat", "-asz", "--json"])):
        views[key] = tool_output(prefix + argv)
    return views


def write_meta(out_dir, meta):
    with open(os.path.join(out_dir, "capture.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def capture(out, name, pids, extra=None, proc="/proc", tool_prefix=()):
    """Capture PIDs into out/name/proc; the first PID is the one the tests look at.

    ss/ip/nstat run just before ("views") and just after ("views_after") the copy:
    a counter in the copied files lies between the two.
    """
    out_dir = os.path.join(out, name)
    dest = os.path.join(out_dir, "proc")
    os.makedirs(dest, exist_ok=True)
    before = independent_views(tool_prefix)
    owned, seen_ns = {}, {}
    for pid in pids:
        netns = os.readlink(os.path.join(proc, str(pid), "ns", "net"))
        owned[str(pid)] = capture_pid(proc, pid, dest, seen_ns.get(netns))
        seen_ns.setdefault(netns, pid)
    meta = {"pid": pids[0], "pids": pids, "owned_inodes": owned,
            "kernel": platform.release(), "time": time.time(),
            "tool": "tools/capture_fixtures.py",
            "views": before, "views_after": independent_views(tool_prefix)}
    meta.update(extra or {})
    write_meta(out_dir, meta)
    return out_dir


# --- the private namespace -------------------------------------------------

def sh(*argv):
    subprocess.run(list(argv), check=True)


def build_links():
    """lo up, a veth pair with TEST-NET addresses, a gateway route, a permanent neighbour."""
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    sh("ip", "addr", "add", V4_ADDR + "/24", "dev", "v0")
    sh("ip", "-6", "addr", "add", V6_ADDR + "/64", "dev", "v0", "nodad")
    sh("ip", "link", "set", "v0", "up")
    sh("ip", "link", "set", "v1", "up")
    sh("ip", "route", "add", V4_ROUTE, "via", V4_GW)
    sh("ip", "neigh", "add", V4_GW, "lladdr", GW_LLADDR, "dev", "v0", "nud", "permanent")
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 2147483647")


def open_sockets():
    """Known sockets of every kind, with a little traffic; -> {name: socket}.

    The caller keeps the dict alive.  Names say what each one is; the tests
    compare them with ss and with netsnoop.
    """
    socks = {}

    def make(name, family, kind, proto=0, bind=None):
        s = socket.socket(family, kind, proto)
        if bind is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(bind)
        socks[name] = s
        return s

    make("tcp4_listen", socket.AF_INET, socket.SOCK_STREAM, bind=(V4_ADDR, PORTS["tcp4"])
         ).listen(8)
    make("tcp6_listen_dual", socket.AF_INET6, socket.SOCK_STREAM, bind=("::", PORTS["tcp6"])
         ).listen(8)
    make("tcp6_listen_v6only", socket.AF_INET6, socket.SOCK_STREAM,
         bind=(V6_ADDR, PORTS["tcp6only"])).listen(8)
    make("udp4", socket.AF_INET, socket.SOCK_DGRAM, bind=("127.0.0.1", PORTS["udp4"]))
    make("udp6", socket.AF_INET6, socket.SOCK_DGRAM, bind=(V6_ADDR, PORTS["udp6"]))
    udp_conn = make("udp4_connected", socket.AF_INET, socket.SOCK_DGRAM,
                    bind=("127.0.0.1", PORTS["udpconn"]))
    udp_conn.connect(("127.0.0.1", PORTS["udp4"]))
    server = make("tcp_pair_listen", socket.AF_INET, socket.SOCK_STREAM,
                  bind=("127.0.0.1", PORTS["pair"]))
    server.listen(4)
    socks["tcp_pair_client"] = socket.create_connection(("127.0.0.1", PORTS["pair"]))
    socks["tcp_pair_server"] = server.accept()[0]
    # 100 bytes the server never reads: Recv-Q 100 on its end
    socks["tcp_pair_client"].sendall(b"x" * 100)
    # a closed connection whose active closer stays in TIME_WAIT (inode 0, owned by nobody)
    closer = socket.create_connection(("127.0.0.1", PORTS["pair"]))
    peer = server.accept()[0]
    closer.close()
    peer.close()
    make("raw4_icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    make("raw6_icmpv6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    ping = make("ping4", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP,
                bind=("127.0.0.1", 0))
    make("ping6", socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6, bind=("::1", 0))
    # counters: datagrams in, a datagram to a closed port (UdpNoPorts, ICMP type 3 out),
    # an echo request on the ping socket (ICMP type 8 out, type 0 in)
    udp_conn.send(b"hello")
    socks["udp4"].sendto(b"nobody", ("127.0.0.1", PORTS["closed"]))
    ping.sendto(b"\x08\x00\x00\x00\x00\x00\x00\x01ping", ("127.0.0.1", 0))
    time.sleep(0.05)
    return socks


def wait_for_link_local_routes(timeout=5.0):
    """fe80::/64 routes of the veths appear 1-2 s after link up (docs/procfs.md,
    "Testing traps")."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = read_whole("/proc/self/net/ipv6_route").decode()
        if sum(1 for ln in text.splitlines() if ln.startswith("fe80") and
               ln.split()[-1] in ("v0", "v1")) >= 2:
            return True
        time.sleep(0.1)
    return False


def inside_netns(out, name):
    build_links()
    socks = open_sockets()
    other = subprocess.Popen(["sleep", "60"])
    try:
        wait_for_link_local_routes()
        extra = {"namespace": "private (unshare -n), built by capture_fixtures.py --netns",
                 "other_pid_owns_nothing": other.pid, "ports": PORTS}
        out_dir = capture(out, name, [os.getpid(), other.pid], extra)
    finally:
        other.kill()
        other.wait()
        for s in socks.values():
            s.close()
    print(out_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pid", type=int, help="capture this existing process")
    p.add_argument("--netns", action="store_true",
                   help="as root: build a private network namespace and capture it")
    p.add_argument("--name", help="fixture name (directory under --out)")
    p.add_argument("--out", default=DEFAULT_OUT, help="fixtures directory")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inside:
        inside_netns(args.out, args.name)
        return 0
    if args.netns:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            p.error("--netns needs root and unshare")
        name = args.name or "netns_live"
        return subprocess.call(["unshare", "-n", sys.executable, os.path.abspath(__file__),
                                "--inside", "--out", args.out, "--name", name])
    if args.pid is None:
        p.error("give --pid PID or --netns")
    print(capture(args.out, args.name or "pid_%d" % args.pid, [args.pid],
                  tool_prefix=["nsenter", "--net=/proc/%d/ns/net" % args.pid]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
