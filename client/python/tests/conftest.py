"""A real tallyd for the tests, as a process the tests can kill -9 and start again.

The daemon and the `tally` CLI are the binaries named by TALLYD and TALLY_CLI, else
target/debug/tallyd and target/debug/tally of this workspace (`cargo build --bins`).
Readiness is the daemon's own READY=1 on a NOTIFY_SOCKET, never a sleep.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
#: How long any awaited condition may take before the test fails.
DEADLINE = 60.0
#: Leases lapse this long after their last heartbeat; short, so that a test can tell a lease
#: that is heartbeated from one that is not.
TTL = "3s"


def binary(variable: str, name: str) -> str:
    path = os.environ.get(variable) or str(ROOT / "target" / "debug" / name)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no {name} at {path}: build it (cargo build --bins) or set {variable} to its path"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(condition: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Calls ``condition`` until it returns something true, failing after ``deadline``."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


class Daemon:
    """tallyd on a free loopback port with a data directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.port = free_port()
        self.config = directory / "tallyd.toml"
        self.config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f"data_dir = {json.dumps(str(self.data_dir))}\n"
            '[tls]\nnames = ["localhost", "127.0.0.1"]\n'
            f'[leases]\nttl = "{TTL}"\nsweep = "200ms"\n'
        )
        self.tallyd = binary("TALLYD", "tallyd")
        self.cli_path = binary("TALLY_CLI", "tally")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def client_toml(self) -> Path:
        return self.data_dir / "client.toml"

    def start(self) -> None:
        """Starts the daemon and waits for its READY=1."""
        notify_path = self.directory / f"notify-{os.getpid()}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(DEADLINE)
            log = open(self.directory / "tallyd.log", "ab")
            self.process = subprocess.Popen(
                [self.tallyd, "--config", str(self.config)],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path), "TALLY_LOG": "info"},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            log.close()
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
            except socket.timeout:
                self.kill9()
                pytest.fail(f"tallyd did not get ready; its log:\n{self.log()}")
        notify_path.unlink()

    def kill9(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill9()
        self.start()

    def log(self) -> str:
        return (self.directory / "tallyd.log").read_text(errors="replace")

    def cli(self, *args: str, check: bool = True) -> Dict[str, Any]:
        """Runs ``tally --config CLIENT --json ARGS`` as the owner; its JSON document."""
        out = subprocess.run(
            [self.cli_path, "--config", str(self.client_toml), "--json", *args],
            capture_output=True,
            timeout=DEADLINE,
        )
        document = json.loads(out.stdout) if out.stdout.strip() else {}
        if check and out.returncode != 0:
            pytest.fail(f"tally {' '.join(args)} exited {out.returncode}: {out.stdout!r} {out.stderr!r}")
        return document

    def leases(self, feature: str) -> List[Dict[str, Any]]:
        return self.cli("leases", "--feature", feature)["leases"]


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A running tallyd; the client file it wrote is the environment's (TALLY_CONFIG), and
    borrows are kept in a directory of the test's own."""
    started = Daemon(tmp_path)
    monkeypatch.setenv("TALLY_CONFIG", str(started.client_toml))
    data = tmp_path / "client-data"
    data.mkdir(mode=0o700)
    monkeypatch.setenv("TALLY_DATA_DIR", str(data))
    monkeypatch.setenv("TALLY_MACHINE_ID", "python-tests")
    yield started
    started.kill9()
