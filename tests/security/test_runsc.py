"""gVisor: a policy with `runtime = "runsc"` runs its sessions in gVisor's user-space kernel, end to end.

Skipped, with the reason, where the engine has no orsbox runsc runtime (./scripts/test registers it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import pytest

from orsbox.api import create_app
from orsbox.config import Config

from ..support.managed import session_containers
from ..support.ors import Ors

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("runsc")]


@pytest.fixture
async def gvisor(aiohttp_client: Any, policies: Callable[..., Config]) -> Ors:
    """An app whose bash environment runs on runsc."""
    return Ors(await aiohttp_client(create_app(policies(bash='runtime = "runsc"\n'))))


async def test_a_session_on_gvisor_works_end_to_end(gvisor: Ors, engine: docker.DockerClient) -> None:
    started = time.monotonic()
    sid = await gvisor.new_session(index=0)
    await gvisor.prompt(sid)
    ready = time.monotonic() - started
    [container] = session_containers(engine, sid)
    assert container.attrs["HostConfig"]["Runtime"] == "orsbox-runsc"
    probe = await gvisor.bash(sid, "cat /proc/version; id -u; echo 'hello world' > /workspace/hello.txt")
    assert "Linux version 4.4.0" in probe.text  # gVisor's own kernel answers, not the host's
    assert probe.text.endswith("1000\n") and probe.output["metadata"]["exit_code"] == 0
    submitted = await gvisor.call(sid, "submit")
    assert submitted.output["reward"] == 1.0 and submitted.output["finished"] is True
    await gvisor.delete(sid)
    assert session_containers(engine, sid) == []
    assert ready < 20
