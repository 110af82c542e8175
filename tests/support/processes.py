"""Starting the real menos processes (bin/api, bin/worker, bin/menos) for acceptance tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    every: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Menos:
    """The processes of one test, all on one database; stopped at teardown."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MENOS_")},
            "MENOS_DATABASE_URL": database_url,
            "MENOS_HOME": str(workdir / "home"),
            "MENOS_LOG_FORMAT": "json",
            "MENOS_CALLBACK_ALLOW_PRIVATE": "true",
            "MENOS_WORKER_POLL_S": "0.5",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.base_url = ""

    def spawn(self, *argv: str, **env: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{Path(argv[0]).name}-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.procs.append(proc)
        return proc

    def api(self, **env: str) -> subprocess.Popen[bytes]:
        port = free_port()
        proc = self.spawn(str(BIN / "api"), MENOS_PORT=str(port), **env)
        self.base_url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"bin/api exited with {proc.returncode}: {self.logs()}")
            try:
                return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what="bin/api to answer /health")
        return proc

    def worker(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn(str(BIN / "worker"), *args, **env)

    def command(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "menos"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )

    def key(self, owner: str, *, admin: bool = False) -> dict[str, Any]:
        args = ["keys", "create", "--owner", owner, "--json"] + (["--admin"] if admin else [])
        done = self.command(*args)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1
        created: dict[str, Any] = json.loads(lines[0])
        return created

    def client(self, api_key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=30, headers={"authorization": f"Bearer {api_key}"}
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.workdir.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def sql(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query from synchronous test code."""
    import asyncio

    from menos import db

    async def run() -> list[dict[str, Any]]:
        conn = await db.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())
