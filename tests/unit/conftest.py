"""The fast tier: the whole server over HTTP on the fake backend (agents as local processes, no Docker)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from orsbox.api import create_app
from orsbox.config import Config

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors
from ..support.run import ADMIN_KEY, API_KEY

DEFAULT_POLICY = 'idle_timeout = 900\n'

Server = Callable[..., Awaitable[Ors[TestClient[Any, Any]]]]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A policy folder of the test's own; tests add `<env>.toml` files to it before starting a server."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "default.toml").write_text(DEFAULT_POLICY)
    return folder


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tier's servers, so each environment is described once per run (the catalog cache)."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(aiohttp_client: Any, state_dir: Path, policies: Path,
                 backend: FakeBackend) -> AsyncIterator[Server]:
    """Start an orsbox app on the fake backend, with Config overrides; every sandbox is gone afterwards."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> Ors[TestClient[Any, Any]]:
        settings: dict[str, Any] = {"state_dir": state_dir, "node_id": "fake", "policies_dir": policies,
                                    "default_environment": "echo", "shutdown_timeout": 10, "api_keys": [API_KEY],
                                    "admin_keys": [ADMIN_KEY], "image_patterns": ["fake/*"],
                                    **overrides}
        client = await aiohttp_client(create_app(Config(**settings), backend=backend))
        clients.append(client)
        return Ors(client)

    yield start
    for client in clients:
        await client.close()
    leaked = list(backend.sandboxes)
    await backend.close()
    assert not leaked, f"sandboxes left after shutdown: {leaked}"


@pytest.fixture
async def ors(server: Server) -> Ors[TestClient[Any, Any]]:
    return await server()
