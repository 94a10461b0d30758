"""Harbor datasets served over ORS: the example dataset's tasks through the official client (each solution gives
1.0, doing nothing 0), the verifier's isolation (tests unseen before submit, no planted reward, no process of
the agent's left when it runs), and the clear errors: malformed task.toml, missing Dockerfile, failing build,
an unmapped FROM, resources over the policy's caps, a verifier that times out; images rebuilt only on change."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config
from orsbox.harbor.dataset import load_dataset
from orsbox.harbor.images import build_dataset

from .support.ors import Ors
from .support.run import API_KEY, ROOT

pytestmark = pytest.mark.docker
T = TypeVar("T")
os.environ["OPENREWARD_DISABLE_UPDATE_CHECK"] = "1"

EXAMPLE = ROOT / "images" / "harbor-example"
DATASET = "harbor-example"
BASE_MAP = ["ubuntu:24.04=orsbox/base:latest"]
TASKS = sorted(path.name for path in EXAMPLE.iterdir() if (path / "task.toml").is_file())
QUIET: Callable[[str], None] = lambda line: None  # noqa: E731


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def write_task(root: Path, name: str, *, toml: str = "", dockerfile: str | None = "FROM orsbox/base:latest\n"
               "WORKDIR /app\n", test: str = "echo 1 > /logs/verifier/reward.txt\n") -> Path:
    folder = root / name
    (folder / "environment").mkdir(parents=True)
    (folder / "tests").mkdir()
    (folder / "task.toml").write_text(toml or "[environment]\nmemory_mb = 512\n")
    (folder / "instruction.md").write_text(f"Task {name}.\n")
    if dockerfile is not None:
        (folder / "environment" / "Dockerfile").write_text(dockerfile)
    (folder / "tests" / "test.sh").write_text("#!/bin/bash\n" + test)
    return folder


@pytest.fixture(scope="module")
def example_images(engine: docker.DockerClient, images: None) -> None:
    """The example dataset's task images, built once (skipped when current)."""
    report = build_dataset(load_dataset(DATASET, EXAMPLE), Config(harbor_base_map=BASE_MAP).base_map,
                           client=engine, progress=QUIET)
    assert not report.failures, report.failures


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient,
                example_images: None) -> Iterator[Path]:
    """A dataset of tasks that go wrong in every way the tests check, the buildable ones built."""
    root = tmp_path_factory.mktemp("harbor") / "odd"
    write_task(root, "bad-toml", toml='[verifier]\ntimeout_sec = "soon"\n')
    write_task(root, "no-dockerfile", dockerfile=None)
    write_task(root, "failing-build", dockerfile="FROM orsbox/base:latest\nRUN echo compiling && false\n")
    write_task(root, "unmapped-from", dockerfile="FROM example.com/nowhere:1.0\n")
    write_task(root, "over-cap", toml="[environment]\ncpus = 8\nmemory_mb = 512\n")
    write_task(root, "slow-verifier", toml="[verifier]\ntimeout_sec = 2.0\n[agent]\ntimeout_sec = 3.0\n"
                                           "[environment]\nmemory_mb = 512\n",
               test="sleep 60\necho 1 > /logs/verifier/reward.txt\n")
    write_task(root, "crashing-verifier", test="echo 'Traceback: boom' >&2; exit 3\n")
    build_dataset(load_dataset("odd", root), {}, client=engine, progress=QUIET)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def harbor_config(config: Config, example_images: None) -> Config:
    return config.model_copy(update={"harbor_datasets": [f"{DATASET}={EXAMPLE}"], "harbor_base_map": BASE_MAP})


@pytest.fixture
async def harbor(aiohttp_client: Any, harbor_config: Config) -> Ors:
    return Ors(await aiohttp_client(create_app(harbor_config)))


def dataset_env(ors: Ors, name: str = DATASET) -> Any:
    from openreward import OpenReward

    base_url = str(ors.http.make_url("/")).rstrip("/")
    return OpenReward(api_key=API_KEY).environments.get(name, variant=name, base_url=base_url)  # variant: the path


