"""A Harbor task's verifier, run at `submit`: the tests enter the container only now, and run as the verifier.

Runs inside the container as part of the agent: stdlib only, Python 3.8+. By the time `run_verifier` is
called the agent's processes are gone (`HarborEnvironment.submit` killed every process of the command
user), so nothing of the agent's sees the tests or the verifier at work. Then:

1. the tests, which the server sent with the `submit` call, are written to a fresh root-owned `/tests`
   (readable, not writable, by the verifier);
2. `/logs/verifier` (the verifier uid's, 0700, made so at build time: the agent could never write there) is
   emptied as that uid, so no planted file counts;
3. `bash /tests/test.sh` runs as the verifier uid in the task's working directory, with the task's
   `[verifier].env` and `[verifier].timeout_sec`;
4. `reward.txt` (a number) or else `reward.json` (an object of numbers; its `reward` key, or its only key)
   is read back as that uid, bounded, and validated.

A verifier that times out, crashes without a reward, or writes a malformed one gives reward 0, and the
metadata says `failure: "verifier"` with the reason: not the agent's failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..runtime.processes import RUNNER, ProgramResult, program_env

TESTS_DIR = "/tests"
LOGS_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harbor_logs.py")
MAX_FILES = 5000
MAX_REWARD_KEYS = 64
OUTPUT_TAIL = 2000  # characters of the verifier's output kept in the metadata
MAX_TIMEOUT = 3 * 3600.0  # s


@dataclass
class Verdict:
    reward: float
    metadata: Dict[str, Any]

    @property
    def summary(self) -> str:
        failure = self.metadata.get("failure")
        if failure:
            return "Submitted. The verifier failed (not your answer's fault): %s Reward 0." % self.metadata["reason"]
        return "Submitted. The verifier gave reward %g." % self.reward


class DeliveryError(ValueError):
    """The tests the server sent are not a set of relative files."""


def decode_tests(payload: Any) -> Tuple[Dict[str, bytes], List[str]]:
    """{"files": {relative path: base64}, "executable": [relative path, ...]} as ({path: bytes}, [path])."""
    if not isinstance(payload, dict) or not isinstance(payload.get("files"), dict):
        raise DeliveryError("the tests came without files")
    files: Dict[str, bytes] = {}
    if len(payload["files"]) > MAX_FILES:
        raise DeliveryError("more than %d test files" % MAX_FILES)
    for rel, data in payload["files"].items():
        parts = str(rel).split("/")
        if not rel or any(part in ("", ".", "..") for part in parts) or "\0" in rel:
            raise DeliveryError("test file path %r is not a relative path" % str(rel)[:200])
        try:
            files[rel] = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise DeliveryError("test file %r is not base64" % rel[:200]) from None
    executable = [str(rel) for rel in payload.get("executable") or () if str(rel) in files]
    return files, executable


def install_tests(files: Dict[str, bytes], executable: List[str]) -> None:
    """A fresh root-owned /tests with `files` (0644, executables and folders 0755); what was there is removed."""
    if os.path.islink(TESTS_DIR) or (os.path.lexists(TESTS_DIR) and not os.path.isdir(TESTS_DIR)):
        os.unlink(TESTS_DIR)
    elif os.path.isdir(TESTS_DIR):
        shutil.rmtree(TESTS_DIR)
    os.mkdir(TESTS_DIR, 0o755)
    os.chmod(TESTS_DIR, 0o755)
    for rel, data in sorted(files.items()):
        path = os.path.join(TESTS_DIR, rel)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        mode = 0o755 if rel in executable else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    for folder, dirs, _ in os.walk(TESTS_DIR):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)


async def run_verifier(files: Dict[str, bytes], executable: List[str], *, workdir: str, timeout: float,
                       env: Dict[str, str], uid: int) -> Verdict:
    """Install the tests, run them as `uid`, read the reward; never raises for what the verifier does."""
    if uid in (0, RUNNER.limits.uid):
        raise ValueError("the verifier must run as its own uid, not %d" % uid)
    started = time.monotonic()
    install_tests(files, executable)
    helper = [sys.executable, "-I", "-S", LOGS_HELPER]
    cleared = await RUNNER.run_program([*helper, "clear"], uid=uid, gid=uid, timeout=30.0)
    if cleared.exit_code != 0:
        return _failed("/logs/verifier could not be emptied: %s" % _tail(cleared), started, uid)
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    limit = max(1.0, min(float(timeout), MAX_TIMEOUT))
    ran = await RUNNER.run_program([shell, TESTS_DIR + "/test.sh"], uid=uid, gid=uid, timeout=limit,
                                   cwd=workdir if os.path.isdir(workdir) else "/", env=_verifier_env(env),
                                   output_cap=1024 * 1024)
    details: Dict[str, Any] = {"exit_code": ran.exit_code, "timed_out": ran.timed_out,
                               "seconds": round(ran.duration, 3), "output_tail": _tail(ran), "uid": uid}
    if ran.timed_out:
        return _failed("the verifier did not finish within %g s ([verifier].timeout_sec)" % limit, started, uid,
                       details)
    read = await RUNNER.run_program([*helper, "read"], uid=uid, gid=uid, timeout=30.0)
    reward, rewards, problem = parse_rewards(read)
    if problem is not None:
        if ran.exit_code not in (0, None) and "wrote no reward" in problem:
            problem = "tests/test.sh exited with status %s and wrote no reward file" % ran.exit_code
        return _failed(problem, started, uid, details)
    details["rewards"] = rewards
    return Verdict(reward, {"verifier": details, "reward_seconds": round(time.monotonic() - started, 3)})


def parse_rewards(read: ProgramResult) -> Tuple[float, Dict[str, float], Optional[str]]:
    """(reward, every reward.json key, problem): reward.txt first, as Harbor reads them; anything odd is a problem."""
    try:
        found = json.loads(read.stdout) if read.exit_code == 0 else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        return 0.0, {}, "the reward files could not be read"
    for name in ("reward.txt", "reward.json"):
        entry = found.get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict) or entry.get("over") or entry.get("problem"):
            return 0.0, {}, "/logs/verifier/%s is not a small regular file" % name
        text = str(entry.get("text", ""))
        return _reward_txt(text) if name == "reward.txt" else _reward_json(text)
    return 0.0, {}, "the verifier wrote no reward (/logs/verifier/reward.txt or reward.json)"


def _reward_txt(text: str) -> Tuple[float, Dict[str, float], Optional[str]]:
    try:
        value = float(text.strip())
    except ValueError:
        return 0.0, {}, "/logs/verifier/reward.txt holds %r, not a number" % text.strip()[:80]
    if not math.isfinite(value):
        return 0.0, {}, "/logs/verifier/reward.txt holds %r, not a finite number" % text.strip()[:80]
    return value, {"reward": value}, None


def _reward_json(text: str) -> Tuple[float, Dict[str, float], Optional[str]]:
    try:
        data = json.loads(text)
    except ValueError:
        return 0.0, {}, "/logs/verifier/reward.json is not JSON"
    if not isinstance(data, dict) or not data or len(data) > MAX_REWARD_KEYS:
        return 0.0, {}, "/logs/verifier/reward.json is not an object of 1 to %d rewards" % MAX_REWARD_KEYS
    rewards: Dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return 0.0, {}, "/logs/verifier/reward.json: %r is not a finite number" % str(key)[:80]
        rewards[str(key)[:100]] = float(value)
    if "reward" in rewards:
        return rewards["reward"], rewards, None
    if len(rewards) == 1:
        return next(iter(rewards.values())), rewards, None
    return 0.0, rewards, "/logs/verifier/reward.json has several keys and none is 'reward'"


def _failed(reason: str, started: float, uid: int, details: Optional[Dict[str, Any]] = None) -> Verdict:
    return Verdict(0.0, {"failure": "verifier", "reason": reason, "verifier": dict(details or {}, uid=uid),
                         "reward_seconds": round(time.monotonic() - started, 3)})


def _verifier_env(extra: Dict[str, str]) -> Dict[str, str]:
    """A clean environment, HOME a folder nobody can create (so no user site-packages or dotfile the agent
    planted, e.g. in /tmp, is loaded), and the task's `[verifier].env`."""
    env = program_env()
    env["PYTHONNOUSERSITE"] = "1"
    for name, value in (extra or {}).items():
        if name and "=" not in name and "\0" not in name and "\0" not in str(value) and name != "PATH":
            env[str(name)] = str(value)
    return env


def _tail(result: ProgramResult) -> str:
    text = (result.stdout + result.stderr).decode("utf-8", "replace")
    return text[-OUTPUT_TAIL:]
