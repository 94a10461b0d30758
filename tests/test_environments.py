"""The example environments `python` and `coding`, through the ORS API on the real engine.

Every task of each is solved by a scripted agent (reference solutions in tests/fixtures/, not in the
images) for reward 1.0, and a wrong attempt gets less. Then the coding grader is attacked the ways a
candidate could try (read, edit or replace the hidden tests, fake interpreters and result files,
exiting or patching unittest at import, killing the grader, looping forever) and the reward stays
honest each time.
"""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest

from .fixtures.coding_fixes import FIXES
from .fixtures.python_solutions import SOLUTIONS
from .support.managed import session_containers
from .support.ors import Ors

pytestmark = pytest.mark.docker

ALL_TASKS = [(split, index) for split in ("train", "test") for index in range(5)]

#: The attacked task, and the reward of its unfixed repository (4 of its 8 hidden tests pass).
ATTACKED = "ini-parser"
UNFIXED_SCORE = 0.5


async def task_at(ors: Ors, env: str, split: str, index: int) -> dict[str, Any]:
    response = await ors.http.post(f"/{env}/task", json={"split": split, "index": index})
    assert response.status == 200, await response.text()
    return dict((await response.json())["task"])


async def prompt_text(ors: Ors, env: str, sid: str) -> str:
    response = await ors.http.get(f"/{env}/prompt", headers={"X-Session-ID": sid})
    assert response.status == 200, await response.text()
    return "".join(block["text"] for block in await response.json())


async def shell(ors: Ors, env: str, sid: str, command: str) -> str:
    step = await ors.call(sid, "bash", {"command": command}, env=env)
    return step.text


def in_container(engine: docker.DockerClient, sid: str, command: str) -> str:
    """Run `command` as uid 1000 in the session's container, behind the API's back: to look after an episode ended."""
    _, output = session_containers(engine, sid)[0].exec_run(["sh", "-c", command], user="1000")
    return str(output.decode())


# ---------------------------------------------------------------- python


def run_python(script: str) -> str:
    """A shell command running `script` with python3."""
    return f"python3 - <<'PY'\n{script}\nPY"


@pytest.mark.parametrize("split,index", ALL_TASKS)
async def test_python_scripted_agent_solves_every_task(ors: Ors, split: str, index: int) -> None:
    task = await task_at(ors, "python", split, index)
    sid = await ors.new_session("python", split=split, index=index)
    assert task["instruction"] in await prompt_text(ors, "python", sid)

    step = await ors.call(sid, "bash", {"command": run_python(SOLUTIONS[task["id"]])}, env="python")
    assert step.output["metadata"]["exit_code"] == 0, step.text
    graded = await ors.call(sid, "submit", {"answer": step.text.strip().splitlines()[-1]}, env="python")
    assert graded.output["reward"] == 1.0, (task["id"], step.text, graded.output)
    assert graded.output["finished"] is True
    await ors.delete(sid)


@pytest.mark.parametrize("split,index", ALL_TASKS)
async def test_python_wrong_answer_gets_no_reward(ors: Ors, split: str, index: int) -> None:
    task = await task_at(ors, "python", split, index)
    sid = await ors.new_session("python", split=split, index=index)
    right = float((await shell(ors, "python", sid, run_python(SOLUTIONS[task["id"]]))).split()[-1])
    graded = await ors.call(sid, "submit", {"answer": repr(right * 1.001 + 1)}, env="python")
    assert graded.output["reward"] == 0.0 and graded.output["finished"] is True
    assert "incorrect" in graded.text
    await ors.delete(sid)


async def test_python_answers_are_not_readable_and_not_numbers_score_nothing(ors: Ors) -> None:
    sid = await ors.new_session("python", split="train", index=0)
    probe = await shell(ors, "python", sid, "id -u; ls -a; cat /opt/env/python_env.py; ls /opt/env")
    assert probe.startswith("1000\n") and "sales.csv" in probe
    assert "BUILDERS" not in probe and probe.count("Permission denied") == 2, probe
    graded = await ors.call(sid, "submit", {"answer": "about a hundred thousand"}, env="python")
    assert graded.output["reward"] == 0.0 and "not a number" in graded.text
    await ors.delete(sid)