def episode(ors: Ors, task: str, *commands: str, name: str = DATASET) -> tuple[list[Any], Any]:
    """Run `commands` through the bash tool in a session of `task`, then submit: (the bash outputs, submit's)."""
    env = dataset_env(ors, name)
    listed = next(t for t in env.list_tasks("test") if t.task_spec["id"] == task)
    with env.session(task=listed) as session:  # its task_spec: {"id": ...}
        outputs = [session.call_tool("bash", {"command": command}) for command in commands]
        return outputs, session.call_tool("submit", {})


async def test_the_dataset_is_listed_with_its_tasks_and_tools(harbor: Ors) -> None:
    def discover() -> tuple[list[str], list[str], str]:
        env = dataset_env(harbor)
        with env.session(split="test", index=0) as session:
            prompt = session.get_prompt()[0].text
        return [t.task_spec["id"] for t in env.list_tasks("test")], [t.name for t in env.list_tools()], prompt

    ids, tools, prompt = await in_thread(discover)
    assert ids == TASKS and len(TASKS) >= 5
    assert tools == ["bash", "edit_file", "list_files", "read_file", "restart_shell", "submit", "write_file"]
    assert prompt == (EXAMPLE / TASKS[0] / "instruction.md").read_text().strip()


@pytest.mark.parametrize("task", TASKS)
async def test_each_solution_through_the_official_client_gives_1(harbor: Ors, task: str) -> None:
    outputs, graded = await in_thread(lambda: episode(harbor, task, (EXAMPLE / task / "solution" / "solve.sh")
                                                      .read_text()))
    assert outputs[0].metadata["exit_code"] == 0, outputs[0].blocks[0].text
    assert (graded.reward, graded.finished) == (1.0, True), graded.metadata
    assert "failure" not in graded.metadata and graded.metadata["verifier"]["exit_code"] == 0


@pytest.mark.parametrize("task", TASKS)
async def test_doing_nothing_gives_0_and_no_verifier_failure(harbor: Ors, task: str) -> None:
    _, graded = await in_thread(lambda: episode(harbor, task))
    assert (graded.reward, graded.finished) == (0.0, True)
    assert "failure" not in graded.metadata, graded.metadata


async def test_reward_json_keys_are_reported(harbor: Ors) -> None:
    solve = (EXAMPLE / "clean-data" / "solution" / "solve.sh").read_text()
    _, graded = await in_thread(lambda: episode(harbor, "clean-data", solve))
    assert graded.metadata["verifier"]["rewards"] == {"reward": 1.0, "rows_found": 1.0}


async def test_the_agent_cannot_find_the_tests_before_submit(harbor: Ors) -> None:
    probes = [
        "ls -la /tests 2>&1; ls /logs/verifier 2>&1",
        # a file name and a value only the tests hold, anywhere the agent's uid can read (files and /proc)
        "grep -rIl --exclude-dir=sys --exclude-dir=dev -e check_service -e 45830 / 2>/dev/null | grep -v '^/proc/self'"
        " | grep -v '^/proc/thread-self'; echo end",
        "cat /proc/self/mountinfo",
    ]
    outputs, graded = await in_thread(lambda: episode(harbor, "start-service", *probes))
    listing, found, mounts = (out.blocks[0].text for out in outputs)
    assert "No such file or directory" in listing.splitlines()[0] and "Permission denied" in listing
    assert found.strip() == "end", found
    assert str(EXAMPLE) not in mounts and " /tests " not in mounts
    assert graded.reward == 0.0


async def test_a_planted_reward_file_has_no_effect(harbor: Ors) -> None:
    plant = ("echo 1 > /logs/verifier/reward.txt; echo '{\"reward\": 1}' > /logs/verifier/reward.json; "
             "mkdir -p /logs/verifier 2>&1; ln -s /tmp/reward.txt /logs/verifier/x 2>&1; echo 1 > /tmp/reward.txt; "
             "rm -rf /logs/verifier 2>&1; ls -ld /logs /logs/verifier")
    # code the verifier's python3 would run if it loaded a user site the agent can write (/tmp, its HOME)
    forge = ("for home in /tmp /home/user; do for v in 3.8 3.9 3.10 3.11 3.12 3.13; do "
             "d=$home/.local/lib/python$v/site-packages; mkdir -p $d; "
             "echo 'import os; open(\"/logs/verifier/reward.txt\", \"w\").write(\"1\"); os._exit(0)' "
             "> $d/usercustomize.py; done; done; ls /tmp/.local/lib")
    outputs, graded = await in_thread(lambda: episode(harbor, "log-pipeline", plant, forge))
    assert "Permission denied" in outputs[0].blocks[0].text
    assert "python3.11" in outputs[1].blocks[0].text
    assert graded.reward == 0.0 and "failure" not in graded.metadata, graded.metadata


