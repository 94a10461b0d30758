"""The fork archiver: packs a session's folders into a tar, or unpacks one, as the command user.

`python3 archiver.py pack MAX_BYTES ROOT...` writes to stdout a tar of what the command user can read under
each ROOT (names relative to /: `workspace/a.txt`): directories, regular files and symlinks (never
followed), their permission bits (no set-id bits) and times. Anything else (sockets, FIFOs, devices,
unreadable files) is left out; past MAX_BYTES of tar it stops with status 3.

`python3 archiver.py unpack ROOT...` reads such a tar on stdin and recreates its members under the ROOTs
only. The tar comes from another session's container, so it is hostile input: a member outside the roots,
with `..`, a link other than a symlink, a device, or beneath a symlink is refused (status 4, nothing more
unpacked). It runs as the command user, so it can write nothing that user could not.

Stdlib only, Python 3.8+; run as a program (`python3 archiver.py …`), never imported by the agent.
"""

import os
import stat
import sys
import tarfile
from typing import IO, List, cast


class TooLarge(Exception):
    pass


class Refused(Exception):
    pass


class CappedWriter:
    """A binary stream that refuses to take more than `limit` bytes."""

    def __init__(self, out: IO[bytes], limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise TooLarge("the folders are larger than %d bytes of tar" % self.limit)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def pack(limit: int, roots: List[str]) -> None:
    out = cast(IO[bytes], CappedWriter(sys.stdout.buffer, limit))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for root in roots:
            for top, dirs, files in os.walk(root):
                dirs.sort()
                _add(tar, top)
                for name in sorted(files):
                    _add(tar, os.path.join(top, name))
                for name in list(dirs):
                    path = os.path.join(top, name)
                    if os.path.islink(path):  # os.walk does not descend into it; the link itself is kept
                        _add(tar, path)


def _add(tar: tarfile.TarFile, path: str) -> None:
    try:
        info = os.lstat(path)
    except OSError:
        return
    member = tarfile.TarInfo(path.lstrip("/"))
    member.mode, member.mtime = stat.S_IMODE(info.st_mode) & 0o1777, int(info.st_mtime)
    if stat.S_ISLNK(info.st_mode):
        member.type, member.linkname = tarfile.SYMTYPE, os.readlink(path)
        tar.addfile(member)
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
        tar.addfile(member)
    elif stat.S_ISREG(info.st_mode):
        try:
            with open(path, "rb") as handle:
                member.size = os.fstat(handle.fileno()).st_size
                tar.addfile(member, handle)
        except OSError:  # unreadable by the command user: not part of what it can copy
            return


def unpack(roots: List[str]) -> None:
    allowed = [root.strip("/") for root in roots]
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            target = _checked(member, allowed)
            if member.isdir():
                if os.path.isdir(target):  # a root (owned by whoever made it), or a folder made before
                    try:
                        os.chmod(target, member.mode & 0o1777)
                    except PermissionError:
                        pass
                    continue
                os.mkdir(target, 0o700)
            elif member.issym():
                if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
                    os.unlink(target)
                os.symlink(member.linkname, target)
                continue
            else:
                source = tar.extractfile(member)
                if source is None:
                    raise Refused("%s has no data" % member.name)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                    while True:
                        chunk = source.read(1024 * 1024)
                        if not chunk:
                            break
                        out.write(chunk)
            os.chmod(target, member.mode & 0o1777)
            os.utime(target, (member.mtime, member.mtime))


def _checked(member: tarfile.TarInfo, allowed: List[str]) -> str:
    """The absolute path `member` may be written to, or Refused."""
    name = member.name.strip("/")
    parts = name.split("/")
    if not name or member.name.startswith("/") or ".." in parts or "" in parts or "\0" in name:
        raise Refused("member %r is not a plain relative path" % member.name[:200])
    if not any(name == root or name.startswith(root + "/") for root in allowed):
        raise Refused("member %r is outside the folders a fork copies" % member.name[:200])
    if not (member.isdir() or member.isfile() or member.issym()):
        raise Refused("member %r is not a file, folder or symlink" % member.name[:200])
    parent = "/"
    for part in parts[:-1]:  # never write through a symlink, whatever the archive made before
        parent = os.path.join(parent, part)
        if os.path.islink(parent):
            raise Refused("member %r lies beneath a symlink" % member.name[:200])
    return "/" + name


def main(argv: List[str]) -> int:
    try:
        if argv[:1] == ["pack"]:
            pack(int(argv[1]), argv[2:])
        elif argv[:1] == ["unpack"]:
            unpack(argv[1:])
        else:
            sys.stderr.write("usage: archiver.py pack MAX_BYTES ROOT... | unpack ROOT...\n")
            return 2
    except TooLarge as exc:
        sys.stderr.write("%s\n" % exc)
        return 3
    except (Refused, tarfile.TarError, OSError, ValueError) as exc:
        sys.stderr.write("%s: %s\n" % (type(exc).__name__, exc))
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
