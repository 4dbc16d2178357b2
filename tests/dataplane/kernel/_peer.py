"""
Traffic ends for the kernel-mode namespace tests, run inside a namespace:

    python _peer.py serve tcp|udp ADDRESS FIRST_PORT LAST_PORT SECONDS
        Listen on every port of the range; print "ready" once bound.  TCP:
        each connection first gets a line "PEER <ip> <port>" (the address
        the target sees the connection come from, and the port it arrived
        on), then its bytes echoed until EOF.  UDP: each datagram comes back
        prefixed with that line padded to 64 bytes.  Exits after SECONDS.

    python _peer.py send tcp|udp HOST PORT SIZE COUNT
        TCP: one connection sending SIZE bytes, reading the peer line and
        the echo.  UDP: COUNT datagrams of SIZE bytes from one socket, one
        reply awaited after each (1 s).  Prints JSON: the peer line and the
        bytes echoed back.

Bounded: at most 64 connections at once, 2 s socket timeouts, and the
server's own deadline.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time

HEADER = 64


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _peer_line(peer: tuple[str, int], port: int) -> bytes:
    return f"PEER {peer[0]} {port}\n".encode()


def _echo(conn: socket.socket, port: int, peer: tuple[str, int]) -> None:
    with conn:
        conn.settimeout(5)
        conn.sendall(_peer_line(peer, port))
        while data := conn.recv(65536):
            conn.sendall(data)


def serve(proto: str, address: str, first: int, last: int, seconds: float) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    socks = {}
    for port in range(first, last + 1):
        s = socket.socket(_family(address), kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        if proto == "tcp":
            s.listen(64)
        socks[s] = port
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    active = threading.BoundedSemaphore(64)
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(socks), [], [], left)
        for s in readable:
            port = socks[s]
            if proto == "udp":
                data, peer = s.recvfrom(65536)
                s.sendto(_peer_line(peer, port).ljust(HEADER) + data, peer)
                continue
            conn, peer = s.accept()
            if not active.acquire(blocking=False):
                conn.close()
                continue

            def run(c: socket.socket = conn, p: int = port, a: tuple[str, int] = peer) -> None:
                try:
                    _echo(c, p, a)
                except OSError:
                    pass
                finally:
                    active.release()

            threading.Thread(target=run, daemon=True).start()


def send(proto: str, host: str, port: int, size: int, count: int) -> dict[str, object]:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    if proto == "tcp":
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            received = b""
            while data := s.recv(65536):
                received += data
        line, _, echoed = received.partition(b"\n")
        return {"peer": line.decode(), "echoed": len(echoed), "intact": echoed == payload}
    with socket.socket(_family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        peer, echoed, intact = "", 0, True
        for _ in range(count):
            s.sendto(payload, (host, port))
            try:
                reply = s.recv(65536)
            except TimeoutError:
                continue
            peer = reply[:HEADER].decode().strip()
            echoed += len(reply) - HEADER
            intact = intact and reply[HEADER:] == payload
        return {"peer": peer, "echoed": echoed, "intact": intact}


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        serve(argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5]))
    else:
        print(json.dumps(send(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]))))


if __name__ == "__main__":
    main(sys.argv[1:])
