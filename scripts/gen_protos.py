"""Generate the Python contracts package from protos/.

Writes gatehouse/<pkg>/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py under libs/, plus a
descriptor set (libs/gatehouse/_descriptors.binpb) that the gateway and docs read,
and copies the google/api protos that buf needs into build/third_party.

Generation happens at install time (``make gen``), never by hand: the output is
git-ignored, so a fresh clone always builds from the .proto sources.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import google.api.annotations_pb2
import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "libs"
GENERATED_TOP = ("identity", "tenancy", "authz", "audit", "type")


def main() -> int:
    googleapis = pathlib.Path(google.api.annotations_pb2.__file__).resolve().parent.parent.parent
    wkt = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"

    third_party = ROOT / "build" / "third_party" / "google" / "api"
    third_party.mkdir(parents=True, exist_ok=True)
    for name in ("annotations.proto", "http.proto", "field_behavior.proto"):
        shutil.copy2(googleapis / "google" / "api" / name, third_party / name)

    for top in GENERATED_TOP:
        shutil.rmtree(OUT / "gatehouse" / top, ignore_errors=True)

    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    if not files:
        print("gen_protos: no .proto files under protos/", file=sys.stderr)
        return 1
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{googleapis}",
        f"-I{wkt}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--descriptor_set_out={OUT / 'gatehouse' / '_descriptors.binpb'}",
        "--include_imports",
        "--include_source_info",
        *files,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"gen_protos: protoc failed with exit code {rc}", file=sys.stderr)
        return rc
    for top in GENERATED_TOP:
        base = OUT / "gatehouse" / top
        if not base.exists():
            continue
        for d in [base, *[p for p in base.rglob("*") if p.is_dir()]]:
            (d / "__init__.py").touch()
    print(f"gen_protos: generated {len(files)} proto files into libs/gatehouse/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
