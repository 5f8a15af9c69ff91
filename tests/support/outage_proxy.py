"""A TCP proxy that can go down: the store outage of the worker conformance suites (Rust,
Python, Ruby and C all start this one program in front of the real PostgreSQL server).

    python3 tests/support/outage_proxy.py URL [DOWN_SECONDS]

Listens on a free port of 127.0.0.1 and forwards each connection to the server of URL (a
``postgres://`` URL; port 5432 if it names none). Its first line on stdout is ``<pid> <URL>``:
its own pid and the URL with the proxy's address in place of the server's. On SIGUSR1 it goes
down for DOWN_SECONDS (default 1.5): every open connection is cut and new ones are closed as soon
as they are accepted; then it forwards again. Once it is down it prints ``down`` on a line of its
own: a client reads that line before it goes on, so that the outage has begun when its ``cut``
returns (the signal alone is handled whenever the proxy gets to it). On SIGTERM, or when stdin
closes, it prints ``cut=<connections cut> refused=<connections refused>`` and exits.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import urllib.parse


class Proxy:
    def __init__(self, target: tuple[str, int], down_for: float) -> None:
        self.target, self.down_for = target, down_for
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.down_until = 0.0
        self.cut = self.refused = 0
        self.listener = socket.create_server(("127.0.0.1", 0))

    def go_down(self, *_: object) -> None:
        with self.lock:
            self.down_until = time.monotonic() + self.down_for
            doomed, self.open = self.open, set()
            self.cut += len(doomed) // 2
        for s in doomed:
            _close(s)
        print("down", flush=True)

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                down = time.monotonic() < self.down_until
                if down:
                    self.refused += 1
            if down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(src, dst), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with self.lock:
            self.open.discard(src)
            self.open.discard(dst)
        _close(src)
        _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def main() -> int:
    url = urllib.parse.urlsplit(sys.argv[1])
    proxy = Proxy((url.hostname or "127.0.0.1", url.port or 5432),
                  float(sys.argv[2]) if len(sys.argv) > 2 else 1.5)
    signal.signal(signal.SIGUSR1, proxy.go_down)
    signal.signal(signal.SIGTERM, _stop)
    threading.Thread(target=proxy.serve, daemon=True).start()
    user = f"{url.username}@" if url.username else ""
    netloc = f"{user}127.0.0.1:{proxy.listener.getsockname()[1]}"
    print(os.getpid(), urllib.parse.urlunsplit(url._replace(netloc=netloc)), flush=True)
    try:
        sys.stdin.read()
    except (_Stop, OSError):
        pass
    print(f"cut={proxy.cut} refused={proxy.refused}", flush=True)
    return 0


class _Stop(Exception):
    pass


def _stop(*_: object) -> None:
    raise _Stop


if __name__ == "__main__":
    sys.exit(main())
