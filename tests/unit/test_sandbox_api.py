"""openreward's sandbox API, driven by openreward's own client (unchanged) against orsbox on the fake backend."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openreward.api.errors import SessionTerminatedError
from openreward.api.sandboxes.client import AsyncSandboxesAPI
from openreward.api.sandboxes.types import FileTransferError, SandboxEgressRule, SandboxNetworkPolicy, SandboxSettings

from orsbox.api.keys import SESSIONS

from ..support.fake_backend import UNUSED_UID, FakeBackend
from ..support.ors import parse_sse
from ..support.run import API_KEY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def files() -> Iterator[Path]:
    """A folder the fake sandbox's command user may write (the fake runs its agent on this host)."""
    root = Path(tempfile.mkdtemp(prefix="obsa-", dir="/tmp"))
    root.chmod(0o755)
    folder = root / "files"
    folder.mkdir()
    os.chown(folder, UNUSED_UID, UNUSED_UID)
    yield folder
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def backend() -> FakeBackend:
    """Sandbox policies with networks are accepted (the fake has no proxy: what is checked is what it is given)."""
    return FakeBackend(networks=True)


@pytest.fixture
async def url(server: Any) -> str:
    ors = await server()
    return str(ors.http.make_url("")).rstrip("/")


def settings(**fields: Any) -> SandboxSettings:
    return SandboxSettings(**{"environment": "tests", "image": "fake/sandbox:latest", "machine_size": "1:1",
                              **fields})


@pytest.fixture
async def sandbox(url: str) -> AsyncIterator[AsyncSandboxesAPI]:
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings(env={"GREETING": "hi"})) as box:
        yield box


async def test_run_returns_output_return_code_and_env(sandbox: AsyncSandboxesAPI) -> None:
    result = await sandbox.run("echo $GREETING; echo oops >&2; exit 3")
    assert (result.output, result.return_code, result.timed_out) == ("hi\noops", 3, False)
    assert await sandbox.check_run("echo fine") == "fine"
    with pytest.raises(RuntimeError, match="Command failed"):
        await sandbox.check_run("false")


async def test_output_is_truncated_to_its_head(sandbox: AsyncSandboxesAPI) -> None:
    result = await sandbox.run("printf head; head -c 10000000 /dev/zero | tr '\\0' x", max_bytes=20)
    assert result.truncated and result.output == "head" + "x" * 16


async def test_binary_output_comes_back_byte_for_byte(sandbox: AsyncSandboxesAPI) -> None:
    result = await sandbox.run("printf '\\x00\\xff\\xfeA'", sanitise=False)
    assert result.output.encode("utf-8", "surrogateescape") == b"\x00\xff\xfeA"


async def test_a_command_past_its_timeout_is_killed(sandbox: AsyncSandboxesAPI) -> None:
    result = await sandbox.run("echo started; sleep 30", timeout=1)
    assert result.timed_out and result.return_code == 124 and result.output == "started"


async def test_runs_on_one_sandbox_run_concurrently(sandbox: AsyncSandboxesAPI) -> None:
    results = await asyncio.gather(*(sandbox.run(f"sleep 1; echo {n}") for n in range(4)))
    assert [result.output for result in results] == ["0", "1", "2", "3"]


async def test_files_go_up_and_down_in_chunks_with_their_sha256(sandbox: AsyncSandboxesAPI, files: Path,
                                                               tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(12 * 1024 * 1024 + 17))
    remote = str(files / "nested" / "big.bin")
    sent = await sandbox.upload_from(local, remote)
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert sent.sha256 == digest
    assert (await sandbox.stat_file(remote, sha256=True)) == {"size": local.stat().st_size, "sha256": digest}
    back = tmp_path / "back.bin"
    received = await sandbox.download_to(remote, back)
    assert received.sha256 == digest and back.read_bytes() == local.read_bytes()
    assert (files / "nested" / "big.bin").stat().st_uid == UNUSED_UID  # written as the command user


async def test_small_files_and_the_shell_see_the_same_thing(sandbox: AsyncSandboxesAPI, files: Path,
                                                            tmp_path: Path) -> None:
    local = tmp_path / "note.txt"
    local.write_text("hello sandbox\n")
    await sandbox.upload(local, str(files / "note.txt"))
    assert await sandbox.check_run(f"cat {files}/note.txt") == "hello sandbox"
    assert await sandbox.download(str(files / "note.txt")) == b"hello sandbox\n"