async def test_a_process_left_behind_cannot_change_what_the_verifier_sees(harbor: Ors) -> None:
    expected = (EXAMPLE / "log-pipeline" / "tests" / "expected.txt").read_text()
    waiter = f"until [ -e /tests ]; do sleep 0.02; done; printf '{expected}' > /app/report.txt"
    commands = [f"nohup bash -c \"{waiter}\" > /dev/null 2>&1 &", f"setsid bash -c \"{waiter}\" > /dev/null 2>&1 &",
                "sleep 0.2; pgrep -c -f 'until' || true"]
    outputs, graded = await in_thread(lambda: episode(harbor, "log-pipeline", *commands))
    assert outputs[2].blocks[0].text.strip() == "2"  # both were running at submit
    assert graded.reward == 0.0 and "failure" not in graded.metadata, graded.metadata


async def test_malformed_tasks_are_left_out_naming_the_file_and_field(odd_dataset: Path) -> None:
    problems = "\n".join(load_dataset("odd", odd_dataset).problems)
    assert f"{odd_dataset}/bad-toml/task.toml: verifier.timeout_sec:" in problems
    assert f"{odd_dataset}/no-dockerfile/environment/Dockerfile: missing" in problems


async def test_failing_builds_say_why(odd_dataset: Path, engine: docker.DockerClient) -> None:
    report = build_dataset(load_dataset("odd", odd_dataset), {}, client=engine, progress=QUIET)
    assert "docker build of orsbox/harbor-odd-failing-build failed" in report.failures["failing-build"]
    assert "compiling" in report.failures["failing-build"]  # the build's last output
    assert 'harbor_base_map = ["example.com/nowhere:1.0=orsbox/base:latest"]' in report.failures["unmapped-from"]
    assert {image.built for image in report.images} == {False}  # the others are current


async def test_over_cap_resources_and_a_slow_verifier(aiohttp_client: Any, harbor_config: Config,
                                                      odd_dataset: Path) -> None:
    ors = Ors(await aiohttp_client(create_app(harbor_config.model_copy(
        update={"harbor_datasets": [f"odd={odd_dataset}"]}))))
    listed = await (await ors.http.post("/odd/tasks", json={"split": "test"})).json()
    tasks = [t["id"] for t in listed["tasks"]]
    assert tasks == ["crashing-verifier", "failing-build", "over-cap", "slow-verifier", "unmapped-from"]
    refused = await ors.http.post("/create", json={"env_name": "odd", "split": "test", "index": 2},
                                  headers={"X-Session-ID": "over-cap-1"})
    assert refused.status == 400
    detail = (await refused.json())["detail"]
    assert "cpus = 8" in detail and "at most cpus = 1" in detail
    unbuilt = await ors.http.post("/create", json={"env_name": "odd", "split": "test", "index": 1},
                                  headers={"X-Session-ID": "unbuilt-1"})
    assert unbuilt.status == 404 and "is not built" in (await unbuilt.json())["detail"]

    unknown = await ors.http.post("/create", json={"env_name": "odd", "task_spec": {"id": "bad-toml"}},
                                  headers={"X-Session-ID": "unknown-1"})
    assert unknown.status == 400 and "has no task 'bad-toml'" in (await unknown.json())["detail"]

    # past [agent].timeout_sec (3 s) only submit is accepted; the verifier then times out ([verifier] 2 s)
    outputs, graded = await in_thread(lambda: episode(ors, "slow-verifier", "sleep 4", "echo late", name="odd"))
    assert "time for this task (3s, [agent].timeout_sec) is up" in outputs[1].blocks[0].text
    assert outputs[1].metadata == {"agent_timeout": True}
    assert graded.reward == 0.0 and graded.metadata["failure"] == "verifier"
    assert "did not finish within 2 s" in graded.metadata["reason"]

    _, crashed = await in_thread(lambda: episode(ors, "crashing-verifier", name="odd"))
    assert crashed.reward == 0.0 and crashed.metadata["failure"] == "verifier"
    assert crashed.metadata["reason"] == "tests/test.sh exited with status 3 and wrote no reward file"
    assert "Traceback: boom" in crashed.metadata["verifier"]["output_tail"]


