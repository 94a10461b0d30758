"""`orsbox doctor`: a stopped engine, a missing runtime, a busy port and missing cgroup controllers are
reported as FAIL lines that say what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from orsbox.doctor import cgroup_checks, port_check, runtime_checks
from orsbox.policy import PolicySet

from ..support.run import ROOT


def test_a_stopped_engine_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "orsbox.cli", "doctor", "--state-dir", str(tmp_path / "state"),
                           "--policies", str(ROOT / "sandbox_policies"), "--port", str(port)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    engine = next(i for i, line in enumerate(lines) if "engine:" in line)
    assert lines[engine].startswith(f"FAIL  engine: no Docker engine answers at unix://{tmp_path}/no-engine.sock")
    assert "start the engine" in lines[engine + 1] and "DOCKER_HOST" in lines[engine + 1]
    assert any(line.startswith("FAIL  runtimes, images") for line in lines)
    assert f"OK    port 127.0.0.1:{port}: free" in lines
    assert lines[-1].endswith("FAIL") and "Traceback" not in done.stderr


def test_a_missing_runtime_fails_only_where_a_policy_asks_for_it(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('runtime = "runsc"\n')
    wanting, problems = PolicySet.read(tmp_path)
    assert not problems
    checks = runtime_checks({"runc": []}, wanting)
    failed = [check for check in checks if not check.ok]
    assert failed and "orsbox-runsc" in failed[0].what and "lacks" in failed[0].what
    assert "/etc/docker/daemon.json" in failed[0].fix
    assert any("policy:" in check.what for check in failed)
    (tmp_path / "default.toml").write_text('runtime = "runc"\n')
    content, _ = PolicySet.read(tmp_path)
    assert all(check.ok for check in runtime_checks({"runc": []}, content))
    assert not runtime_checks({}, content)[0].ok  # no runc at all


def test_a_port_held_by_something_else_fails(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        check = port_check("127.0.0.1", other.getsockname()[1])
    assert not check.ok and "not orsbox" in check.what and "--port" in check.fix


def test_missing_cgroup_controllers_fail(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (check,) = cgroup_checks(None, root=tmp_path)
    assert not check.ok and "missing: pids, cpu" in check.what
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids io\n")
    (check,) = cgroup_checks("2", root=tmp_path)
    assert check.ok and check.what.startswith("cgroups: v2")