async def test_file_errors_are_the_ones_the_client_expects(sandbox: AsyncSandboxesAPI, files: Path) -> None:
    with pytest.raises(aiohttp.ClientResponseError) as missing:
        await sandbox.stat_file(str(files / "nope"))
    assert missing.value.status == 404
    with pytest.raises(aiohttp.ClientResponseError) as directory:
        await sandbox.stat_file(str(files))
    assert directory.value.status == 400
    (files / "link").symlink_to(files / "nope")
    with pytest.raises(aiohttp.ClientResponseError) as link:
        await sandbox.stat_file(str(files / "link"))
    assert link.value.status == 400 and "symlink" in link.value.message
    with pytest.raises(FileTransferError):
        await sandbox.download(str(files / "nope"))


async def test_copy_to_another_sandbox(url: str, sandbox: AsyncSandboxesAPI, files: Path) -> None:
    (files / "src.txt").write_text("copied\n")
    os.chown(files / "src.txt", UNUSED_UID, UNUSED_UID)
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings()) as other:
        result = await sandbox.copy_to(other, str(files / "src.txt"), str(files / "dst.txt"))
        assert result.sha256 == hashlib.sha256(b"copied\n").hexdigest()
        assert await other.check_run(f"cat {files}/dst.txt") == "copied"


async def test_stop_then_run_is_terminated(url: str) -> None:
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings())
    await box.start()
    sid = box.sid
    assert sid is not None
    await box.stop()
    async with aiohttp.ClientSession(url) as http:
        response = await http.post("/run", json={"cmd": "true"}, headers={"X-API-Key": API_KEY, "X-Session-ID": sid})
        assert response.status == 410


async def test_a_sandbox_without_pings_ends_and_its_client_sees_it(server: Any, backend: FakeBackend) -> None:
    ors = await server(idle_timeout=0.5, reap_interval=0.1)
    url = str(ors.http.make_url("")).rstrip("/")
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings()) as box:
        assert box._ping_task is not None
        box._ping_task.cancel()  # as if its client stopped pinging
        for _ in range(100):
            if not backend.sandboxes:
                break
            await asyncio.sleep(0.05)
        assert not backend.sandboxes
        with pytest.raises(SessionTerminatedError):
            await box.run("true")


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"image": "elsewhere/evil:latest"}, 403, "image patterns"),
    ({"machine_size": "4:16"}, 400, "more than sandboxes may have"),
    ({"machine_size": "nvidia-l4"}, 400, "GPUs"),
    ({"sidecars": [{"name": "db", "image": "fake/db"}]}, 400, "sidecar"),
    ({"bucket_config": {"mount_path": "/data"}}, 400, "bucket"),
    ({"network": SandboxNetworkPolicy(rules=[SandboxEgressRule(action="allow", host="pypi.example.com")])}, 400,
     "no network"),
    ({"network": SandboxNetworkPolicy(presets=["pypi"])}, 400, "presets"),
])
async def test_what_cannot_be_honoured_is_refused_by_name(url: str, fields: dict[str, Any], status: int,
                                                          words: str) -> None:
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings(**fields))
    with pytest.raises(aiohttp.ClientResponseError) as refused:
        await box.start()
    assert refused.value.status == status and words in refused.value.message


async def test_sandboxes_of_another_key_are_not_found(server: Any) -> None:
    ors = await server(api_keys=[API_KEY, "other-key"])
    url = str(ors.http.make_url("")).rstrip("/")
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings()) as box:
        assert box.sid is not None
        headers = {"X-API-Key": "other-key", "X-Session-ID": box.sid}
        async with aiohttp.ClientSession(url) as http:
            run = await http.post("/run", json={"cmd": "id"}, headers=headers)
            stat = await http.post("/stat_file", params={"path": "/etc/hostname"}, headers=headers)
            assert run.status == stat.status == 404
            assert (await http.post("/delete_session", headers=headers)).status == 200
        assert await box.check_run("echo still mine") == "still mine"
    assert not ors.http.app[SESSIONS].registry.live


async def test_eight_sandboxes_at_once(url: str) -> None:
    """Opened together, used together, then stopped (the fake's agents share one host and command uid,
    and a sandbox's teardown kills that uid's processes: on the fake, none may end while another runs)."""
    async with contextlib.AsyncExitStack() as stack:
        boxes = await asyncio.gather(*(stack.enter_async_context(AsyncSandboxesAPI(
            base_url=url, api_key=API_KEY, settings=settings(env={"N": str(n)}))) for n in range(8)))
        assert await asyncio.gather(*(box.check_run("echo $N") for box in boxes)) == [str(n) for n in range(8)]


