"""`/fork`: a ready session copied into new sessions of the same environment and task.

The source's agent packs its files (/workspace, home, /tmp, as the command user) and reports its
environment's `fork_state()`; the server reads the archive in chunks into a `Snapshot` (in memory, at most
the policy's `fork_max_bytes`) and hands it to each copy's agent before that copy's setup, which unpacks
the files and restores the state instead of setting up. Nothing passes through a host path, and the
source's answers are hostile input: sizes are checked as they come. Processes are not copied.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from ..agent.wire import Method
from ..backends.channel import AgentChannel
from ..errors import SandboxError
from ..policy import SandboxPolicy
from ..protocol import JSONObject

SHA256 = re.compile(r"[0-9a-f]{64}")
EXPORT_TIMEOUT = 180.0  # s for the source to pack its files
GIVE_CHUNK = 8 * 1024 * 1024  # bytes of archive per frame to a copy (the agent reads frames of up to 32 MiB)


@dataclass(frozen=True)
class Snapshot:
    """A session's files and state at one moment, as its agent exported them."""

    task: JSONObject
    state: Any
    chunks: tuple[str, ...]  # base64 pieces of the archive (each copy's agent checks the whole one's sha256)
    size: int
    sha256: str


async def take_snapshot(channel: AgentChannel, policy: SandboxPolicy) -> Snapshot:
    """Export the session behind `channel`; SandboxError where its agent answers what no agent would."""
    answer = await channel.call(Method.FORK_EXPORT, {"max_bytes": policy.fork_max_bytes}, timeout=EXPORT_TIMEOUT)
    if not isinstance(answer, dict):
        raise SandboxError("the session's agent answered fork_export with something that is not an object")
    size, sha256, task = answer.get("size"), answer.get("sha256"), answer.get("task")
    if type(size) is not int or not 0 < size <= policy.fork_max_bytes:
        raise SandboxError(f"the session's agent reported a fork of {str(size)[:20]} bytes "
                           f"(at most {policy.fork_max_bytes})")
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256) or not isinstance(task, dict):
        raise SandboxError("the session's agent answered fork_export without a valid sha256 and task")
    try:
        chunks = await _read_chunks(channel, size)
    finally:
        await channel.call(Method.FORK_DONE)
    return Snapshot(task, answer.get("state"), tuple(chunks), size, sha256)


async def _read_chunks(channel: AgentChannel, size: int) -> list[str]:
    """The archive, read in the agent's chunks (its answers are bounded by the session's frame limit), and
    cut again into `GIVE_CHUNK` pieces for the copies (fewer, larger frames), base64 encoded once for all."""
    archive = bytearray()
    while len(archive) < size:
        answer = await channel.call(Method.FORK_READ, {"offset": len(archive)})
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, str):
            raise SandboxError("the session's agent answered fork_read without data")
        try:
            chunk = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise SandboxError("the session's agent answered fork_read with data that is not base64") from None
        if not chunk or len(archive) + len(chunk) > size:
            raise SandboxError(f"the session's agent sent {len(archive) + len(chunk)} bytes of a {size} byte fork")
        archive += chunk
    return [base64.b64encode(archive[at:at + GIVE_CHUNK]).decode("ascii") for at in range(0, size, GIVE_CHUNK)]


async def give_snapshot(channel: AgentChannel, snapshot: Snapshot, policy: SandboxPolicy) -> JSONObject:
    """Hand the files to a copy's agent; what its setup takes besides (`fork`)."""
    for chunk in snapshot.chunks:
        await channel.call(Method.FORK_GATHER, {"data": chunk, "max_bytes": policy.fork_max_bytes})
    return {"state": snapshot.state, "sha256": snapshot.sha256}
