"""A session's files for `/fork`: packed once in the source's container, unpacked in each copy's.

The source's agent packs /workspace, the command user's home and /tmp into a tar (`archiver.py`, run as
the command user: what it can read, never following a symlink) held in memory, and hands it out in
chunks; a copy's agent gathers the chunks, checks their sha256, and unpacks them (as the command user,
refusing any member outside those folders) before its environment restores its state instead of setting
up. Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import sys
from typing import Any, Dict, List, Optional

from ..layout import WORKSPACE
from ..wire import ErrorType, WireError
from . import archiver
from .processes import RUNNER

ARCHIVER = os.path.abspath(archiver.__file__)
CHUNK = 768 * 1024  # bytes of tar per read: a frame of ~1 MiB in base64
PACK_TIMEOUT = 120.0  # s


def fork_roots() -> List[str]:
    return [WORKSPACE, RUNNER.limits.home, "/tmp"]


class Forks:
    """The archive this agent exported (as a source) or is gathering (as a copy)."""

    def __init__(self) -> None:
        self.exported: Optional[bytes] = None
        self.gathered = bytearray()

    async def export(self, max_bytes: int) -> Dict[str, Any]:
        """Pack the session's folders; refused past `max_bytes` of tar."""
        argv = [sys.executable, "-I", "-S", ARCHIVER, "pack", str(max_bytes), *fork_roots()]
        answer = await RUNNER.run_helper(argv, stdin=b"", cwd="/", timeout=PACK_TIMEOUT)
        if answer is None:
            raise WireError(ErrorType.BAD_REQUEST, "packing the session's files took over %.0f s" % PACK_TIMEOUT)
        out, errors = answer
        if errors.strip() or not out:
            kind = ErrorType.NO_SPACE if b"larger than" in errors else ErrorType.IO_ERROR
            raise WireError(kind, "cannot pack the session's files: %s" % errors.decode(errors="replace")[-500:])
        self.exported = out
        return {"size": len(out), "sha256": hashlib.sha256(out).hexdigest()}

    def read(self, offset: object) -> Dict[str, Any]:
        if self.exported is None:
            raise WireError(ErrorType.BAD_REQUEST, "nothing was exported")
        if type(offset) is not int or not 0 <= offset <= len(self.exported):
            raise WireError(ErrorType.OUT_OF_RANGE, "offset out of range")
        return {"data": base64.b64encode(self.exported[offset:offset + CHUNK]).decode("ascii")}

    def done(self) -> Dict[str, Any]:
        self.exported = None
        return {}

    def gather(self, data: object, max_bytes: int) -> Dict[str, Any]:
        if not isinstance(data, str):
            raise WireError(ErrorType.BAD_REQUEST, "data must be base64 text")
        try:
            chunk = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise WireError(ErrorType.BAD_REQUEST, "data is not base64") from None
        if len(self.gathered) + len(chunk) > max_bytes:
            raise WireError(ErrorType.NO_SPACE, "the fork's files exceed %d bytes" % max_bytes)
        self.gathered += chunk
        return {"size": len(self.gathered)}

    async def unpack(self, sha256: object) -> None:
        """Check the gathered archive and unpack it into this session's folders."""
        archive, self.gathered = bytes(self.gathered), bytearray()
        if hashlib.sha256(archive).hexdigest() != sha256:
            raise WireError(ErrorType.BAD_REQUEST, "the fork's files do not match their sha256")
        argv = [sys.executable, "-I", "-S", ARCHIVER, "unpack", *fork_roots()]
        answer = await RUNNER.run_helper(argv, stdin=archive, cwd="/", timeout=PACK_TIMEOUT)
        if answer is None:
            raise WireError(ErrorType.IO_ERROR, "unpacking the fork's files took over %.0f s" % PACK_TIMEOUT)
        if answer[1].strip():
            raise WireError(ErrorType.IO_ERROR, "cannot unpack the fork's files: %s"
                            % answer[1].decode(errors="replace")[-500:])