async def test_a_resumed_run_replays_its_result(sandbox: AsyncSandboxesAPI, url: str) -> None:
    assert sandbox.sid is not None
    headers = {"X-API-Key": API_KEY, "X-Session-ID": sandbox.sid}
    async with aiohttp.ClientSession(url) as http:
        first = await (await http.post("/run", json={"cmd": "echo once >> /dev/stderr; echo " + uuid.uuid4().hex},
                                       headers=headers)).text()
        task_id = next(line.split(":", 1)[1].strip() for line in first.splitlines() if line.startswith("data:"))
        again = await (await http.post("/run", json={"cmd": "ignored", "task_id": task_id}, headers=headers)).text()
        assert again.split("event: end")[1] == first.split("event: end")[1]
        unknown = await (await http.post("/run", json={"cmd": "x", "task_id": "nope"}, headers=headers)).text()
        assert "event: error" in unknown and "unknown task_id" in unknown


async def test_a_restarted_server_adopts_a_sandbox_and_its_files(server: Any, backend: FakeBackend,
                                                                files: Path) -> None:
    first = await server(keep_sessions=True)
    url = str(first.http.make_url("")).rstrip("/")
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings(env={"KEPT": "yes"}))
    await box.start()
    await box.check_run(f"echo before > {files}/state")
    box._ping_task.cancel() if box._ping_task else None
    await first.http.close()  # a rolling restart: the sandbox stays for the next run
    second = await server()
    async with aiohttp.ClientSession(str(second.http.make_url("")).rstrip("/")) as http:
        headers = {"X-API-Key": API_KEY, "X-Session-ID": box.sid or ""}
        response = await http.post("/run", json={"cmd": f"cat {files}/state; echo $KEPT"}, headers=headers)
        event, data = parse_sse(await response.read())[-1]
        assert event == "end" and base64.b64decode(json.loads(data)["output"]) == b"before\nyes\n"
        assert (await http.post("/delete_session", headers=headers)).status == 200
    assert not backend.sandboxes


async def test_a_sandbox_whose_request_no_longer_fits_is_not_adopted(server: Any, backend: FakeBackend,
                                                                    policies: Path) -> None:
    (policies / "sandbox.toml").write_text('cpus = 2.0\nmemory = "2g"\n')
    first = await server(keep_sessions=True)
    url = str(first.http.make_url("")).rstrip("/")
    box = AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings(machine_size="2:2"))
    await box.start()
    box._ping_task.cancel() if box._ping_task else None
    await first.http.close()
    (policies / "sandbox.toml").write_text('cpus = 1.0\nmemory = "2g"\n')  # ops shrink what sandboxes may have
    await server()
    assert not backend.sandboxes


ALLOWLIST_SANDBOXES = 'network = "allowlist"\nallow = ["api.example.com:443", "*.files.example.com:443"]\n'


@pytest.fixture
async def networked(server: Any, policies: Path) -> str:
    (policies / "sandbox.toml").write_text(ALLOWLIST_SANDBOXES)
    ors = await server()
    return str(ors.http.make_url("")).rstrip("/")


async def test_network_rules_narrow_the_policy_and_set_network_replaces_them(networked: str,
                                                                             backend: FakeBackend) -> None:
    rules = SandboxNetworkPolicy(rules=[SandboxEgressRule(action="allow", host="api.example.com")])
    async with AsyncSandboxesAPI(base_url=networked, api_key=API_KEY, settings=settings(network=rules)) as box:
        [sandbox] = backend.sandboxes.values()
        assert sandbox.spec.policy.network == "allowlist" and sandbox.spec.policy.allow == ("api.example.com:443",)
        await box.set_network(SandboxNetworkPolicy(rules=[SandboxEgressRule(action="allow",
                                                                            host="cdn.files.example.com")]))
        assert list(backend.allowlists.values()) == [("cdn.files.example.com:443",)]
        with pytest.raises(aiohttp.ClientResponseError) as outside:
            await box.set_network(SandboxNetworkPolicy(rules=[SandboxEgressRule(action="allow", host="evil.test")]))
        assert outside.value.status == 400 and "evil.test" in outside.value.message
        await box.set_network(SandboxNetworkPolicy())  # no rule: nothing allowed
        assert list(backend.allowlists.values()) == [()]


async def test_a_sandbox_created_without_a_network_policy_gets_none_later(networked: str,
                                                                          backend: FakeBackend) -> None:
    async with AsyncSandboxesAPI(base_url=networked, api_key=API_KEY,
                                 settings=settings(block_network=True)) as box:
        [sandbox] = backend.sandboxes.values()
        assert sandbox.spec.policy.network == "none"
        with pytest.raises(aiohttp.ClientResponseError) as refused:
            await box.set_network(SandboxNetworkPolicy())
        assert refused.value.status == 400 and "network=" in refused.value.message
