"""Run under `unshare -n` by test_live_netns.py: build the namespace, hold its sockets.

Uses the same recipe as tools/capture_fixtures.py --netns (TEST-NET addresses, a veth
pair, a route via a gateway, a permanent neighbour, listeners, a loopback pair, raw and
ping sockets), prints one JSON line describing what it holds, then waits until its
stdin closes.
"""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
import capture_fixtures as recipe  # noqa: E402


def describe(sock):
    family = "inet6" if sock.family == socket.AF_INET6 else "inet"
    return {"inode": os.fstat(sock.fileno()).st_ino, "family": family,
            "local": list(sock.getsockname()[:2])}


def main():
    recipe.build_links()
    socks = recipe.open_sockets()
    routes_ready = recipe.wait_for_link_local_routes()
    print(json.dumps({"pid": os.getpid(), "routes_ready": routes_ready,
                      "ports": recipe.PORTS,
                      "sockets": {name: describe(s) for name, s in socks.items()}}),
          flush=True)
    sys.stdin.read()                    # until the test closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main())
