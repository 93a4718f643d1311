"""The example's generated gRPC contracts, generated from ``protos/`` on first import.

The example keeps its proto apart from Gatehouse's own contracts (they are not
part of ``buf lint``/``buf breaking`` of the main repository) and generates the
Python code into ``gatehouse_notes/v1/`` (git-ignored) whenever the proto is
newer than the generated code, so a fresh clone works without a build step.
``python -m gatehouse_notes.contracts`` regenerates explicitly.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gatehouse_notes" / "v1"
SOURCES = sorted(PROTOS.rglob("*.proto"))


def _stale() -> bool:
    marker = OUT / "notes_service_pb2_grpc.py"
    if not marker.exists():
        return True
    return max(p.stat().st_mtime for p in SOURCES) > marker.stat().st_mtime


def generate() -> None:
    """Run protoc (grpcio-tools) into a temporary directory, then move the result into place."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        args = [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p) for p in SOURCES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {SOURCES}")
        generated = pathlib.Path(tmp) / "gatehouse_notes" / "v1"
        (generated / "__init__.py").touch()
        staging = OUT.with_name(f"v1.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(generated, staging)
        shutil.rmtree(OUT, ignore_errors=True)
        os.replace(staging, OUT)


if _stale():
    generate()

from gatehouse_notes.v1 import notes_service_pb2 as pb  # noqa: E402
from gatehouse_notes.v1 import notes_service_pb2_grpc as pb_grpc  # noqa: E402

__all__ = ["generate", "pb", "pb_grpc"]

if __name__ == "__main__":
    generate()
    print(f"generated {OUT}", file=sys.stderr)
