"""X-Secrets' allowed_domains: a secret only reaches a session that cannot send it anywhere else."""

from __future__ import annotations

import argparse
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


# ---------------------------------------------------------------- precedence: request > key > operator's file


def operator_file(folder: Path, env: str, text: str, mode: int = 0o600) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{env}.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


async def test_request_over_key_over_the_operators_file(server: Any, tmp_path: Path) -> None:
    from orsbox.auth import KeyFile, new_key

    secrets_dir = tmp_path / "secrets"
    operator_file(secrets_dir, "echo", 'A = "env-a"\nB = "env-b"\nC = "env-c"\n')
    keys = KeyFile(tmp_path / "keys.json")
    record, key = new_key("trainer", secrets={"B": "key-b", "C": "key-c"})
    keys.add(record)
    ors = await server(secrets_dir=secrets_dir, keys_file=keys.path)
    sid = str(uuid.uuid4())
    created = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                  headers={"X-Session-ID": sid, "X-API-Key": key,
                                           "X-Secrets": header(C={"value": "req-c"})})
    assert created.status == 200

    async def value_is(name: str, value: str) -> bool:
        answer = await ors.http.post("/echo/call", json={"name": "secret_is", "input": {"name": name, "value": value}},
                                     headers={"X-Session-ID": sid, "X-API-Key": key})
        return '"text":"True"' in (await answer.text())

    assert await value_is("A", "env-a") and await value_is("B", "key-b") and await value_is("C", "req-c")
    assert not await value_is("C", "key-c")
    await ors.http.post("/delete", headers={"X-Session-ID": sid, "X-API-Key": key})
    # a key without secrets of its own (ORSBOX_API_KEYS) gets the operator's only
    plain, response = await create(ors, header())
    assert response.status == 200
    assert (await ors.call(plain, "secret_is", {"name": "B", "value": "env-b"}, env="echo")).text == "True"
    # the file changed: the next session reads it again
    operator_file(secrets_dir, "echo", 'B = "env-b2"\n')
    again, _ = await create(ors, header())
    assert (await ors.call(again, "secret_is", {"name": "B", "value": "env-b2"}, env="echo")).text == "True"
    # made readable by others: refused, and the client is told without the file's path
    (secrets_dir / "echo.toml").chmod(0o644)
    _, response = await create(ors, header())
    detail = (await response.json())["detail"]
    assert response.status == 500 and "operator's secrets" in detail and str(secrets_dir) not in detail
    for sid in (plain, again):
        await ors.delete(sid)


def test_an_unsafe_operator_file_is_refused_at_start(tmp_path: Path) -> None:
    from orsbox.errors import ConfigError
    from orsbox.sessions.secrets import OperatorSecrets

    folder = tmp_path / "secrets"
    operator_file(folder, "echo", 'A = "a"\n', mode=0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        OperatorSecrets(folder)
    (folder / "echo.toml").unlink()
    (tmp_path / "real.toml").write_text('A = "a"\n')
    (tmp_path / "real.toml").chmod(0o600)
    (folder / "echo.toml").symlink_to(tmp_path / "real.toml")
    with pytest.raises(ConfigError, match="symlink"):
        OperatorSecrets(folder)
    (folder / "echo.toml").unlink()
    operator_file(folder, "echo", 'A = 3\n')
    with pytest.raises(ConfigError, match="string value"):
        OperatorSecrets(folder)


def test_explain_and_keys_list_show_names_never_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orsbox.auth import KeyFile, new_key
    from orsbox.cli import keys_command, secrets_explained
    from orsbox.config import Config

    operator_file(tmp_path / "secrets", "echo", 'DB_PASSWORD = "hunter2-operator"\n')
    keys = KeyFile(tmp_path / "keys.json")
    keys.add(new_key("trainer", secrets={"HF_TOKEN": "hf-value-xyz"})[0])
    text = secrets_explained(Config(state_dir=tmp_path, keys_file=keys.path), "echo")
    assert "DB_PASSWORD" in text and "HF_TOKEN" in text and "precedence: X-Secrets" in text
    assert "hunter2" not in text and "hf-value" not in text
    # (not through main(), which would point the logs at this test's captured stderr)
    assert keys_command(argparse.Namespace(keys_command="list", state_dir=None, keys_file=keys.path)) == 0
    listed = capsys.readouterr().out
    assert "secrets: HF_TOKEN" in listed and "hf-value" not in listed
