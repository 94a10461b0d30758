"""Workspace transfers, the server's side: a session's /workspace (or a folder or file in it) out as a tar or
bytes, and a tar or a file in, in chunks over the agent channel (`agent/runtime/transfer.py`).

The limits are the session's policy's: a file or an upload at most `workspace_size` bytes, a tar going
out at most twice that (headers and padding). What the agent sends is hostile: every answer is checked,
and an agent that sends more than it may is cut off.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from ..agent.wire import Method
from ..backends.channel import AgentChannel
from ..errors import BodyTooLarge, OrsboxError, SandboxError
from ..policy import SandboxPolicy

MAX_CHUNK = 1024 * 1024  # bytes of one chunk the agent may send (it sends 512 KiB)
UPLOAD_CHUNK = 512 * 1024  # bytes per chunk sent to the agent


def limit(policy: SandboxPolicy, *, file: bool) -> int:
    """Bytes a transfer of a session of `policy` may move."""
    return policy.workspace_size if file else 2 * policy.workspace_size


async def download(channel: AgentChannel, path: str, *, file: bool, max_bytes: int) -> AsyncGenerator[bytes, None]:
    """The tar (or the file's bytes) in chunks; the first error comes before the first chunk where it can."""
    opened = await channel.call(Method.WORKSPACE_PACK, {"path": path, "file": file, "max_bytes": max_bytes})
    handle = _handle(opened)
    total, finished = 0, False
    try:
        while True:
            answer = await channel.call(Method.WORKSPACE_READ, {"handle": handle})
            if not isinstance(answer, dict) or type(answer.get("eof")) is not bool:
                raise SandboxError("the sandbox's agent answered workspace_read with something malformed")
            if answer["eof"]:
                finished = True
                return
            chunk = _decode(answer.get("data"))
            total += len(chunk)
            if total > max_bytes:
                raise SandboxError(f"the sandbox's agent sent more than {max_bytes} bytes of workspace")
            yield chunk
    finally:
        if not finished:
            with contextlib.suppress(OrsboxError):
                await channel.call(Method.WORKSPACE_CLOSE, {"handle": handle})


async def upload(channel: AgentChannel, chunks: AsyncIterator[bytes], path: str, *, file: bool,
                 max_bytes: int) -> dict[str, int]:
    """Send `chunks` (a tar, or a file's bytes) into the workspace at `path`; {"files", "bytes"} written."""
    opened = await channel.call(Method.WORKSPACE_UNPACK, {"path": path, "file": file, "max_bytes": max_bytes})
    handle = _handle(opened)
    total, finished = 0, False
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise BodyTooLarge(f"the upload is larger than {max_bytes} bytes (this environment's "
                                   "workspace_size)")
            for start in range(0, len(chunk), UPLOAD_CHUNK):
                data = base64.b64encode(chunk[start:start + UPLOAD_CHUNK]).decode("ascii")
                answer = await channel.call(Method.WORKSPACE_WRITE, {"handle": handle, "data": data})
                if isinstance(answer, dict) and "files" in answer:  # it ended early: an answer, not an error
                    finished = True
                    raise SandboxError("the sandbox's agent ended the upload before its end")
        answer = await channel.call(Method.WORKSPACE_WRITE, {"handle": handle, "data": "", "eof": True})
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(OrsboxError):
                await channel.call(Method.WORKSPACE_CLOSE, {"handle": handle})
    if not isinstance(answer, dict) or type(answer.get("files")) is not int or type(answer.get("bytes")) is not int:
        raise SandboxError("the sandbox's agent answered the upload with something malformed")
    return {"files": answer["files"], "bytes": answer["bytes"]}


def _handle(answer: Any) -> str:
    handle = answer.get("handle") if isinstance(answer, dict) else None
    if not isinstance(handle, str) or not 0 < len(handle) <= 64:
        raise SandboxError("the sandbox's agent opened a workspace transfer without a handle")
    return handle


def _decode(data: Any) -> bytes:
    if not isinstance(data, str) or len(data) > MAX_CHUNK * 4 // 3 + 4:
        raise SandboxError("the sandbox's agent sent a workspace chunk that is not base64 of at most 1 MiB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SandboxError("the sandbox's agent sent a workspace chunk that is not base64") from None