def orsbox_command(*args: str) -> str:
    """`orsbox ARGS` in a process of its own (the CLI configures logging for its process); its stdout."""
    done = subprocess.run([sys.executable, "-m", "orsbox.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_orsbox_build_and_envs_handle_datasets(tmp_path: Path, state_dir: Path, example_images: None) -> None:
    config = tmp_path / "orsbox.toml"
    config.write_text(f'harbor_datasets = ["{DATASET}={EXAMPLE}"]\nharbor_base_map = {BASE_MAP!r}\n'
                      .replace("'", '"'))
    built = orsbox_command("build", "--config", str(config), DATASET)
    assert f"dataset {DATASET} ({EXAMPLE}): {len(TASKS)} task image(s): 0 built, {len(TASKS)} current" in built
    envs = orsbox_command("envs", "--config", str(config), "--state-dir", str(state_dir))
    listed = [line for line in envs.splitlines() if line.startswith(DATASET)]
    assert listed and f"tasks (test: {len(TASKS)})" in listed[0] and "submit" in listed[0]
    assert listed[0].endswith(f"({len(TASKS)} of {len(TASKS)} tasks can start)")


async def test_images_are_rebuilt_only_when_the_task_folder_changes(tmp_path: Path,
                                                                    engine: docker.DockerClient,
                                                                    example_images: None) -> None:
    write_task(tmp_path, "change-me", dockerfile="FROM orsbox/base:latest\nWORKDIR /app\nCOPY data.txt /app/\n")
    data = tmp_path / "change-me" / "environment" / "data.txt"
    data.write_text("one\n")

    tags = []

    def build() -> bool:
        report = build_dataset(load_dataset("rebuild", tmp_path), {}, client=engine, progress=QUIET)
        assert not report.failures
        tags.append(report.images[0].tag)
        return report.images[0].built

    build()
    assert build() is False
    (tmp_path / "change-me" / "instruction.md").write_text("Another prompt.\n")  # not the environment: no rebuild
    assert build() is False
    data.write_text(f"{uuid.uuid4()}\n")  # content no image was built from yet
    assert build() is True
    data.write_text("one\n")  # back to a known image: current again
    assert build() is False
    assert tags[4] == tags[0] != tags[3]
    engine.images.remove(tags[3])


async def test_compose_sidecars_run_on_the_private_network_and_are_gone_after_delete(
        harbor: Ors, engine: docker.DockerClient) -> None:
    from .support.run import NODE_ID

    def sidecars() -> list[Any]:
        return engine.containers.list(all=True, filters={"label": ["orsbox.role=sidecar", f"orsbox.node={NODE_ID}"]})

    def run() -> tuple[list[str], str, str]:
        env = dataset_env(harbor)
        listed = next(t for t in env.list_tasks("test") if t.task_spec["id"] == "kv-sidecar")
        with env.session(task=listed) as session:
            # the store answers by name; nothing outside the network does (no egress, not even the host)
            store = session.call_tool("bash", {"command": "python3 -c \"import urllib.request; print(urllib.request"
                                                          ".urlopen('http://store:8080/get?key=gadgets').read())\""})
            running = [c.name for c in sidecars()]  # the session is ready: its sidecars run
            outside = session.call_tool("bash", {"command": "getent hosts example.com || echo no-dns; python3 -c "
                                                            "\"import socket; socket.create_connection(('1.1.1.1', 80),"
                                                            " 3)\" 2>&1 | tail -1"})
        return running, store.blocks[0].text, outside.blocks[0].text

    running, store, outside = await in_thread(run)
    assert len(running) == 1 and running[0].endswith("-store")
    assert "98" in store
    assert "no-dns" in outside and "Error" in outside
    assert sidecars() == []
