"""Instructions per call in the server processes of bench_authz.py, counted with valgrind.

``python bench/authz_instructions.py [--kinds noop,noop-service,authz:check,authz:noop]``

Timings on a shared 2-core machine move by ±10 % from run to run; the number of instructions a
server executes per call hardly does (repeat runs agree within a few per cent) and does not
depend on how fast the machine is. For each kind this starts ``bench/authz_server.py <kind>`` under
``valgrind --tool=callgrind`` (Debian package ``valgrind``), warms it up with 200 calls, sends
500 calls and dumps the counters, then does the same with 2,500 calls in a fresh process; the
difference divided by 2,000 leaves start-up out. Kinds: ``noop`` (the issue's baseline, standard
asyncio loop), ``noop-service`` (uvloop and the services' grpc settings), ``authz:check``
(CheckCapability on the real server, the bench's small data set on PostgreSQL) and
``authz:noop`` (the no-op method behind the kit in the authz process).

The authz process polls its database in the background (about twice a second); valgrind slows
the calls about fifty times but not the clock, so that polling adds more per call here than in
a real run: the authz figures are an upper bound. Slow: about three minutes per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import grpc  # noqa: E402
from bench_authz import (  # noqa: E402
    CHECK,
    NOOP_METHOD,
    Dataset,
    _readline,
    check_payloads,
    create_database,
    credentials,
    drop_database,
    load_data,
)

WARM_UP, FEW, MANY, IN_FLIGHT = 200, 500, 2_500, 8


async def send(port: int, method: str, payloads: list[bytes], md, count: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary(method)
        numbers = iter(range(count))

        async def worker() -> None:
            for i in numbers:
                await rpc(payloads[i % len(payloads)], metadata=md, timeout=120)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


def instructions(kind: str, method: str, calls: int, env: dict, payloads, md, out_dir: str) -> int:
    """Instructions the server process executed from its start to after ``calls`` calls."""
    out = os.path.join(out_dir, f"{kind}.{calls}.out")
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(ROOT / "bench" / "authz_server.py"),
            kind,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        port = json.loads(_readline(proc, 900))["port"]
        asyncio.run(send(port, method, payloads, md, WARM_UP))
        asyncio.run(send(port, method, payloads, md, calls))
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, timeout=300)
        time.sleep(1)
    finally:
        proc.kill()
        proc.wait()
    dumps = sorted(f for f in glob.glob(out + "*") if os.path.getsize(f) > 0)
    text = open(dumps[-1]).read()
    found = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"no instruction count in {dumps[-1]}")
    return int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--kinds",
        default="noop,noop-service,authz:check,authz:noop",
        help="comma-separated server kinds (authz:check, authz:noop, noop, noop-service)",
    )
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    data = Dataset(100)
    name, url = create_database("instructions")
    tmp = tempfile.mkdtemp(prefix="gh-instructions-")
    md, env = credentials(tmp)
    env["GATEHOUSE_DATABASE_URL"] = url
    try:
        load_data(url, data)
        payloads = [r.SerializeToString() for r in check_payloads(data, 500, random.Random(11))]
        figures = {}
        for spec in args.kinds.split(","):
            kind, _, what = spec.partition(":")
            method = CHECK if what == "check" else NOOP_METHOD
            few = instructions(kind, method, FEW, env, payloads, md, tmp)
            many = instructions(kind, method, MANY, env, payloads, md, tmp)
            figures[spec] = (many - few) / (MANY - FEW)
            print(f"{spec:14s} {figures[spec]:10,.0f} instructions per call", flush=True)
        if "noop" in figures:
            for spec, value in figures.items():
                print(f"  {spec:14s} / noop  {value / figures['noop']:.2f}x")
    finally:
        drop_database(name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
