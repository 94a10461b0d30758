"""Workspace files on the real engine, through the HTTP API: /workspace out as a tar and back in, one file
either way, for the session's owner and the operator, with the policy's size limit and no symlink escape;
the same for an openreward sandbox."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from openreward.api.sandboxes.client import AsyncSandboxesAPI
from openreward.api.sandboxes.types import SandboxSettings

from orsbox.api import create_app
from orsbox.config import Config

from .support.ors import Ors
from .support.run import ADMIN, API_KEY, ROOT

pytestmark = [pytest.mark.docker, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OTHER_KEY = "another-client-key"


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


@pytest.fixture
async def small(aiohttp_client: Any, config: Config, engine: docker.DockerClient,
                tmp_path: Path) -> AsyncIterator[Ors[Any]]:
    """A server whose bash sessions have a 4 MiB workspace, and which knows a second client key."""
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "sandbox_policies", policies)
    (policies / "bash.toml").write_text('workspace_size = "4m"\n')
    settings = config.model_dump() | {"policies_dir": policies, "api_keys": [API_KEY, OTHER_KEY]}
    client = await aiohttp_client(create_app(Config(**settings)))
    yield Ors(client)
    await client.close()


async def test_the_workspace_round_trips_as_a_tar(small: Ors[Any]) -> None:
    ors = small
    sid = await ors.new_session("bash")
    made = await ors.bash(sid, "mkdir -p out/deep && echo one > out/a.txt && head -c 100000 /dev/urandom > "
                               "out/deep/b.bin && chmod 755 out/a.txt && ln -s /etc/passwd out/link && "
                               "sha256sum out/deep/b.bin")
    digest = made.text.split()[0]
    answer = await ors.http.get("/workspace?path=out", headers={"X-Session-ID": sid})
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/x-tar"
    data = await answer.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["./a.txt"].mode == 0o755 and members["./link"].issym()
        assert members["./link"].linkname == "/etc/passwd"  # stored as a link, never followed
        blob = tar.extractfile("./deep/b.bin")
        assert blob is not None and hashlib.sha256(blob.read()).hexdigest() == digest
    # back in, without the symlink (an upload may hold only files and folders)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        kept = [(m, tar.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
                for m in tar.getmembers() if not m.issym()]
    put = await ors.http.put("/workspace?path=copy", data=tar_of(*kept), headers={"X-Session-ID": sid})
    assert put.status == 200, await put.text()
    assert (await put.json())["files"] == 2
    check = await ors.bash(sid, "sha256sum copy/deep/b.bin; cat copy/a.txt; stat -c '%a %u' copy/a.txt")
    assert check.text.split() == [digest, "copy/deep/b.bin", "one", "755", "1000"]
    # one file out, one in
    one = await ors.http.get("/workspace?path=/workspace/out/a.txt&file=1", headers={"X-Session-ID": sid})
    assert (one.status, await one.read()) == (200, b"one\n")
    payload = os.urandom(300_000)
    put = await ors.http.put("/workspace?path=new/dir/x.bin&file=1", data=payload, headers={"X-Session-ID": sid})
    assert put.status == 200 and await put.json() == {"files": 1, "bytes": len(payload)}
    check = await ors.bash(sid, "sha256sum new/dir/x.bin")
    assert check.text.split()[0] == hashlib.sha256(payload).hexdigest()
    await ors.delete(sid)


async def test_escapes_and_oversized_uploads_are_refused(small: Ors[Any]) -> None:
    ors = small
    sid = await ors.new_session("bash")
    await ors.bash(sid, "ln -s /etc etc-link && ln -s /tmp tmp-link && ln -s /etc/passwd passwd && touch plain")
    headers = {"X-Session-ID": sid}

    async def status(method: str, path: str, data: bytes | None = None) -> tuple[int, str]:
        answer = await ors.http.request(method, path, data=data, headers=headers)
        return answer.status, (await answer.json())["detail"]

    assert (await status("GET", "/workspace?path=../etc"))[0] == 403
    assert (await status("GET", "/workspace?path=etc-link"))[0] == 403
    assert (await status("GET", "/workspace?path=passwd&file=1"))[0] == 403
    assert (await status("GET", "/workspace?path=/etc/passwd&file=1"))[0] == 403
    assert (await status("GET", "/workspace?path=plain"))[0] == 400  # a file, not a folder
    assert (await status("GET", "/workspace?path=nothing-here&file=1"))[0] == 404
    code, detail = await status("PUT", "/workspace", tar_of((member("evil", tarfile.SYMTYPE, "/etc/shadow"), None)))
    assert code == 400 and "symlink" in detail
    code, detail = await status("PUT", "/workspace", tar_of((member("../evil"), b"x")))
    assert code == 400 and ".." in detail
    code, detail = await status("PUT", "/workspace", tar_of((member("tmp-link/planted"), b"x")))
    assert code == 403 and "symlink" in detail
    code, detail = await status("PUT", "/workspace", tar_of((member("hard", tarfile.LNKTYPE, "plain"), None)))
    assert code == 400 and "hard link" in detail
    assert (await status("PUT", "/workspace", b"not a tar at all" * 100))[0] == 400
    code, detail = await status("PUT", "/workspace?path=passwd&file=1", b"x")  # a symlink is not replaced
    assert code == 400 and "symlink" in detail
    code, detail = await status("PUT", "/workspace?path=etc-link/x&file=1", b"x")
    assert code == 403
    code, detail = await status("PUT", "/workspace?path=big&file=1", os.urandom(5 * 1024 * 1024))
    assert code == 413 and "workspace_size" in detail
    left = await ors.bash(sid, "ls /tmp; ls")
    assert "planted" not in left.text and "evil" not in left.text and "big" not in left.text
    await ors.delete(sid)


async def test_owners_and_the_operator(small: Ors[Any]) -> None:
    ors = small
    sid = await ors.new_session("bash")
    await ors.bash(sid, "echo mine > mine.txt")
    theirs = await ors.http.get("/workspace", headers={"X-Session-ID": sid, "X-API-Key": OTHER_KEY})
    assert theirs.status == 404
    assert (await ors.http.get(f"/admin/sessions/{sid}/workspace")).status == 403  # a client key
    tar = await ors.http.get(f"/admin/sessions/{sid}/workspace", headers=ADMIN)
    assert tar.status == 200
    with tarfile.open(fileobj=io.BytesIO(await tar.read())) as archive:
        assert archive.extractfile("./mine.txt").read() == b"mine\n"  # type: ignore[union-attr]
    put = await ors.http.put(f"/admin/sessions/{sid}/workspace?path=from-ops.txt&file=1", data=b"hi",
                             headers=ADMIN)
    assert put.status == 200
    assert (await ors.bash(sid, "cat from-ops.txt")).text == "hi"
    events = await ors.http.get(f"/admin/sessions/{sid}/events?follow=0", headers=ADMIN)
    text = await events.text()
    assert "workspace_download" in text and "workspace_upload" in text
    await ors.delete(sid)


async def test_a_sandbox_follows_the_same_rules(ors: Ors[Any]) -> None:
    url = str(ors.http.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    settings = SandboxSettings(environment="tests", image="orsbox/bash:latest", machine_size="1:1")
    async with AsyncSandboxesAPI(base_url=url, api_key=API_KEY, settings=settings) as box:
        await box.check_run("mkdir -p /workspace/result && echo 42 > /workspace/result/answer && "
                            "ln -s /etc /workspace/etc-link")
        headers = {"X-Session-ID": str(box.sid)}
        tar = await ors.http.get("/workspace?path=result", headers=headers)
        assert tar.status == 200
        with tarfile.open(fileobj=io.BytesIO(await tar.read())) as archive:
            assert archive.extractfile("./answer").read() == b"42\n"  # type: ignore[union-attr]
        assert (await ors.http.get("/workspace?path=etc-link", headers=headers)).status == 403
        put = await ors.http.put("/workspace", data=tar_of((member("in/x"), b"y")), headers=headers)
        assert put.status == 200
        assert await box.check_run("cat /workspace/in/x") == "y"
