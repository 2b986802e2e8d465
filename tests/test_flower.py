"""The Flower transport runs the engine's own ClientFn/AggregateFn: a real SuperLink and two SuperNodes on loopback
must end where ``engine.simulate`` ends with the same functions.

Needs the ``federated`` extra; without Flower the module is skipped. The processes are the deployment's own
commands (``flower-superlink``, ``flower-supernode``, ``flwr run``), started from this interpreter's bin folder on
free local ports, so the test exercises exactly what a hospital network would run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr", reason="Flower is the optional 'federated' extra: pip install -e '.[federated]'")

from macro.federated import flower_app  # noqa: E402  (needs flwr)
from macro.federated.engine import simulate  # noqa: E402

TASK = "macro.federated.flower_app:demo_task"
CLIENTS, ROUNDS = 2, 2


def test_result_survives_the_message_round_trip():
    task = flower_app.demo_task({})
    result = task.client_fn(task.init_state, 1, 0)
    back = flower_app.content_to_result(flower_app.result_to_content(result))
    assert (back.client, back.n_samples, back.stats) == (result.client, result.n_samples, result.stats)
    for key, value in result.state.items():
        assert torch.equal(back.state[key], value)
        assert back.state[key].dtype == value.dtype


def _free_ports(n: int) -> list[int]:
    """Ports the kernel reports free right now; held open together so the n ports differ."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (Flower shuts its SuperExec down on it), then SIGKILL; always reap, because the detached SuperExec
    children only notice their parent is gone once it is no longer a zombie."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it may exit between the poll and the signal
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stragglers(ports: list[int]) -> list[int]:
    """PIDs of Flower helpers (SuperExec, ServerApp, ClientApp processes run in sessions of their own) still attached
    to this test's ports."""
    marks = [f"127.0.0.1:{p}".encode() for p in ports]
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            args = cmd.split(b"\0")
            if any(b"flwr" in a or b"flower" in a for a in args) and any(m in args for m in marks):
                pids.append(int(entry.name))
    return pids


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Submit the run only once the SuperLink accepts connections (the SuperNodes retry on their own)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"SuperLink not listening on {port} (exit code {proc.poll()})")


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in paths if p.exists())


@pytest.mark.slow
def test_flower_loopback_matches_simulation(tmp_path):
    bin_dir = Path(sys.executable).parent
    link, *node_ports = _free_ports(1 + CLIENTS)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    out = tmp_path / "final.safetensors"
    app = tmp_path / "app"
    flower_app.write_app(app, TASK, out, num_clients=CLIENTS, num_rounds=ROUNDS)

    commands = {
        "superlink": [
            bin_dir / "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link),
            "--disable-runtime-dependency-installation",
        ]
    }
    for client, port in enumerate(node_ports):
        commands[f"supernode{client}"] = [
            bin_dir / "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{link}",
            "--port",
            str(port),
            "--node-config",
            f"partition-id={client}",
        ]
    logs = [tmp_path / f"{name}.log" for name in [*commands, "flwr-run"]]
    procs: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        for name, cmd in commands.items():
            with open(tmp_path / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [str(c) for c in cmd],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=tmp_path,
                        start_new_session=True,
                    )
                )
        _wait_listening(link, procs[0])
        with open(tmp_path / "flwr-run.log", "wb") as log:  # --stream: returns once the run has finished
            try:
                run = subprocess.run(
                    [str(bin_dir / "flwr"), "run", str(app), "loopback", "--stream"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=tmp_path,
                    timeout=240,
                )
            except subprocess.TimeoutExpired:
                pytest.fail("flwr run timed out\n" + _logs(logs))
        # flwr run exits 0 even when the ServerApp raised, so the written state is the success signal
        assert run.returncode == 0, _logs(logs)
        assert out.exists(), _logs(logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        deadline = time.monotonic() + 10
        while (left := _stragglers([link, *node_ports])) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    print(f"flower loopback: {CLIENTS} clients x {ROUNDS} rounds in {time.monotonic() - start:.1f} s")

    task = flower_app.demo_task({})
    history = []
    expected = simulate(
        task.init_state,
        list(range(CLIENTS)),
        ROUNDS,
        task.client_fn,
        task.aggregate_fn,
        on_round=lambda _r, _s, results: history.append(results),
    )
    got = load_file(str(out))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])

    rounds = json.loads(out.with_suffix(".rounds.json").read_text())  # the stats crossed the wire intact
    assert [r["round"] for r in rounds] == list(range(ROUNDS))
    assert [[(c["client"], c["n_samples"], c["stats"]["round"]) for c in r["clients"]] for r in rounds] == [
        [(c.client, c.n_samples, c.stats["round"]) for c in results] for results in history
    ]
    assert [c["stats"]["loss"] for r in rounds for c in r["clients"]] == pytest.approx(
        [c.stats["loss"] for results in history for c in results]
    )
