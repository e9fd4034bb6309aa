"""Run under `unshare -n` by test_conns.py: a TCP server and a client in a private
network namespace, driven by commands on stdin, one JSON line answered per command.

The server is a child process (its own PID: the owner of the accepted sockets); the
client is this process.  Each connection starts with an 8-byte header: how many
bytes the server sends back at once.  Commands:

    hold K          K connections left open (connection i sends 1000*(i+1) bytes and
                    gets 100*(i+1) back); a child shares the first one (two holders)
    burst N LIFE PAYLOAD PAR   N connections, PAR at a time: connect, send PAYLOAD,
                    live LIFE seconds, close; answers the client ports
    rate BYTES SECONDS         one connection sending BYTES evenly over SECONDS, left open
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

HEADER = struct.Struct("!Q")


def serve_one(conn):
    with conn:
        head = b""
        while len(head) < HEADER.size:
            part = conn.recv(HEADER.size - len(head))
            if not part:
                return
            head += part
        reply = HEADER.unpack(head)[0]
        if reply:
            conn.sendall(b"r" * reply)
        while conn.recv(1 << 16):
            pass


def server(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def connect(port, payload, reply=0):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(HEADER.pack(reply) + b"c" * payload)
    got = 0
    while got < reply:
        got += len(sock.recv(1 << 16))
    return sock


def burst(port, n, life, payload, parallel):
    """n connections, `parallel` at a time, each living `life` s -> their client ports."""
    ports, lock = [], threading.Lock()

    def one():
        sock = connect(port, payload)
        with lock:
            ports.append(sock.getsockname()[1])
        time.sleep(life)
        sock.close()

    for start in range(0, n, parallel):
        threads = [threading.Thread(target=one) for _ in range(min(parallel, n - start))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return ports


def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    server_pid = os.fork()
    if server_pid == 0:
        server(listener)
    listener.close()
    kept, children = [], []
    print(json.dumps({"pid": os.getpid(), "server_pid": server_pid, "port": port}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "hold":
            conns = []
            for i in range(int(cmd[1])):
                sock = connect(port, 1000 * (i + 1), 100 * (i + 1))
                kept.append(sock)
                conns.append({"port": sock.getsockname()[1], "inode": os.fstat(sock.fileno()).st_ino,
                              "sent": HEADER.size + 1000 * (i + 1), "received": 100 * (i + 1)})
            sharer = os.fork()
            if sharer == 0:             # holds the inherited sockets, first of all conns[0]
                time.sleep(3600)
                os._exit(0)
            children.append(sharer)
            answer = {"conns": conns, "sharer_pid": sharer}
        elif cmd[0] == "burst":
            answer = {"ports": burst(port, int(cmd[1]), float(cmd[2]), int(cmd[3]),
                                     int(cmd[4]))}
        elif cmd[0] == "rate":
            total, seconds = int(cmd[1]), float(cmd[2])
            sock = connect(port, 0)
            chunk = total // 100
            started = time.monotonic()
            for i in range(100):
                sock.sendall(b"d" * chunk)
                time.sleep(max(0.0, started + seconds * (i + 1) / 100 - time.monotonic()))
            kept.append(sock)
            answer = {"port": sock.getsockname()[1], "sent": HEADER.size + chunk * 100}
        else:
            answer = {"error": "unknown command"}
        print(json.dumps(answer), flush=True)
    for pid in children + [server_pid]:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
