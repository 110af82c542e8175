"""A stand-in for `socket.getaddrinfo` whose DNS server answers for one name only."""

from __future__ import annotations

import socket
import threading
from typing import Any


class SilentDNS:
    """`socket.getaddrinfo` for names under .example: `fast.example` answers at once, any
    other name only once `release` is set (a resolver that does not answer), and then fails."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        if host != "fast.example":
            self.release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