# ---------------------------------------------------------------- coding: honest episodes


@pytest.mark.parametrize("split,index", ALL_TASKS)
async def test_coding_scripted_agent_fixes_every_task(ors: Ors, split: str, index: int) -> None:
    task = await task_at(ors, "coding", split, index)
    sid = await ors.new_session("coding", split=split, index=index)
    assert task["instruction"] in await prompt_text(ors, "coding", sid)
    assert "FAILED" in await shell(ors, "coding", sid, "python3 -m unittest 2>&1 | tail -1")

    for path, old, new in FIXES[task["id"]]:
        edit = await ors.call(sid, "edit_file", {"path": path, "old": old, "new": new}, env="coding")
        assert edit.text.startswith("Edited"), edit.text
    assert (await shell(ors, "coding", sid, "python3 -m unittest 2>&1 | tail -1")) == "OK\n"

    graded = await ors.call(sid, "submit", env="coding")
    meta = graded.output["metadata"]
    assert graded.output["reward"] == 1.0, (task["id"], graded.output)
    assert meta["passed"] == meta["total"] >= 8 and graded.output["finished"] is True
    await ors.delete(sid)


@pytest.mark.parametrize("split,index", ALL_TASKS)
async def test_coding_unfixed_repository_gets_less(ors: Ors, split: str, index: int) -> None:
    task = await task_at(ors, "coding", split, index)
    sid = await ors.new_session("coding", split=split, index=index)
    graded = await ors.call(sid, "submit", env="coding")
    assert 0.0 < graded.output["reward"] < 1.0, graded.output
    if task["id"] == ATTACKED:
        assert graded.output["reward"] == UNFIXED_SCORE
    await ors.delete(sid)


# ---------------------------------------------------------------- coding: attacks on the grader


async def attacked_session(ors: Ors, fixed: bool = False) -> str:
    """A session of the attacked task, its repository fixed or not."""
    sid = await ors.new_session("coding", split="train", index=0)
    assert (await task_at(ors, "coding", "train", 0))["id"] == ATTACKED
    for path, old, new in FIXES[ATTACKED] if fixed else []:
        await ors.call(sid, "edit_file", {"path": path, "old": old, "new": new}, env="coding")
    return sid


async def submit(ors: Ors, sid: str) -> dict[str, Any]:
    graded = await ors.call(sid, "submit", env="coding")
    assert graded.output["finished"] is True
    return graded.output


SPY = r"""
import os
found = []
for path in ["/opt/env/tasks", "/proc/%d/mem" % os.getppid(), "/proc/%d/fd/0" % os.getppid(),
             "/proc/%d/fd/1" % os.getppid(), "/proc/%d/environ" % os.getppid()]:
    try:
        with open(path, "rb") as f:
            found.append("%s READ %r" % (path, f.read(200)))
    except OSError as exc:
        found.append("%s %s" % (path, type(exc).__name__))
with open("/tmp/candidate-spy.log", "w") as f:
    f.write("\n".join(found) + "\n")
os.chmod("/tmp/candidate-spy.log", 0o644)
"""


