"""The agent package on the host, without Docker: its task-table helper, its teardown, how it is staged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orsbox.agent
from orsbox.agent import TaskTable, TextBlock
from orsbox.agent.runtime import processes, procfs, service
from orsbox.agent.runtime.processes import RUNNER, CommandLimits, Runner
from orsbox.backends.docker.engine import stage_agent

ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = {"train": [{"id": "add", "question": "2 + 2?"}, {"id": "mul", "question": "2 × 3?"}],
             "test": [{"id": "pow", "question": "2 ** 5?"}]}


class Quiz(TaskTable):
    task_table = QUESTIONS

    def get_prompt(self) -> list[TextBlock]:
        return [TextBlock(self.task["question"])]


def test_a_task_table_lists_its_splits_and_tasks_and_refuses_unknown_ids() -> None:
    assert Quiz.list_splits() == ["train", "test"]
    assert Quiz.list_tasks("test") == [{"id": "pow", "question": "2 ** 5?"}]
    assert Quiz.num_tasks("train") == 2 and Quiz.get_task("train", 1)["id"] == "mul"
    assert service.describe(Quiz)["listable"] == {"train": True, "test": True}
    assert Quiz({"id": "mul"}).task == {"id": "mul"}
    with pytest.raises(ValueError, match=r"^unknown task id 'div'; expected one of \['add', 'mul', 'pow'\]$"):
        Quiz({"id": "div"})


async def test_teardown_kills_the_processes_of_the_policys_command_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    killed: list[int] = []

    def kill_processes(uid: int, **_: Any) -> bool:
        killed.append(uid)
        return True

    monkeypatch.setattr(service, "kill_processes", kill_processes)
    monkeypatch.setattr(RUNNER, "limits", CommandLimits(uid=4321, gid=4321))  # as `--limits` would configure it
    agent = service.Agent(f"{__name__}:Quiz")
    await agent.setup({"task": {"id": "add"}})
    assert await agent.teardown({}) == {}
    assert killed == [4321]



def test_a_pid_reused_since_it_was_listed_is_not_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent may kill any process: a pid listed as the command user's that is another process's by the
    # time it is signalled (a grader, a thread of the agent; here a process of the test's) is spared.
    other = subprocess.Popen(["sleep", "30"])
    monkeypatch.setattr(procfs, "user_pids", lambda uid: [other.pid] if uid == 4321 else [])
    try:
        procfs.kill_processes(4321, rounds=2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()



async def test_programs_never_run_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # the clean-up before and after a program kills every process of its uid: for root, the agent's own
    killed: list[int] = []
    monkeypatch.setattr(processes, "kill_processes", lambda uid, **_: killed.append(uid) or True)
    with pytest.raises(ValueError, match="never run as root"):
        await Runner().run_program(["true"], uid=0, gid=0)
    assert killed == []

def test_the_whole_agent_package_is_staged_byte_compiled_for_this_python(tmp_path: Path) -> None:
    source = Path(orsbox.agent.__file__).parent
    staged = stage_agent(tmp_path) / "orsbox" / "agent"

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}

    assert tree(staged) == tree(source)
    assert {"runtime/oom_first.sh", "runtime/fileops.py", "grading/grading_harness.py"} <= set(tree(staged))
    modules = sorted(staged.rglob("*.py"))
    compiled = {p.parent.parent / p.name.split(".")[0] for p in staged.rglob(f"*.{sys.implementation.cache_tag}.pyc")}
    assert compiled == {m.with_suffix("") for m in modules}  # each module, and no stale byte code of the host's
    flags = {int.from_bytes(p.read_bytes()[4:8], "little") for p in staged.rglob("*.pyc")}
    assert flags == {1}  # unchecked hash: no mtime to check against a read-only copy
    assert stage_agent(tmp_path) == staged.parent.parent  # the same content, the same folder


# ---------------------------------------------------------------- capabilities (in a process of their own)

#: `capabilities.confine()` in a fresh python (argv[1]: the suid_dumpable file to read, argv[2]: "thread" to start
#: one first), then the Cap* sets of that process and of a child it starts as another uid: two JSON lines.
CONFINE = """
import json, subprocess, sys, threading, time
from orsbox.agent.runtime import capabilities
capabilities.SUID_DUMPABLE = sys.argv[1]
if sys.argv[2:] == ["thread"]:
    threading.Thread(target=time.sleep, args=(1,), daemon=True).start()
capabilities.confine()
child = subprocess.run(["grep", "^Cap", "/proc/self/status"], user=65534, group=65534, extra_groups=[],
                       capture_output=True, text=True, check=True).stdout
for status in (open("/proc/self/status").read(), child):
    print(json.dumps({line.split(":")[0]: line.split()[1] for line in status.splitlines() if line[:3] == "Cap"}))
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are given away by root only")


def confine(tmp_path: Path, suid_dumpable: str = "0", *extra: str) -> subprocess.CompletedProcess[str]:
    setting = tmp_path / "suid_dumpable"
    setting.write_text(suid_dumpable + "\n")
    return subprocess.run([sys.executable, "-c", CONFINE, str(setting), *extra], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}, timeout=30)


@needs_root
def test_confine_keeps_setuid_setgid_kill_and_leaves_children_nothing(tmp_path: Path) -> None:
    done = confine(tmp_path)
    assert done.returncode == 0, done.stderr
    agent, child = map(json.loads, done.stdout.splitlines())
    zero = "0000000000000000"
    assert agent == {"CapInh": zero, "CapPrm": "00000000000000e0", "CapEff": "00000000000000e0", "CapBnd": zero,
                     "CapAmb": zero}
    assert child == {"CapInh": zero, "CapPrm": zero, "CapEff": zero, "CapBnd": zero, "CapAmb": zero}


@needs_root
def test_confine_refuses_a_host_where_children_that_changed_uid_stay_traceable(tmp_path: Path) -> None:
    done = confine(tmp_path, "1")
    assert done.returncode != 0 and "RuntimeError: fs.suid_dumpable is 1 on this host" in done.stderr
    assert confine(tmp_path, "2").returncode == 0


@needs_root
def test_confine_refuses_to_run_after_a_thread_started(tmp_path: Path) -> None:
    done = confine(tmp_path, "0", "thread")
    assert done.returncode != 0 and "must run before the agent starts a thread" in done.stderr
