"""Identity benchmark: the cost of authentication — logins (argon2id-bound) and token verification.

    .venv/bin/python bench/bench_identity.py                 # SQLite, production argon2id parameters
    .venv/bin/python bench/bench_identity.py --postgres      # identity's database on PostgreSQL

1. argon2id alone (the baseline): ``PasswordHasher.verify`` of one hash with the
   production defaults (t=3, m=64 MiB, p=4 — argon2-cffi's RFC 9106 low-memory
   profile) and with the cheap test parameters (t=1, m=1 MiB, p=1).
2. Login through a real identity gRPC server (lockout check, argon2id verify,
   session + refresh token + audit event written, ES256 access token signed),
   sequentially (each login paired with a bare verify, so machine load hits
   both alike) and with 4 concurrent clients; the ratio shows how much of a
   login is the password hash.
3. Access-token verification in the kit (``TokenVerifier.verify``: ES256
   signature, claims, revocation lookup with 1,000 revoked sessions), against
   the baseline of a bare ``jwt.decode``; and an authenticated RPC (GetUser)
   against a public one (GetJwks) on the same server, i.e. what the token
   check adds per request end to end.

Bounded: fixed counts and a ``--max-seconds`` guard per phase. Figures go to docs/identity.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import statistics
import sys
import tempfile
import time

import jwt
from argon2 import PasswordHasher

from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.kit.auth import JwksCache, RevocationPoller, TokenVerifier
from gatehouse.kit.keys import public_jwk
from gatehouse.testing.db import create_pg_database, drop_pg_database
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity
from gatehouse_identity.config import IdentityConfig

PRODUCTION = IdentityConfig()
TEST = IdentityConfig.for_tests()


def params(c: IdentityConfig) -> str:
    return f"t={c.argon2_time_cost} m={c.argon2_memory_kib // 1024} MiB p={c.argon2_parallelism}"


def timed_loop(fn, count: int, max_seconds: float) -> list[float]:
    out = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(count):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    return out


async def atimed_loop(fn, count: int, max_seconds: float) -> list[float]:
    out = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(count):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    return out


def report(name: str, samples: list[float], wall: float | None = None) -> float:
    """Print per-op latency and throughput; returns ops/s."""
    wall = wall if wall is not None else sum(samples)
    rate = len(samples) / wall
    p99 = sorted(samples)[max(0, int(len(samples) * 0.99) - 1)]
    print(
        f"  {name:<52} {rate:>10.1f} /s   p50 {statistics.median(samples) * 1e3:8.3f} ms"
        f"   p99 {p99 * 1e3:8.3f} ms   (n={len(samples)})"
    )
    return rate


def bench_argon2(max_seconds: float) -> None:
    print("1. argon2id verify alone (baseline)")
    for label, cfg, n in (
        ("production " + params(PRODUCTION), PRODUCTION, 20),
        ("test " + params(TEST), TEST, 500),
    ):
        ph = PasswordHasher(
            time_cost=cfg.argon2_time_cost,
            memory_cost=cfg.argon2_memory_kib,
            parallelism=cfg.argon2_parallelism,
        )
        stored = ph.hash(DEFAULT_PASSWORD)
        ph.verify(stored, DEFAULT_PASSWORD)  # warm-up (first use allocates the memory)
        report(label, timed_loop(lambda ph=ph, s=stored: ph.verify(s, DEFAULT_PASSWORD), n, max_seconds))


async def bench_login(tmp: pathlib.Path, database_url: str | None, max_seconds: float):
    print(f"2. Login through gRPC (production argon2id {params(PRODUCTION)}, lockout on)")
    async with running_identity(tmp, database_url, config=IdentityConfig()) as identity:
        emails = [f"bench{i}@example.com" for i in range(4)]
        for email in emails:
            await identity.create_user(email)
        await identity.login(emails[0])  # warm-up
        ph = PasswordHasher(
            time_cost=PRODUCTION.argon2_time_cost,
            memory_cost=PRODUCTION.argon2_memory_kib,
            parallelism=PRODUCTION.argon2_parallelism,
        )
        stored = ph.hash(DEFAULT_PASSWORD)
        bare, samples = [], []
        deadline = time.perf_counter() + max_seconds
        for _ in range(20):  # paired: a bare verify, then a login, so machine load hits both alike
            started = time.perf_counter()
            await asyncio.to_thread(ph.verify, stored, DEFAULT_PASSWORD)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            await identity.login(emails[0])
            samples.append(time.perf_counter() - started)
            if time.perf_counter() > deadline:
                break
        report("argon2id verify alone (paired baseline)", bare)
        seq = report("sequential, 1 client", samples)
        argon2_rate = len(bare) / sum(bare)

        async def client(email: str, n: int) -> list[float]:
            return await atimed_loop(lambda: identity.login(email), n, max_seconds)

        started = time.perf_counter()
        results = await asyncio.gather(*(client(e, 10) for e in emails))
        wall = time.perf_counter() - started
        conc = report("4 concurrent clients (4 users)", [s for r in results for s in r], wall)
        print(
            f"  ratio login/argon2-verify (sequential): {seq / argon2_rate:.2f}  (1.0 = argon2 is all of it)"
        )
        print(f"  ratio concurrent/sequential: {conc / seq:.2f}  (argon2 runs in threads; 2 cores here)")


async def bench_verify(tmp: pathlib.Path, database_url: str | None, max_seconds: float):
    print("3. Access-token verification")
    async with running_identity(tmp, database_url) as identity:
        user_id, token = await identity.user_token()
        key = await identity.identity.keyring.current()
        jwk = public_jwk(key)

        async def fetch_keys() -> list[dict]:
            return [jwk]

        revoked = [(f"revoked-{i}", time.time() + 3600, i + 1) for i in range(1000)]

        async def fetch_revocations(after: int):
            return [r for r in revoked if r[2] > after]

        poller = RevocationPoller(fetch_revocations, interval=3600)
        await poller.poll_once()
        verifier = TokenVerifier(
            JwksCache(fetch_keys), issuer="gatehouse", audience="gatehouse", is_revoked=poller.is_revoked
        )
        await verifier.verify(token)
        public = key.public_key
        base = timed_loop(
            lambda: jwt.decode(token, public, algorithms=["ES256"], audience="gatehouse"), 5000, max_seconds
        )
        base_rate = report("bare jwt.decode ES256 (baseline)", base)
        kit = await atimed_loop(lambda: verifier.verify(token), 5000, max_seconds)
        kit_rate = report("kit TokenVerifier.verify (+claims, revocations)", kit)
        print(f"  ratio kit/bare: {kit_rate / base_rate:.2f}")
        await poller.stop()
        md = [("authorization", f"Bearer {token}")]
        public_rpc = await atimed_loop(lambda: identity.stub.GetJwks(pb.GetJwksRequest()), 1000, max_seconds)
        public_rate = report("gRPC GetJwks (public, no token)", public_rpc)
        authed = await atimed_loop(
            lambda: identity.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md), 1000, max_seconds
        )
        authed_rate = report("gRPC GetUser (token verified + one DB read)", authed)
        print(f"  ratio authenticated/public RPC: {authed_rate / public_rate:.2f}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="identity's database on PostgreSQL")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time guard per phase")
    args = parser.parse_args()
    logging.getLogger("gatehouse").setLevel(logging.ERROR)  # audit is not running: its relay retries
    created: list[str] = []

    def database() -> str | None:
        if not args.postgres:
            return None
        name, url = create_pg_database()
        created.append(name)
        return url

    print(f"identity benchmark — database: {'PostgreSQL' if args.postgres else 'SQLite'}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench_argon2(args.max_seconds)
            await bench_login(pathlib.Path(tmp) / "login", database(), args.max_seconds)
            await bench_verify(pathlib.Path(tmp) / "verify", database(), args.max_seconds)
    finally:
        for name in created:
            drop_pg_database(name)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
