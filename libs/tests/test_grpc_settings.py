"""grpc core settings of the service processes (gatehouse.kit.grpc_settings)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import grpc  # noqa: F401  (imported here, after the conftest applied the settings)
import pytest

from gatehouse.kit.grpc_settings import GRPC_DEFAULTS, apply_grpc_defaults

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_defaults_fill_only_what_the_operator_left_unset():
    environ: dict[str, str] = {}
    apply_grpc_defaults(environ)
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener,-event_engine_client"}
    for theirs in ("", "event_engine_client"):  # an operator's value, empty included, is kept
        environ = {"GRPC_EXPERIMENTS": theirs}
        apply_grpc_defaults(environ)
        assert environ == {"GRPC_EXPERIMENTS": theirs}


def test_applying_after_grpc_is_imported_says_it_is_too_late():
    assert "grpc" in sys.modules
    assert os.environ["GRPC_EXPERIMENTS"] == GRPC_DEFAULTS["GRPC_EXPERIMENTS"]
    assert apply_grpc_defaults({}) is False


# Records GRPC_EXPERIMENTS as the process environment holds it when grpc is first imported
# (what grpc core reads), into $PROBE_OUT, then lets the import go on.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys

    class _Probe:
        def find_spec(self, name, path=None, target=None):
            if name == "grpc":
                sys.meta_path.remove(self)
                with open(os.environ["PROBE_OUT"], "w") as out:
                    out.write(os.environ.get("GRPC_EXPERIMENTS", "<unset>"))
            return None

    sys.meta_path.insert(0, _Probe())
    """
)


@pytest.mark.parametrize("service", ["identity", "tenancy", "authz", "audit", "gateway"])
def test_entry_point_applies_the_settings_before_grpc_is_imported(service, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "seen"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])]),
        PROBE_OUT=str(out),
        GATEHOUSE_LOG_LEVEL="not-a-level",  # a configuration error: the process stops at once
        GATEHOUSE_GATEWAY_TIMEOUT="nan",  # (the gateway's own)
        GATEHOUSE_DATA_DIR=str(tmp_path / "data"),
    )
    proc = subprocess.run(
        [sys.executable, "-m", f"gatehouse_{service}"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert out.read_text() == "-event_engine_listener,-event_engine_client"
