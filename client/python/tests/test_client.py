"""The Python client against a real tallyd: checkout, refusals, a daemon killed with
SIGKILL and started again, an admin's forced release, borrowing, and the README example."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import tally
from conftest import DEADLINE, Daemon, free_port, poll

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.py"


def test_checkout_holds_a_seat_until_the_block_ends(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "2")
    with tally.checkout("vray") as lease:
        assert re.fullmatch(r"[0-9a-f]{32}", lease.id)
        assert (lease.feature, lease.seats, lease.lost, lease.released) == ("vray", 1, None, False)
        assert lease.user == "owner@localhost"
        assert lease.expires_at > datetime.now(timezone.utc) > lease.granted_at.replace(year=2000)
        [vray] = tally.status("vray")
        assert (vray.feature, vray.total, vray.in_use, vray.available) == ("vray", 2, 1, 1)
        assert vray.as_dict()["in_use"] == 1
        assert [held["id"] for held in daemon.leases("vray")] == [lease.id]
    assert lease.released and lease.lost is None
    assert tally.status("vray")[0].in_use == 0
    assert daemon.leases("vray") == []
    lease.release()  # once more: nothing to do


def test_a_full_pool_raises_no_seat(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "nuke", "--seats", "1")
    with tally.Client() as client:
        held = client.checkout("nuke")
        with pytest.raises(tally.NoSeat) as refused:
            client.checkout("nuke")
        assert isinstance(refused.value, tally.Error)
        assert refused.value.code == "no_seat"
        assert "nuke" in refused.value.message
        held.release()
        client.checkout("nuke").release()
        with pytest.raises(tally.NotFound):
            client.checkout("no-such-feature")


def test_a_waiting_checkout_gets_a_seat_freed_meanwhile_or_raises_no_seat(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "nuke", "--seats", "1")
    with tally.Client() as client:
        held = client.checkout("nuke")
        with pytest.raises(tally.NoSeat) as refused:
            client.checkout("nuke", wait=0.3)
        assert "waited 300 ms" in refused.value.message
        got = []
        waiter = threading.Thread(target=lambda: got.append(client.checkout("nuke", wait="1m")))
        waiter.start()
        held.release()
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "the waiting checkout never got the freed seat"
        assert got and got[0].lost is None
        got[0].release()


def test_the_lease_outlives_a_kill_9_and_restart_of_tallyd(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    client = tally.Client()
    lease = client.checkout("vray")
    daemon.kill9()
    daemon.restart()
    # The restarted daemon gives the lease one ttl from its start; only a client that
    # resumed it and heartbeats moves its end further.
    [restored] = daemon.leases("vray")
    assert restored["id"] == lease.id
    poll(
        lambda: [l["expires_at"] for l in daemon.leases("vray")] > [restored["expires_at"]],
        "the client to resume its lease and heartbeat it",
    )
    assert lease.lost is None
    with pytest.raises(tally.NoSeat):
        client.checkout("vray")
    lease.release()
    assert daemon.leases("vray") == []
    client.close()


def test_an_admins_release_reaches_the_holder(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    with tally.checkout("vray") as lease:
        assert lease.wait_lost(timeout=0.2) is None
        daemon.cli("release", lease.id)
        assert lease.wait_lost(timeout=DEADLINE) == "released"
        assert lease.lost == "released"
        with pytest.raises(tally.LeaseLost) as lost:
            lease.check()
        assert lost.value.code == "lease_lost" and "released" in lost.value.message
    assert lease.lost == "released"
    assert tally.status("vray")[0].in_use == 0


def test_heartbeats_do_not_need_the_gil(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    with tally.checkout("vray") as lease:
        # Pure Python computation for twice the ttl, never releasing the GIL to C code.
        end = time.monotonic() + 6.0
        spins = 0
        while time.monotonic() < end:
            spins += 1
        assert lease.lost is None
        assert [l["id"] for l in daemon.leases("vray")] == [lease.id]


def test_waits_release_the_gil(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    with tally.checkout("vray") as lease:
        counted = []
        stop = threading.Event()

        def count() -> None:
            while not stop.is_set():
                counted.append(1)

        counter = threading.Thread(target=count)
        counter.start()
        try:
            before = len(counted)
            assert lease.wait_lost(timeout="1s") is None
            assert len(counted) - before > 1000
        finally:
            stop.set()
            counter.join()


def test_ctrl_c_interrupts_a_wait(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    with tally.checkout("vray") as lease:
        with pytest.raises(KeyboardInterrupt):
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            lease.wait_lost(timeout=DEADLINE)
        assert lease.lost is None


def test_borrow_verify_and_return(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "houdini", "--seats", "2", "--borrowable")
    assert not tally.verify("houdini")
    borrowed = tally.borrow("houdini", "1d")
    assert (borrowed.feature, borrowed.seats) == ("houdini", 1)
    assert Path(borrowed.token_file).is_file()
    verdict = tally.verify("houdini")
    assert verdict and verdict.checked == "offline" and "valid until" in verdict.reason
    assert tally.status("houdini")[0].borrowed == 1
    with tally.Client() as client:
        assert client.verify("houdini").checked == "server"
        with pytest.raises(ValueError, match="not a duration"):
            client.borrow("houdini", "forever")
        assert client.return_borrow("houdini") == 1
    assert not tally.verify("houdini").valid
    assert tally.status("houdini")[0].borrowed == 0


def test_errors_name_their_cause(daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tally.ConfigError) as missing:
        tally.Client(tmp_path / "nothing.toml")
    assert missing.value.code == "invalid" and isinstance(missing.value, tally.Invalid)
    assert "nothing.toml" in missing.value.message

    monkeypatch.delenv("TALLY_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    with pytest.raises(tally.ConfigError, match="TALLY_CONFIG"):
        tally.status()

    def client_file(name: str, server: str, token_file: Path) -> Path:
        path = tmp_path / name
        path.write_text(
            f'servers = ["{server}"]\n'
            f'ca = "{daemon.data_dir / "tls" / "ca.pem"}"\n'
            f'token_file = "{token_file}"\n'
        )
        return path

    owner_token = daemon.data_dir / "owner.token"
    nowhere = client_file("nowhere.toml", f"127.0.0.1:{free_port()}", owner_token)
    with pytest.raises(tally.Unreachable) as unreachable:
        tally.Client(nowhere)
    assert unreachable.value.code == "unreachable"

    wrong_token = tmp_path / "wrong.token"
    wrong_token.write_text("not-a-token\n")
    wrong_token.chmod(0o600)
    with pytest.raises(tally.Unauthenticated) as refused:
        tally.Client(client_file("wrong.toml", f"localhost:{daemon.port}", wrong_token))
    assert refused.value.code == "unauthenticated"

    client = tally.Client(daemon.client_toml)
    client.close()
    with pytest.raises(tally.Closed):
        client.status()


def test_the_readme_example_runs(daemon: Daemon) -> None:
    daemon.cli("entitlement", "add", "vray", "--seats", "1")
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=DEADLINE
    )
    assert run.returncode == 0, run.stderr
    assert "frame 10" in run.stdout
    assert daemon.leases("vray") == []


def test_the_stubs_name_everything_public() -> None:
    stubs = ast.parse((Path(tally.__file__).parent / "_tally.pyi").read_text())
    declared = {
        node.name: {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AnnAssign)) and hasattr(item, "name")}
        | {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
        for node in stubs.body
        if isinstance(node, ast.ClassDef)
    }
    for name in ("Client", "Lease", "FeatureStatus", "Borrow", "Verdict"):
        cls = getattr(tally, name)
        public = {member for member in dir(cls) if not member.startswith("_")}
        assert public <= declared[name], f"{name}: not in the stubs: {public - declared[name]}"
    assert set(tally.__all__) <= set(dir(tally))


def test_the_readme_shows_the_example() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks == [EXAMPLE.read_text()], "README.md's python block is not examples/example.py"
