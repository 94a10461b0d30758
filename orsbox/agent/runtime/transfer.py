"""Workspace transfers: `/workspace` (or a folder or file in it) out as a tar or raw bytes, and a tar or a file in.

The same in both modes (an ORS session's environment, an openreward sandbox), for the owner of the
session and the operator (the server's routes), and for a trainer collecting artifacts.

    workspace_pack    {"path", "file", "max_bytes"}  -> {"handle", "chunk"}: start sending out
    workspace_read    {"handle"}                     -> {"data": base64, "eof"}: the next chunk
    workspace_unpack  {"path", "file", "max_bytes"}  -> {"handle"}: start taking in
    workspace_write   {"handle", "data": base64, "eof"} -> {"received"}; at eof {"files", "bytes"}
    workspace_close   {"handle"}                     -> {}: abandon a transfer

`path` is relative to /workspace ("" or "." the whole of it). Every file is read and written by a
thread with the command user's identity (`sandbox.FileUser`), so a transfer reaches exactly what the
user's own commands could; on top of that, paths must resolve inside /workspace (symlinks followed)
and files are opened with O_NOFOLLOW. A tar going out stores symlinks as symlinks, never following
them; one coming in may hold only regular files and folders (no symlinks, hard links or devices),
names relative and without `..`, and may not write through a symlink already in the workspace.
`max_bytes` (the policy's workspace size, from the server) bounds both directions. Data moves in
chunks through a small queue, so neither side holds a whole tar in memory; a transfer nobody reads
or writes for `IDLE` s is abandoned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import stat
import tarfile
from typing import IO, Any, Dict, Optional, Set, Union

from ..layout import WORKSPACE
from ..wire import ErrorType, Method, WireError
from .processes import Runner
from .sandbox import FileUser, file_errors, upload_path

CHUNK = 512 * 1024  # bytes per chunk out (base64 in an answer frame: fits the smallest frame limit)
QUEUED = 4  # chunks buffered per transfer
IDLE = 60.0  # s a transfer may wait on the server
MAX_OPEN = 4  # transfers at once
Item = Union[bytes, None, WireError]  # a chunk, the end, or the error that ended it


class Transfer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: "asyncio.Queue[Item]" = asyncio.Queue(QUEUED)
        self.done: "Optional[asyncio.Future[Dict[str, Any]]]" = None  # the user thread's work
        self.cancelled = False
        self.received = 0

    def put(self, item: Item) -> None:
        """From the user thread: hand `item` to the loop, waiting while the queue is full."""
        if self.cancelled:
            raise WireError(ErrorType.BAD_REQUEST, "the transfer was abandoned")
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        try:
            future.result(IDLE)
        except Exception:
            future.cancel()
            self.cancelled = True
            message = "the transfer was abandoned (nothing read for %.0f s)" % IDLE
            raise WireError(ErrorType.BAD_REQUEST, message) from None

    def get(self) -> Item:
        """From the user thread: the next item the loop was given."""
        if self.cancelled:
            raise WireError(ErrorType.BAD_REQUEST, "the transfer was abandoned")
        future = asyncio.run_coroutine_threadsafe(self.queue.get(), self.loop)
        try:
            return future.result(IDLE)
        except Exception:
            future.cancel()
            self.cancelled = True
            message = "the transfer was abandoned (nothing written for %.0f s)" % IDLE
            raise WireError(ErrorType.BAD_REQUEST, message) from None


class Transfers:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._files: Optional[FileUser] = None
        self._open: Dict[str, Transfer] = {}

    def handlers(self) -> Dict[str, Any]:
        return {Method.WORKSPACE_PACK: self.pack, Method.WORKSPACE_READ: self.read,
                Method.WORKSPACE_UNPACK: self.unpack, Method.WORKSPACE_WRITE: self.write,
                Method.WORKSPACE_CLOSE: self.close_one}

    def _user(self) -> FileUser:
        if self._files is None:
            self._files = FileUser(self.runner.limits.uid, self.runner.limits.gid, threads=MAX_OPEN + 1)
        return self._files

    def _new(self) -> "tuple[str, Transfer]":
        if len(self._open) >= MAX_OPEN:
            raise WireError(ErrorType.BAD_REQUEST, "%d workspace transfers are open already" % MAX_OPEN)
        handle = secrets.token_hex(8)
        transfer = self._open[handle] = Transfer(asyncio.get_running_loop())
        return handle, transfer

    def _get(self, params: Dict[str, Any]) -> Transfer:
        transfer = self._open.get(str(params.get("handle")))
        if transfer is None:
            raise WireError(ErrorType.NOT_FOUND, "no open transfer %r" % params.get("handle"))
        return transfer

    async def pack(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path, max_bytes = _relative(params), _max_bytes(params)
        handle, transfer = self._new()
        worker = send_file if params.get("file") else send_tar
        transfer.done = asyncio.ensure_future(self._user().call(_sending, transfer, worker, path, max_bytes))
        return {"handle": handle, "chunk": CHUNK}

    async def read(self, params: Dict[str, Any]) -> Dict[str, Any]:
        transfer = self._get(params)
        try:
            item = await asyncio.wait_for(transfer.queue.get(), IDLE)
        except asyncio.TimeoutError:
            item = WireError(ErrorType.IO_ERROR, "the workspace sent nothing for %.0f s" % IDLE)
        if isinstance(item, WireError) or item is None:
            await self._finish(params)
            if isinstance(item, WireError):
                raise item
            return {"data": "", "eof": True}
        return {"data": base64.b64encode(item).decode("ascii"), "eof": False}

    async def unpack(self, params: Dict[str, Any]) -> Dict[str, Any]:
        path, max_bytes = _relative(params), _max_bytes(params)
        handle, transfer = self._new()
        worker = receive_file if params.get("file") else receive_tar
        transfer.done = asyncio.ensure_future(self._user().call(worker, transfer, path, max_bytes))
        return {"handle": handle}

    async def write(self, params: Dict[str, Any]) -> Dict[str, Any]:
        transfer = self._get(params)
        data = params.get("data", "")
        try:
            chunk = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise WireError(ErrorType.BAD_REQUEST, "'data' is not base64") from None
        assert transfer.done is not None
        for item in ([chunk] if chunk else []) + ([None] if params.get("eof") else []):
            put = asyncio.ensure_future(transfer.queue.put(item))
            waiting: "Set[asyncio.Future[Any]]" = {put, transfer.done}
            await asyncio.wait(waiting, timeout=IDLE, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                return await self._finish(params)  # the worker ended (an error, or the limit): say why
        transfer.received += len(chunk)
        if params.get("eof"):
            return await self._finish(params)
        return {"received": transfer.received}

    async def close_one(self, params: Dict[str, Any]) -> Dict[str, Any]:
        transfer = self._open.pop(str(params.get("handle")), None)
        if transfer is not None:
            transfer.cancelled = True
            _drain(transfer)
        return {}

    async def _finish(self, params: Dict[str, Any]) -> Dict[str, Any]:
        transfer = self._open.pop(str(params.get("handle")))
        assert transfer.done is not None
        try:
            return await asyncio.wait_for(asyncio.shield(transfer.done), IDLE)
        except asyncio.TimeoutError:
            transfer.cancelled = True
            raise WireError(ErrorType.IO_ERROR, "the workspace transfer did not finish") from None
        finally:
            _drain(transfer)

    def close(self) -> None:
        for transfer in self._open.values():
            transfer.cancelled = True
            _drain(transfer)
        self._open.clear()
        files, self._files = self._files, None
        if files is not None:
            files.close()


def _drain(transfer: Transfer) -> None:
    """Empty the queue, so a worker blocked putting into it wakes (and sees it was cancelled), and end it,
    so one waiting for a chunk does too."""
    while not transfer.queue.empty():
        transfer.queue.get_nowait()
    transfer.queue.put_nowait(WireError(ErrorType.BAD_REQUEST, "the transfer was abandoned"))


def _sending(transfer: Transfer, worker: Any, path: str, max_bytes: int) -> Dict[str, Any]:
    """Run a sending `worker` (in a user thread); an error ends the stream too, so the reader hears it."""
    try:
        result: Dict[str, Any] = worker(transfer, path, max_bytes)
        return result
    except WireError as exc:
        if not transfer.cancelled:
            try:
                transfer.put(exc)
            except WireError:
                pass
        raise


# ---------------------------------------------------------------- in the command user's threads


def inside(path: str) -> str:
    """`path` (relative to the workspace) resolved, symlinks followed; refused if that leaves the workspace."""
    root = os.path.realpath(WORKSPACE)
    full = os.path.realpath(os.path.join(root, path))
    if full != root and not full.startswith(root + os.sep):
        raise WireError(ErrorType.FORBIDDEN, "%s leads outside %s" % (path or ".", WORKSPACE))
    return full


class _Sink:
    """A write-only file object that sends what tarfile writes as chunks, refusing more than `max_bytes`."""

    def __init__(self, transfer: Transfer, max_bytes: int) -> None:
        self.transfer, self.max_bytes = transfer, max_bytes
        self.buffer = bytearray()
        self.total = 0

    def write(self, data: bytes) -> int:
        self.total += len(data)
        if self.total > self.max_bytes:
            raise WireError(ErrorType.NO_SPACE, "the workspace is more than %d bytes as a tar (the policy's "
                            "workspace size)" % self.max_bytes)
        self.buffer += data
        while len(self.buffer) >= CHUNK:
            self.transfer.put(bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.transfer.put(bytes(self.buffer))
            self.buffer.clear()


def send_tar(transfer: Transfer, path: str, max_bytes: int) -> Dict[str, Any]:
    full = inside(path)
    sink = _Sink(transfer, max_bytes)
    with file_errors(full):
        if not os.path.isdir(full):
            raise WireError(ErrorType.BAD_REQUEST, "%s is not a folder (download a file with file=true)" % full)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            tar.add(full, arcname=".", recursive=True, filter=_outgoing)
    sink.flush()
    transfer.put(None)
    return {"bytes": sink.total}


def _outgoing(member: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    """What a tar going out holds: files, folders and symlinks (as links), owned by no one in particular."""
    if not (member.isreg() or member.isdir() or member.issym()):
        return None
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mode &= 0o777
    return member


def send_file(transfer: Transfer, path: str, max_bytes: int) -> Dict[str, Any]:
    full = inside(path)
    with file_errors(full):
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WireError(ErrorType.BAD_REQUEST, "%s is not a regular file" % full)
            if info.st_size > max_bytes:
                raise WireError(ErrorType.NO_SPACE, "%s is %d bytes, more than %d" % (full, info.st_size, max_bytes))
            total = 0
            while total <= max_bytes:
                piece = os.read(fd, CHUNK)
                if not piece:
                    break
                total += len(piece)
                transfer.put(piece)
        finally:
            os.close(fd)
    transfer.put(None)
    return {"bytes": total}


class _Source:
    """A read-only file object over the chunks the server writes."""

    def __init__(self, transfer: Transfer, max_bytes: int) -> None:
        self.transfer, self.max_bytes = transfer, max_bytes
        self.buffer = b""
        self.total = 0
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        while not self.ended and (size < 0 or len(self.buffer) < size):
            item = self.transfer.get()
            if isinstance(item, WireError):
                raise item
            if item is None:
                self.ended = True
                break
            self.total += len(item)
            if self.total > self.max_bytes:
                raise WireError(ErrorType.NO_SPACE, "the upload is more than %d bytes (the policy's workspace "
                                "size)" % self.max_bytes)
            self.buffer += item
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def receive_tar(transfer: Transfer, path: str, max_bytes: int) -> Dict[str, Any]:
    root = inside(path)
    source = _Source(transfer, max_bytes)
    files = 0
    with file_errors(root):
        os.makedirs(root, exist_ok=True)
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    target = _target(root, member)
                    if member.isdir():
                        os.makedirs(target, mode=0o755, exist_ok=True)
                        continue
                    reader = tar.extractfile(member)
                    assert reader is not None
                    _write_file(target, reader, member.mode & 0o777 or 0o644)
                    files += 1
        except tarfile.TarError as exc:
            raise WireError(ErrorType.BAD_REQUEST, "not a tar: %s" % exc) from None
        source.read()  # the rest (tar padding), to the end
    return {"files": files, "bytes": source.total}


def _target(root: str, member: tarfile.TarInfo) -> str:
    """Where a member goes: refused unless a regular file or folder with a relative name, inside `root`."""
    name = member.name
    if not (member.isreg() or member.isdir()):
        kind = "a symlink" if member.issym() else "a hard link" if member.islnk() else "a special file"
        raise WireError(ErrorType.BAD_REQUEST, "%s is %s: an upload may hold only files and folders" % (name, kind))
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts or "\0" in name:
        raise WireError(ErrorType.BAD_REQUEST, "%s: names in an upload must be relative, without '..'" % name)
    target = os.path.join(root, *parts) if parts else root
    parent = os.path.realpath(os.path.dirname(target)) if parts else root
    if parent != root and not parent.startswith(root + os.sep):
        raise WireError(ErrorType.FORBIDDEN, "%s would be written through a symlink out of %s" % (name, root))
    if parts:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    return target


def _write_file(target: str, reader: IO[bytes], mode: int) -> int:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    total = 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WireError(ErrorType.BAD_REQUEST, "%s is not a regular file" % target)
        while True:
            piece = reader.read(CHUNK)
            if not piece:
                return total
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
            total += len(piece)
    finally:
        os.close(fd)


def receive_file(transfer: Transfer, path: str, max_bytes: int) -> Dict[str, Any]:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise WireError(ErrorType.BAD_REQUEST, "an uploaded file needs a path in the workspace")
    parent = inside("/".join(parts[:-1]))
    target = os.path.join(parent, parts[-1])
    source = _Source(transfer, max_bytes)
    partial = upload_path(target)  # written beside it, renamed over it once whole
    with file_errors(target):
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            total = _write_file(partial, source, 0o644)  # type: ignore[arg-type]
            if os.path.islink(target) or os.path.isdir(target):
                raise WireError(ErrorType.BAD_REQUEST, "%s is a symlink or a folder: not replaced" % target)
            os.rename(partial, target)
        finally:
            if os.path.lexists(partial):
                os.unlink(partial)
    return {"files": 1, "bytes": total}


# ---------------------------------------------------------------- parameters


def _relative(params: Dict[str, Any]) -> str:
    """`path` relative to the workspace (given relative, or absolute under /workspace)."""
    path = params.get("path") or ""
    if not isinstance(path, str) or "\0" in path or len(path) > 4096:
        raise WireError(ErrorType.BAD_REQUEST, "'path' must be a path in the workspace")
    if path == WORKSPACE or path.startswith(WORKSPACE + "/"):
        return path[len(WORKSPACE):].lstrip("/")
    if path.startswith("/"):
        raise WireError(ErrorType.FORBIDDEN, "%s is not in %s" % (path, WORKSPACE))
    return path


def _max_bytes(params: Dict[str, Any]) -> int:
    value = params.get("max_bytes")
    if type(value) is not int or value <= 0:
        raise WireError(ErrorType.BAD_REQUEST, "'max_bytes' must be a positive integer")
    return value
