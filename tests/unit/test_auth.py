"""Authentication, on by default: every route but /health needs a valid X-API-Key, keys own their sessions."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from orsbox.auth import KeyFile, new_key
from orsbox.config import Config
from orsbox.errors import ConfigError

from ..support.fake_backend import FakeBackend
from ..support.ors import Ors
from ..support.run import API_KEY, ROOT

Client = Ors[TestClient[Any, Any]]
SECOND_KEY = "a-second-key-" + uuid.uuid4().hex

ROUTES = [("GET", "/list_environments"), ("GET", "/version"), ("GET", "/echo/tools"), ("GET", "/echo/splits"),
          ("POST", "/create_session"), ("POST", "/create"), ("POST", "/ping"), ("POST", "/delete"),
          ("GET", "/echo/prompt"), ("POST", "/echo/call"), ("GET", "/openapi.json"), ("GET", "/no/such/path")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("key", [None, "", "not-a-key", "osk_00000000_guess"])
async def test_every_route_but_health_needs_a_valid_key(ors: Client, method: str, path: str, key: str | None) -> None:
    headers = {"X-Session-ID": str(uuid.uuid4())}
    if key is not None:
        headers["X-API-Key"] = key
    else:
        headers["X-API-Key"] = ""  # the client's default header is replaced by an empty one
    response = await ors.http.request(method, path, headers=headers, json={})
    assert response.status == 401
    assert (await response.json())["detail"] in ("invalid API key",
                                                 "this server needs an API key: send it in the X-API-Key header")


async def test_health_needs_no_key(ors: Client) -> None:
    assert (await ors.http.get("/health", headers={"X-API-Key": ""})).status == 200


async def test_another_keys_session_is_not_found_even_by_create(server: Any) -> None:
    ors = await server(api_keys=[API_KEY, SECOND_KEY])
    sid = await ors.new_session("echo")
    theirs = {"X-Session-ID": sid, "X-API-Key": SECOND_KEY}
    body = {"env_name": "echo", "split": "train", "index": 0}
    unknown = {"X-Session-ID": str(uuid.uuid4()), "X-API-Key": SECOND_KEY}
    for method, path in [("GET", "/echo/prompt"), ("GET", "/echo/task_tools"), ("POST", "/ping")]:
        taken = await ors.http.request(method, path, headers=theirs)
        never = await ors.http.request(method, path, headers=unknown)
        assert taken.status == never.status == 404
        assert await taken.json() == await never.json()
    call = await ors.http.post("/echo/call", headers=theirs, json={"name": "echo", "input": {"text": "x"}})
    assert call.status == 404
    hijack = await ors.http.post("/create", headers=theirs, json=body)
    assert (hijack.status, await hijack.json()) == (404, {"detail": "Active environment not found"})
    assert (await ors.http.post("/delete", headers=theirs)).status == 200  # nothing happens to it
    assert (await ors.call(sid, "echo", {"text": "still mine"}, env="echo")).text == "still mine"
    await ors.delete(sid)


async def test_the_owner_label_is_an_hmac_not_a_hash_of_the_key(server: Any, backend: FakeBackend,
                                                               state_dir: Path) -> None:
    ors = await server()
    sid = await ors.new_session("echo")
    await ors.prompt(sid, env="echo")
    (sandbox,) = backend.sandboxes.values()
    owner = sandbox.spec.owner
    assert API_KEY not in owner and hashlib.sha256(API_KEY.encode()).hexdigest()[:len(owner)] != owner
    secret = state_dir / "server.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    await ors.delete(sid)


async def test_per_key_live_sessions_are_capped(server: Any) -> None:
    ors = await server(api_keys=[API_KEY, SECOND_KEY], key_max_sessions=1)
    first = await ors.new_session("echo")
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": str(uuid.uuid4())})
    assert response.status == 429 and "this API key is at its limit of 1 live sessions" in (await response.json())[
        "detail"]
    assert int(response.headers["Retry-After"]) > 0
    other = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                headers={"X-Session-ID": str(uuid.uuid4()), "X-API-Key": SECOND_KEY})
    assert other.status == 200  # another key has its own quota
    await ors.http.post("/delete", headers={"X-Session-ID": (await other.json())["sid"], "X-API-Key": SECOND_KEY})
    await ors.delete(first)
    assert await ors.new_session("echo")  # ended sessions free the quota


async def test_per_key_starts_per_minute_answer_429_with_the_wait(server: Any) -> None:
    ors = await server(key_starts_per_minute=2)
    for _ in range(2):
        await ors.delete(await ors.new_session("echo"))
    response = await ors.http.post("/create", json={"env_name": "echo", "split": "train", "index": 0},
                                   headers={"X-Session-ID": str(uuid.uuid4())})
    assert response.status == 429 and "2 new sessions per minute" in (await response.json())["detail"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


async def test_keys_from_the_keys_file_work_and_revoking_one_locks_it_out(server: Any, tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    record, key = new_key("ci", max_sessions=5)
    keys.add(record)
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600 and key not in keys.path.read_text()
    ors = await server(api_keys=[], keys_file=keys.path)
    mine = {"X-API-Key": key}
    assert (await ors.http.get("/list_environments", headers=mine)).status == 200
    assert (await ors.http.get("/list_environments", headers={"X-API-Key": key[:-1] + "x"})).status == 401
    assert keys.revoke(record.id)
    for _ in range(40):  # the server re-reads the file within a second
        if (await ors.http.get("/list_environments", headers=mine)).status == 401:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("a revoked key still works")


async def test_a_key_is_made_at_first_start_when_none_is_configured(server: Any, tmp_path: Path) -> None:
    state = tmp_path / "fresh-state"
    ors = await server(api_keys=[], state_dir=state)
    made = state / "api_key"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    key = made.read_text().strip()
    assert (await ors.http.get("/list_environments", headers={"X-API-Key": key})).status == 200
    assert (await ors.http.get("/list_environments", headers={"X-API-Key": API_KEY})).status == 401
    again = await server(api_keys=[], state_dir=state)  # a restart keeps it
    assert made.read_text().strip() == key
    assert (await again.http.get("/list_environments", headers={"X-API-Key": key})).status == 200
    assert len(KeyFile(state / "api_keys.json").load()) == 1


async def test_without_auth_clients_are_still_kept_apart(server: Any) -> None:
    ors = await server(api_keys=[], auth=False)
    alice, bob = {"X-API-Key": "alice"}, {"X-API-Key": "bob"}
    sid = str(uuid.uuid4())
    body = {"env_name": "echo", "split": "train", "index": 0}
    assert (await ors.http.post("/create", json=body, headers={"X-Session-ID": sid, **alice})).status == 200
    assert (await ors.http.post("/ping", headers={"X-Session-ID": sid, **bob})).status == 404
    assert (await ors.http.post("/ping", headers={"X-Session-ID": sid, **alice})).status == 200
    await ors.http.post("/delete", headers={"X-Session-ID": sid, **alice})


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.com"])
def test_auth_may_be_off_only_on_loopback(host: str) -> None:
    with pytest.raises(ValidationError, match="only be off on a loopback address"):
        Config(host=host, auth=False)
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert not Config(host=loopback, auth=False).auth


def test_serve_refuses_no_auth_on_a_public_address(tmp_path: Path) -> None:
    result = _orsbox("serve", "--no-auth", "--host", "0.0.0.0", "--state-dir", str(tmp_path), timeout=30)
    assert result.returncode != 0 and "only be off on a loopback address" in result.stderr


def test_a_keys_file_others_may_write_is_refused(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    keys.add(new_key()[0])
    os.chmod(keys.path, 0o666)
    with pytest.raises(ConfigError, match="chmod 600"):
        keys.load()


def test_keys_add_list_revoke(tmp_path: Path) -> None:
    added = _orsbox("keys", "add", "--name", "trainer", "--max-sessions", "3", "--state-dir", str(tmp_path))
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("osk_") and "only time it is shown" in added.stderr
    key_id = key.split("_")[1]
    listed = _orsbox("keys", "list", "--state-dir", str(tmp_path))
    assert key_id in listed.stdout and "trainer" in listed.stdout and "max_sessions=3" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout + (tmp_path / "api_keys.json").read_text()
    assert _orsbox("keys", "revoke", key_id, "--state-dir", str(tmp_path)).returncode == 0
    assert key_id not in _orsbox("keys", "list", "--state-dir", str(tmp_path)).stdout
    missing = _orsbox("keys", "revoke", key_id, "--state-dir", str(tmp_path))
    assert missing.returncode == 1 and "no key" in missing.stderr


def _orsbox(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORSBOX_")}
    return subprocess.run([sys.executable, "-m", "orsbox.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout, check=False)
