"""Make sure the local PostgreSQL answers before the database tests run.

If ``pg_isready`` says it is down, start it with pg_ctlcluster. With CI=true a
PostgreSQL that cannot be reached is a failure (the tests must not skip it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time


def ready() -> bool:
    if not shutil.which("pg_isready"):
        return False
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False).returncode == 0


def main() -> int:
    if ready():
        return 0
    versions = [os.path.basename(p) for p in glob.glob("/etc/postgresql/*")]
    if versions and shutil.which("pg_ctlcluster"):
        print(f"ensure_postgres: starting PostgreSQL {versions[0]} ...", flush=True)
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"], check=False
        )
        for _ in range(30):
            if ready():
                return 0
            time.sleep(0.5)
    if os.environ.get("CI") == "true":
        print(
            "ensure_postgres: PostgreSQL is not reachable on 127.0.0.1:5432 (required in CI)", file=sys.stderr
        )
        return 1
    print("ensure_postgres: PostgreSQL not reachable; its tests will be skipped (not in CI)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
