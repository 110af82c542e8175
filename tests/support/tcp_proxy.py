"""A TCP proxy on 127.0.0.1 that can be cut and restored: the database "goes down"."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards connections to (host, port) while `up`; `cut()` drops every connection and
    `stall()` holds what they carry until `restore()`."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.flowing = threading.Event()
        self.flowing.set()

    def cut(self) -> None:
        """Refuse new connections and close the open ones."""
        self.up = False
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._conns.clear()
        self.flowing.set()  # what a stall held now meets closed sockets

    def restore(self) -> None:
        self.up = True
        self.flowing.set()

    def stall(self) -> None:
        """Keep every connection open but pass nothing on: a database that stops answering."""
        self.flowing.clear()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            if not self.up:
                client.close()
                upstream.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        for sock in (src, dst):  # one side ended: end the whole connection (shutdown wakes recv)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def running(dsn: str) -> Iterator[tuple[Proxy, str]]:
    """A proxy to the database of `dsn` for the duration of the block, and the DSN through it."""
    parts = urlsplit(dsn)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        proxy.cut()
        proxy.listener.close()
