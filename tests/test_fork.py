"""`POST /fork` on the real engine: copies of a session's files and state, isolated from each other and from
their source, refused where an environment keeps state it cannot hand over, past the policy's size and
past admission."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from .support.managed import managed_containers
from .support.ors import Ors
from .support.run import ROOT

pytestmark = pytest.mark.docker

#: Files of every kind a fork copies, and a process it does not.
PREPARE = r"""
mkdir -p /workspace/deep/er && printf 'hello world' > /workspace/hello.txt
head -c 3000000 /dev/urandom > /workspace/deep/er/blob.bin && chmod 640 /workspace/deep/er/blob.bin
printf '#!/bin/sh\necho run\n' > /workspace/run.sh && chmod 755 /workspace/run.sh
ln -s deep/er/blob.bin /workspace/link && ln -s /etc/passwd /workspace/outside
echo home > ~/.profile_note && echo tmp > /tmp/note && mkfifo /workspace/fifo
(sleep 600 &)
"""
#: What two copies must agree on: every path, its type, mode and content hash.
LISTING = ("(cd / && find workspace home/user tmp -not -name fifo -printf '%p %y %m %l\\n' | sort && "
           "find workspace home/user tmp -type f -exec sha256sum {} + | sort)")


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "sandbox_policies", folder)
    return folder


@pytest.fixture
async def forking(aiohttp_client: Any, config: Config, policies: Path) -> AsyncIterator[Ors[Any]]:
    client = await aiohttp_client(create_app(config.model_copy(update={"policies_dir": policies,
                                                                       "max_sessions": 6})))
    yield Ors(client)
    await client.close()


async def fork(ors: Ors[Any], sid: str, count: int) -> tuple[int, Any]:
    response = await ors.http.post("/fork", json={"count": count}, headers={"X-Session-ID": sid})
    return response.status, await response.json()


async def test_a_fork_copies_files_and_state_but_not_processes_and_each_copy_is_its_own(
    forking: Ors[Any], engine: docker.DockerClient
) -> None:
    ors = forking
    source = await ors.new_session(split="train", index=4)  # the sum of numbers.txt, kept in memory as the answer
    assert (await ors.bash(source, PREPARE)).result["ok"]
    before = (await ors.bash(source, LISTING)).text

    status, answer = await fork(ors, source, 3)
    assert status == 200 and len(answer["sids"]) == 3 and len(set(answer["sids"])) == 3
    copies = answer["sids"]
    for copy in copies:
        assert (await ors.call_when_ready(copy, "bash", {"command": LISTING}))[0].text == before
        assert (await ors.bash(copy, "pgrep -c sleep || true")).text.strip() == "0"  # processes are not copied
        assert (await ors.bash(copy, "/workspace/run.sh; readlink /workspace/outside")).text == "run\n/etc/passwd\n"
    assert (await ors.prompt(copies[0])) == (await ors.prompt(source))

    await ors.bash(copies[0], "echo mine > /workspace/only-here; rm /workspace/hello.txt")
    assert "only-here" not in (await ors.bash(copies[1], "ls /workspace")).text
    assert (await ors.bash(source, LISTING)).text == before  # the source is untouched by its copies

    # The copy grades against the source's answer (kept in the environment's memory, handed over by fork_state).
    await ors.bash(copies[1], "cd /workspace && python3 -c 'print(sum(map(int, open(\"numbers.txt\"))))' > answer.txt")
    graded = await ors.call(copies[1], "submit")
    assert graded.result["output"]["reward"] == 1.0, graded.text
    await ors.bash(copies[0], "echo 0 > /workspace/answer.txt")
    assert (await ors.call(copies[0], "submit")).result["output"]["reward"] == 0.0
    containers = {c.id for c in managed_containers(engine)}
    assert len(containers) == 4
    for sid in (source, *copies):
        await ors.delete(sid)


async def test_an_environment_that_cannot_hand_over_its_state_is_not_forked(forking: Ors[Any]) -> None:
    sid = await forking.new_session("python")  # keeps its grader's data in memory, without fork_state()
    await forking.prompt(sid, env="python")
    status, answer = await fork(forking, sid, 2)
    assert status == 400 and "cannot be forked" in answer["detail"] and "fork_state()" in answer["detail"]
    await forking.delete(sid)


async def test_a_fork_is_refused_past_the_policys_size_and_past_admission(
    forking: Ors[Any], policies: Path, engine: docker.DockerClient
) -> None:
    ors = forking
    sid = await ors.new_session()
    assert (await ors.bash(sid, "true")).result["ok"]
    status, answer = await fork(ors, sid, 6)  # the source and 6 copies: past max_sessions = 6
    assert status == 429 and "limit of 6 live sessions" in answer["detail"]
    for count in (0, 65):
        status, answer = await fork(ors, sid, count)
        assert status == 400 and "count must be between 1 and 64" in answer["detail"]
    status, answer = await fork(ors, "no-such-session", 1)
    assert status == 404
    assert len(managed_containers(engine)) == 1  # nothing was started for refused forks
    await ors.delete(sid)


async def test_a_session_larger_than_fork_max_bytes_is_not_forked(aiohttp_client: Any, config: Config,
                                                                  policies: Path) -> None:
    (policies / "bash.toml").write_text('fork_max_bytes = "1m"\n')
    client = await aiohttp_client(create_app(config.model_copy(update={"policies_dir": policies})))
    ors = Ors(client)
    sid = await ors.new_session()
    assert (await ors.bash(sid, "head -c 2000000 /dev/urandom > /workspace/big")).result["ok"]
    status, answer = await fork(ors, sid, 1)
    assert status == 507 and "larger than 1048576 bytes" in answer["detail"]
    await ors.call(sid, "submit")
    status, answer = await fork(ors, sid, 1)
    assert status == 400 and "finished" in answer["detail"]
    await ors.delete(sid)
