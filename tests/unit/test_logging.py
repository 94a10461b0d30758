"""Logs never show secrets: a traceback on a terminal or in JSON lists no local variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..support.run import ROOT

PROGRAM = """
import structlog
from orsbox.log import configure_logging
configure_logging("info", json={json})
log = structlog.get_logger()

def setup(secrets):
    token = secrets["TOKEN"]
    raise RuntimeError("setup failed")

try:
    setup({{"TOKEN": "s3cret-in-a-local"}})
except RuntimeError:
    log.exception("setup_failed")
"""


@pytest.mark.parametrize("as_json", [False, True])
def test_tracebacks_never_show_local_variables(as_json: bool) -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM.format(json=as_json)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    assert "setup failed" in result.stderr and "RuntimeError" in result.stderr
    assert "s3cret-in-a-local" not in result.stderr
