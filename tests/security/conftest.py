"""Helpers for the attack suite: the agent's pid as a shell expression, custom policy folders, runsc."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from orsbox.config import Config
from orsbox.policy import RUNSC_RUNTIMES
from orsbox.server import create_app

from ..conftest import ROOT, Ors

#: The agent's pid, from inside the container (root's python3; pid 1 is docker-init, commands are never root).
AGENT_PID = "$(pgrep -o -u root -f '^python3 .*orsbox[.]agent')"


@pytest.fixture
def policies(tmp_path: Path, config: Config) -> Callable[..., Config]:
    """`policies(bash='runtime = "runsc"')`: the config with a copy of the shipped policies plus these files."""

    def make(**files: str) -> Config:
        folder = tmp_path / "policies"
        shutil.copytree(ROOT / "sandbox_policies", folder, dirs_exist_ok=True)
        for name, text in files.items():
            (folder / f"{name}.toml").write_text(text)
        return config.model_copy(update={"policies_dir": folder})

    return make


@pytest.fixture(scope="session")
def runsc(engine: docker.DockerClient) -> None:
    """Skips (saying why) where the engine has no orsbox runsc runtime; ./scripts/test registers it."""
    runtimes = engine.info().get("Runtimes") or {}
    if RUNSC_RUNTIMES["none"] not in runtimes:
        pytest.skip(f"gVisor is not available: the Docker engine has no {RUNSC_RUNTIMES['none']!r} runtime "
                    f"(it has {sorted(runtimes)}); ./scripts/test installs runsc and registers it when run as root")


@pytest.fixture(params=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest) -> str:
    """Every attack is tried on runc and on gVisor (runsc, skipped where the engine lacks it)."""
    if request.param == "runsc":
        request.getfixturevalue("runsc")
    return str(request.param)


@pytest.fixture
async def ors(runtime: str, aiohttp_client: Any, config: Config, engine: docker.DockerClient,
              policies: Callable[..., Config]) -> AsyncIterator[Ors]:
    """The ORS client of tests/conftest.py, with the bash environment on `runtime`."""
    if runtime == "runsc":
        config = policies(bash='runtime = "runsc"\n')
    client = await aiohttp_client(create_app(config))
    yield Ors(client)
    await client.close()
