"""``gatehouse-run``: start the whole deployment on one machine (what ``make run`` calls).

Starts identity, authz, audit and tenancy as child processes on embedded SQLite files
in the data directory, waits until each reports SERVING through ``grpc.health.v1``,
then starts the HTTP/JSON gateway and waits for its ``/readyz``, runs first-time setup
on an empty deployment,
prints a banner, and then supervises: a child that dies is reported and brings the
others down (exit code 1); Ctrl-C or SIGTERM stops every child cleanly (exit code 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.kit.config import PREFIX, SERVICES, ConfigError, Settings

START_ORDER = ("identity", "authz", "audit", "tenancy")
assert set(START_ORDER) == set(SERVICES)
GATEWAY = "gateway"  # started once every gRPC service is SERVING


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gatehouse-run",
        description=(
            "Start every Gatehouse service on this machine with embedded SQLite, wait until "
            "each is healthy, bootstrap an empty deployment, and supervise until Ctrl-C. "
            "Addresses, database URLs and the data directory come from GATEHOUSE_* "
            "environment variables (see README.md, 'Configuration')."
        ),
    )
    parser.add_argument(
        "--data-dir",
        help="where databases, keys and logs live (default: $GATEHOUSE_DATA_DIR or ./.gatehouse)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every service to report SERVING (default: 60)",
    )
    parser.add_argument(
        "--logs",
        choices=("file", "stderr"),
        default="file",
        help="send service logs to DATA_DIR/logs/<service>.log (default) or to this terminal",
    )
    return parser.parse_args(argv)


class Launcher:
    def __init__(self, data_dir: Path, logs: str, env: dict[str, str]):
        self.data_dir = data_dir
        self.logs = logs
        self.env = env
        self.children: dict[str, subprocess.Popen] = {}
        self._log_files = []

    def start(self, service: str) -> None:
        env = dict(self.env)
        env[PREFIX + "DATA_DIR"] = str(self.data_dir)
        if self.logs == "file":
            log_dir = self.data_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"{service}.log", "ab")
            self._log_files.append(out)
        else:
            out = None
        self.children[service] = subprocess.Popen(
            [sys.executable, "-m", f"gatehouse_{service}"], env=env, stdout=out, stderr=out
        )
        self._write_state()

    def _write_state(self) -> None:
        state = {"launcher_pid": os.getpid(), "children": {s: p.pid for s, p in self.children.items()}}
        (self.data_dir / "run.json").write_text(json.dumps(state, indent=2))

    def dead_child(self) -> tuple[str, int] | None:
        for service, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                return service, code
        return None

    def stop_all(self, grace: float = 8.0) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.children.values():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._log_files:
            f.close()


def wait_serving(address: str, deadline: float, is_alive) -> bool:
    """Poll ``grpc.health.v1`` at ``address`` until SERVING, the deadline, or the child's death."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not is_alive():
                return False
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def wait_http_ready(address: str, deadline: float, is_alive) -> bool:
    """Poll ``http://address/readyz`` until 200, the deadline, or the child's death."""
    url = f"http://{address}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    while time.monotonic() < deadline:
        if not is_alive():
            return False
        try:
            with opener.open(url, timeout=1.0) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def _banner(settings: Settings, data_dir: Path, setup_note: str) -> str:
    lines = ["", "Gatehouse is running.", ""]
    for service in START_ORDER:
        lines.append(f"  {service:<9} grpc://{settings.address_of(service)}")
    gateway = settings.address_of(GATEWAY)
    lines.append(f"  {GATEWAY:<9} http://{gateway}   (OpenAPI: http://{gateway}/openapi.json)")
    lines += [
        "",
        f"  data      {data_dir}   (logs in {data_dir / 'logs'})",
        f"  setup     {setup_note}",
        "",
        "Try it (server reflection, no proto files needed):",
        f"  buf curl --protocol grpc --http2-prior-knowledge --list-methods "
        f"http://{settings.address_of('tenancy')}",
        f"  buf curl --protocol grpc --http2-prior-knowledge "
        f"http://{settings.address_of('tenancy')}/gatehouse.tenancy.v1.SetupService/GetSetupState",
        f"  curl http://{gateway}/api/v1/setup",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    env = dict(os.environ)
    if args.data_dir:
        env[PREFIX + "DATA_DIR"] = args.data_dir
    try:
        settings = Settings.from_env("identity", env)
    except ConfigError as exc:
        print(f"gatehouse-run: configuration error: {exc}", file=sys.stderr)
        return 2
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(data_dir, args.logs, env)

    stopping = {"signal": None}

    def _on_signal(signum, _frame):
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    exit_code = 0
    try:
        deadline = time.monotonic() + args.ready_timeout
        for service in START_ORDER:
            launcher.start(service)
        for service in (*START_ORDER, GATEWAY):
            if service == GATEWAY:
                launcher.start(GATEWAY)  # only once every gRPC service is SERVING
            proc = launcher.children[service]
            address = settings.address_of(service)
            wait = wait_http_ready if service == GATEWAY else wait_serving
            print(f"gatehouse-run: waiting for {service} at {address} ...", flush=True)
            if not wait(address, deadline, lambda p=proc: p.poll() is None and not stopping["signal"]):
                if stopping["signal"]:
                    return 0
                code = proc.poll()
                why = f"exited with code {code}" if code is not None else "did not become healthy in time"
                print(
                    f"gatehouse-run: {service} {why}; see {data_dir / 'logs' / (service + '.log')}",
                    file=sys.stderr,
                )
                return 1
        from gatehouse.kit.bootstrap import first_time_setup

        setup_note = first_time_setup(settings, env)
        print(_banner(settings, data_dir, setup_note), flush=True)
        print("gatehouse-run: ready", flush=True)
        while not stopping["signal"]:
            dead = launcher.dead_child()
            if dead:
                service, code = dead
                print(
                    f"gatehouse-run: {service} exited unexpectedly with code {code}; stopping the others "
                    f"(see {data_dir / 'logs' / (service + '.log')})",
                    file=sys.stderr,
                    flush=True,
                )
                exit_code = 1
                break
            time.sleep(0.2)
    finally:
        print("gatehouse-run: stopping ...", flush=True)
        launcher.stop_all()
        print("gatehouse-run: stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
