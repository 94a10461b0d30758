"""X-Secrets' allowed_domains: a secret only reaches a session that cannot send it anywhere else."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from orsbox.policy import SandboxPolicy
from orsbox.policy.model import covers
from orsbox.protocol import Secret
from orsbox.sessions.secrets import leak_problem

from ..support.fake_backend import FakeBackend
from ..support.run import API_KEY

ALLOWLIST = 'network = "allowlist"\nallow = ["api.example.com:443", "*.files.example.com:443"]\n'


@pytest.fixture
def backend() -> FakeBackend:
    """Policies with networks are accepted (what is tested is the server's choice of secrets)."""
    return FakeBackend(networks=True)


def header(**secrets: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(secrets).encode()).decode()


async def create(ors: Any, secrets: str) -> tuple[str, Any]:
    sid = str(uuid.uuid4())
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": sid, "X-Secrets": secrets})
    return sid, response


async def has_secret(ors: Any, sid: str, name: str) -> bool:
    return (await ors.call(sid, "secret", {"name": name}, env="echo")).text == "True"


@pytest.mark.parametrize("policy", ["", ALLOWLIST, 'network = "full"\n'])
async def test_secrets_without_allowed_domains_reach_every_session(server: Any, policies: Path, policy: str) -> None:
    (policies / "echo.toml").write_text(policy)
    ors = await server()
    sid, response = await create(ors, header(TOKEN={"value": "t"}))
    assert response.status == 200
    assert await has_secret(ors, sid, "TOKEN")
    await ors.delete(sid)


async def test_a_session_without_network_gets_restricted_secrets(server: Any) -> None:
    ors = await server()
    sid, response = await create(ors, header(OPENAI_API_KEY={"value": "sk", "allowed_domains": ["api.example.com"]},
                                             NOWHERE={"value": "x", "allowed_domains": []}))
    assert response.status == 200
    assert await has_secret(ors, sid, "OPENAI_API_KEY") and await has_secret(ors, sid, "NOWHERE")
    await ors.delete(sid)


async def test_an_allowlist_session_gets_a_secret_only_if_it_can_reach_nothing_else(server: Any,
                                                                                    policies: Path) -> None:
    (policies / "echo.toml").write_text(ALLOWLIST)
    ors = await server()
    covered = {"value": "v", "allowed_domains": ["api.example.com", "*.files.example.com"]}
    sid, response = await create(ors, header(GOOD=covered))
    assert response.status == 200 and await has_secret(ors, sid, "GOOD")
    await ors.delete(sid)
    _, refused = await create(ors, header(LEAKY={"value": "v", "allowed_domains": ["api.example.com"]}))
    assert refused.status == 400
    detail = (await refused.json())["detail"]
    assert "LEAKY" in detail and "*.files.example.com" in detail and "v" not in detail.split("'LEAKY'")[1][:3]


async def test_a_full_network_session_refuses_restricted_secrets(server: Any, policies: Path) -> None:
    (policies / "echo.toml").write_text('network = "full"\n')
    ors = await server()
    _, refused = await create(ors, header(OPENAI_API_KEY={"value": "s3cret-value",
                                                          "allowed_domains": ["api.example.com"]}))
    assert refused.status == 400
    detail = (await refused.json())["detail"]
    assert "network = \"full\"" in detail and "s3cret-value" not in detail


@pytest.mark.parametrize("policy", [ALLOWLIST, 'network = "full"\n'])
async def test_the_clients_own_key_is_withheld_from_networked_sessions(server: Any, policies: Path,
                                                                       policy: str) -> None:
    """The official client adds api_key and OPENREWARD_API_KEY (= its key, for the server's own host)."""
    (policies / "echo.toml").write_text(policy)
    ors = await server()
    own = {"value": API_KEY, "allowed_domains": ["127.0.0.1"]}
    sid, response = await create(ors, header(api_key=own, OPENREWARD_API_KEY=own))
    assert response.status == 200
    assert not await has_secret(ors, sid, "api_key") and not await has_secret(ors, sid, "OPENREWARD_API_KEY")
    await ors.delete(sid)


@pytest.mark.parametrize("bad", [{"T": {"value": "v", "allowed_domains": "api.example.com"}},
                                 {"T": {"value": "v", "allowed_domains": [1]}}])
async def test_malformed_allowed_domains_are_400(ors: Any, bad: dict[str, Any]) -> None:
    _, response = await create(ors, base64.b64encode(json.dumps(bad).encode()).decode())
    assert response.status == 400 and "allowed_domains" in (await response.json())["detail"]


@pytest.mark.parametrize(("domain", "host", "expected"), [
    ("api.example.com", "api.example.com", True),
    ("example.com", "api.example.com", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "*.example.com", True),
    ("*.example.com", "*.a.example.com", True),
    ("*.example.com", "example.com", False),
    ("api.example.com", "*.example.com", False),
])
def test_domain_coverage(domain: str, host: str, expected: bool) -> None:
    assert covers(domain, host) is expected


def test_no_network_means_no_leak() -> None:
    assert leak_problem(Secret("v", ("api.example.com",)), SandboxPolicy()) is None
