"""Start the whole stack as processes (as ``make run`` does) for tests in tests/."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gatehouse.kit.config import SERVICES


@functools.cache
def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()
_pick = random.Random()


def free_port() -> int:
    """A loopback port nothing listens on, for a server that binds it a moment later.

    Picked below the kernel's ephemeral range: the ports the kernel hands out itself (outgoing
    connections, binds to port 0) come from that range, so one of them cannot take this port
    between the check and the server's bind (a port picked with a bind to port 0 once was taken
    in between: "Address already in use"). A port is handed out once per test process.
    """
    top = _ephemeral_start()
    for _ in range(200):
        port = _pick.randrange(max(1024, top - 12_000), top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found below {top}")


@dataclass
class Stack:
    process: subprocess.Popen
    data_dir: Path
    addresses: dict[str, str]
    output: Path

    def child_pids(self) -> dict[str, int]:
        return json.loads((self.data_dir / "run.json").read_text())["children"]

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def start_stack(data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> Stack:
    """Run ``gatehouse-run`` on free ports; returns once it printed ``ready`` (or raises)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    addresses = {svc: f"127.0.0.1:{free_port()}" for svc in (*SERVICES, "gateway")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    env.update({f"GATEHOUSE_{svc.upper()}_ADDRESS": addr for svc, addr in addresses.items()})
    env["GATEHOUSE_DATA_DIR"] = str(data_dir)
    env.update(extra_env or {})
    output = data_dir / "launcher.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.kit.launcher"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    stack = Stack(proc, data_dir, addresses, output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "gatehouse-run: ready" in stack.log():
            return stack
        if proc.poll() is not None:
            raise RuntimeError(
                f"launcher exited with {proc.returncode}:\n{stack.log()}\n{_service_logs(data_dir)}"
            )
        time.sleep(0.1)
    stack.stop()
    raise TimeoutError(f"stack not ready in {timeout}s:\n{stack.log()}\n{_service_logs(data_dir)}")


def _service_logs(data_dir: Path) -> str:
    parts = []
    for f in sorted((data_dir / "logs").glob("*.log")) if (data_dir / "logs").exists() else []:
        parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
    return "\n".join(parts)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
