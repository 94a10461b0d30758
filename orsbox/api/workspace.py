"""Workspace files over HTTP, for a session's owner (`X-Session-ID`, their API key) and the operator (the admin API):
the same rules for ORS sessions and openreward sandboxes (`sessions/workspace.py`, `agent/runtime/transfer.py`).

    GET /workspace[?path=DIR]            /workspace (or DIR in it) as a tar stream (application/x-tar)
    GET /workspace?path=FILE&file=1      one file's bytes (application/octet-stream)
    PUT /workspace[?path=DIR]            a tar body, unpacked into DIR: {"files", "bytes"}
    PUT /workspace?path=FILE&file=1      a file's bytes, written to FILE: {"files": 1, "bytes"}
    GET|PUT /admin/sessions/{sid}/workspace   the same, on any owner's session
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..errors import BadRequest, BodyTooLarge, NotFound, OrsboxError
from ..sessions import Session, State
from ..sessions import workspace as transfers
from ..sessions.calls import channel_of
from .exchange import Exchange
from .keys import SESSIONS
from .openapi import Api

workspace_api = Api()

READ_CHUNK = 256 * 1024  # bytes read from a request body at a time
CONTENT_TYPES = {False: "application/x-tar", True: "application/octet-stream"}


@workspace_api.get("/workspace", answer=bytes, gated=True, errors=(403, 404, 507))
async def download(x: Exchange[None]) -> web.StreamResponse:
    """The session's /workspace (or ?path= in it) as a tar stream, or one file's bytes with ?file=1."""
    return await _download(x, x.session)


@workspace_api.route("PUT", "/workspace", answer=dict[str, int], gated=True, errors=(403, 404, 413, 507))
async def upload(x: Exchange[None]) -> dict[str, int]:
    """Unpack a tar body into /workspace (or ?path= in it), or write the body to the file ?path= with ?file=1."""
    return await _upload(x, x.session)


@workspace_api.get("/admin/sessions/{sid}/workspace", answer=bytes, errors=(403, 404, 507))
async def admin_download(x: Exchange[None]) -> web.StreamResponse:
    """Any session's /workspace as a tar stream, or one file (the operator's)."""
    return await _download(x, _live(x))


@workspace_api.route("PUT", "/admin/sessions/{sid}/workspace", answer=dict[str, int], errors=(403, 404, 413, 507))
async def admin_upload(x: Exchange[None]) -> dict[str, int]:
    """A tar or a file into any session's /workspace (the operator's)."""
    return await _upload(x, _live(x))


async def _download(x: Exchange[None], session: Session) -> web.StreamResponse:
    path, file = _params(x.request)
    max_bytes = transfers.limit(session.env.policy, file=file)
    chunks = transfers.download(channel_of(session), path, file=file, max_bytes=max_bytes)
    total, response = 0, None
    try:
        chunk: bytes | None = await anext(chunks, b"")  # an error before anything is sent answers as JSON
        disposition = f'attachment; filename="{_filename(path, file)}"'
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[file],
                                               "Content-Disposition": disposition})
        await response.prepare(x.request)
        while chunk:
            await response.write(chunk)
            total += len(chunk)
            chunk = await anext(chunks, None)
        await response.write_eof()
    except (OrsboxError, ConnectionResetError):
        if response is None or not response.prepared:
            raise
        _cut(x.request)  # mid-stream: a cut connection, never a tar that looks whole
        return response
    finally:
        await chunks.aclose()
    x.app[SESSIONS].events.emit(session, "workspace_download", path=path[:200], file=file, bytes=total)
    return response


async def _upload(x: Exchange[None], session: Session) -> dict[str, int]:
    path, file = _params(x.request)
    max_bytes = session.env.policy.workspace_size
    if x.request.content_length is not None and x.request.content_length > max_bytes:
        raise BodyTooLarge(f"the upload is larger than {max_bytes} bytes (this environment's workspace_size)")
    written = await transfers.upload(channel_of(session), _body(x.request), path, file=file, max_bytes=max_bytes)
    x.app[SESSIONS].events.emit(session, "workspace_upload", path=path[:200], file=file, **written)
    return written


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        yield chunk


def _params(request: web.Request) -> tuple[str, bool]:
    path = request.query.get("path", "")
    file = request.query.get("file", "0")
    if file not in ("0", "1", "true", "false"):
        raise BadRequest("file must be 1 or 0")
    if "\0" in path or len(path) > 4096:
        raise BadRequest("path is not a usable path")
    is_file = file in ("1", "true")
    if is_file and not path.strip("/."):
        raise BadRequest("file=1 needs the path of a file in the workspace")
    return path, is_file


def _filename(path: str, file: bool) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1] or "workspace"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:100] or "workspace"
    return safe if file else f"{safe}.tar"


def _live(x: Exchange[None]) -> Session:
    sid = x.request.match_info["sid"]
    session = x.app[SESSIONS].registry.live.get(sid)
    if session is None or session.state is not State.READY:
        raise NotFound(f"no ready session {sid[:200]!r}")
    return session


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()