async def test_the_hidden_tests_cannot_be_read(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await attacked_session(ors, fixed=True)
    probe = await shell(ors, "coding", sid, "id -u; ls /opt/env; cat /opt/env/tasks/*/hidden/*; "
                                            "find / -name 'test_hidden*' -not -path '/proc/*' 2>/dev/null; ls /tmp")
    assert probe.startswith("1000\n") and probe.count("Permission denied") == 2, probe
    assert "HiddenTests" not in probe and "test_hidden" not in probe
    # While the grader runs: uid 1000 watches it from a background job, the candidate code spies from inside.
    await ors.call(sid, "edit_file", {"path": "inifile.py", "old": '"""A small INI reader', "new": SPY.strip()
                                      + '\n"""A small INI reader'}, env="coding")
    await shell(ors, "coding", sid, r"""(while :; do for d in /tmp/orsbox-grader-*; do [ -e "$d" ] || continue;
        echo "seen $d"; ls "$d" "$d/repo"; cat "$d"/repo/*.py >/dev/null; done;
        for p in $(pgrep -u 2000); do tr '\0' ' ' < /proc/$p/cmdline; echo; cat /proc/$p/environ; ls /proc/$p/fd;
        done; done > /workspace/watch.log 2>&1 &)""")
    graded = await submit(ors, sid)
    assert graded["reward"] == 1.0, graded
    watched = in_container(engine, sid, "cat /workspace/watch.log")
    assert "seen /tmp/orsbox-grader-" in watched and "grading_harness.py harness" in watched, watched[:2000]
    assert "Permission denied" in watched and "HiddenTests" not in watched and "def test_" not in watched
    spied = in_container(engine, sid, "cat /tmp/candidate-spy.log").splitlines()
    assert len(spied) == 5 and all(line.endswith(("PermissionError", "FileNotFoundError")) for line in spied), spied
    await ors.delete(sid)


async def test_editing_or_replacing_the_hidden_tests_changes_nothing(ors: Ors) -> None:
    sid = await attacked_session(ors)
    fake_tests = "import unittest\nclass HiddenTests(unittest.TestCase):\n    def test_ok(self):\n        pass\n"
    tried = await shell(ors, "coding", sid, (
        "cp test_inifile.py /opt/env/tasks/ini-parser/hidden/test_hidden.py; "
        "mkdir -p hidden && printf '%s' '" + fake_tests + "' | tee test_hidden.py hidden/test_hidden.py > /dev/null; "
        "printf 'import unittest\\nunittest.main = lambda *a, **k: None\\n' > unittest.py; "
        "printf 'CandidateTestCase = object\\n' > grading_harness.py; "
        "sed -i 's/self.assertEqual/self.assertIsNotNone/' test_inifile.py; ls"))
    assert "Permission denied" in tried or "Read-only" in tried, tried
    graded = await submit(ors, sid)
    assert graded["reward"] == UNFIXED_SCORE, graded
    await ors.delete(sid)


async def test_fake_interpreters_and_result_files_change_nothing(ors: Ors) -> None:
    sid = await attacked_session(ors)
    verdict = '{"outcomes": {}, "passed": 8, "total": 8, "tests": [], "wasSuccessful": true}'
    await shell(ors, "coding", sid, (
        "for f in results.json report.json /tmp/results.json /tmp/orsbox-grader-results.json; do "
        "echo '" + verdict + "' > $f; done; mkdir -p /tmp/orsbox-grader-fake/repo bin; "
        "for tool in python3 python pytest; do printf '#!/bin/sh\\ncat /workspace/results.json\\n' > bin/$tool; "
        "chmod +x bin/$tool; cp bin/$tool ./$tool; done; export PATH=/workspace/bin:/workspace:$PATH; "
        "echo 'import sys; sys.exit(0)' > sitecustomize.py; cp sitecustomize.py usercustomize.py"))
    assert verdict in await shell(ors, "coding", sid, "python3 -m unittest")  # the fake is what the shell runs
    # the candidate writes fake verdicts too, from inside the grader, where it can
    forge = ("for p in ['results.json', '../results.json', '/tmp/results.json', '/tmp/verdicts.json']:\n"
             f"    try:\n        open(p, 'w').write({verdict!r})\n    except OSError:\n        pass\n"
             f"print({verdict!r})\n")
    await ors.call(sid, "edit_file", {"path": "inifile.py", "old": '"""A small INI reader',
                                      "new": forge + '"""A small INI reader'}, env="coding")
    graded = await submit(ors, sid)
    assert graded["reward"] == UNFIXED_SCORE, graded
    await ors.delete(sid)


UNITTEST_PATCH = """
import sys, unittest
unittest.TestCase.assertEqual = lambda *args, **kwargs: None
unittest.TestCase.assertRaises = lambda *args, **kwargs: None
unittest.TestCase.run = lambda self, result=None: None
unittest.TestResult.wasSuccessful = lambda self: True
for name in list(sys.modules):
    if "grading" in name or name == "__main__":
        vars(sys.modules[name]).update(run_test=lambda *a: "passed")
"""


@pytest.mark.parametrize("prefix,fixed,reward", [
    pytest.param("import os\nos._exit(0)\n", True, 0.0, id="os._exit at import"),
    pytest.param("import sys\nsys.exit(0)\n", True, 0.0, id="sys.exit at import"),
    pytest.param("raise ValueError('no')\n", True, 0.0, id="raise at import"),
    pytest.param("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", True, 0.0, id="kill the harness"),
    pytest.param("hog = bytearray(2 << 30)\n", True, 0.0, id="memory bomb"),
    pytest.param(UNITTEST_PATCH, False, UNFIXED_SCORE, id="patch unittest"),
    pytest.param("import sys\nsys.stdout.write('x' * 50000000)\nsys.stderr.write('y' * 5000000)\n", True, 1.0,
                 id="flood stdout and stderr"),
    pytest.param("import subprocess\nfor _ in range(5):\n"
                 "    subprocess.Popen(['sleep', '1000'], start_new_session=True)\n", True, 1.0,
                 id="leave processes behind"),
])
async def test_candidate_code_cannot_raise_its_reward(ors: Ors, engine: docker.DockerClient, prefix: str, fixed: bool,
                                                      reward: float) -> None:
    sid = await attacked_session(ors, fixed=fixed)
    await ors.call(sid, "edit_file", {"path": "inifile.py", "old": '"""A small INI reader',
                                      "new": prefix + '"""A small INI reader'}, env="coding")
    graded = await submit(ors, sid)
    assert graded["reward"] == reward, graded
    assert in_container(engine, sid, "ps -o pid= -u 2000 | wc -l").strip() == "0"  # nothing of the grader is left
    await ors.delete(sid)


async def test_killing_the_grader_is_not_permitted(ors: Ors, engine: docker.DockerClient) -> None:
    sid = await attacked_session(ors, fixed=True)
    await shell(ors, "coding", sid, "(while :; do pkill -9 -u 2000; pkill -STOP -u grader; "
                                    "for p in $(pgrep -u 2000); do kill -9 $p; done; done > kill.log 2>&1 &)")
    graded = await submit(ors, sid)
    assert graded["reward"] == 1.0, graded
    tried = in_container(engine, sid, "sort -u /workspace/kill.log | head -20")
    assert "Operation not permitted" in tried, tried
    await ors.delete(sid)


async def test_an_endless_loop_times_out_without_hanging_the_session(ors: Ors) -> None:
    sid = await attacked_session(ors, fixed=True)
    await ors.call(sid, "edit_file", {"path": "inifile.py", "old": "def parse(text):\n",
                                      "new": "def parse(text):\n    while True:\n        pass\n"}, env="coding")
    started = time.monotonic()
    graded = await submit(ors, sid)
    assert graded["reward"] == 0.0 and graded["metadata"]["problem"] is None, graded
    outcomes = sorted(set(graded["metadata"]["outcomes"].values()))
    assert outcomes == ["not_run", "timeout"], graded
    assert time.monotonic() - started < 30
    await ors.delete(sid)


async def test_a_file_tool_result_respects_the_output_cap(ors: Ors) -> None:
    sid = await ors.new_session("coding", split="train", index=0)
    await shell(ors, "coding", sid, "python3 -c \"print('line of text ' * 10 ** 5)\" > big.txt")  # ~1.3 MB
    result = await ors.call(sid, "read_file", {"path": "big.txt"}, env="coding")
    text = result.text
    assert result.output["metadata"]["truncated"] is True
    assert len(text.encode()) < 256 * 1024 + 200 and "[truncated: 262144 of" in text
    assert text.startswith("     1\tline of text line of text")  # read_file numbers its lines
    await ors.delete(sid)
