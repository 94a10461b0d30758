"""The fork archiver (`agent/runtime/archiver.py`) as a program: a faithful round trip, a size cap, and a
hostile archive (it comes from another session's container) that cannot write outside the fork's folders."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from orsbox.agent.runtime import archiver

ARCHIVER = archiver.__file__


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-I", "-S", ARCHIVER, *args], input=stdin, capture_output=True,
                          timeout=60, check=False)


def tree(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under `root`: its kind, permission bits and content (a symlink's target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", 0, os.readlink(path).encode())
        elif path.is_dir():
            found[rel] = ("dir", path.stat().st_mode & 0o7777, b"")
        elif path.is_file():
            found[rel] = ("file", path.stat().st_mode & 0o7777, path.read_bytes())
    return found


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    return workspace, home


def test_a_pack_unpacks_to_the_same_files_links_and_modes(roots: tuple[Path, Path]) -> None:
    workspace, home = roots
    (workspace / "deep" / "er").mkdir(parents=True)
    (workspace / "deep" / "er" / "blob.bin").write_bytes(os.urandom(300_000))
    (workspace / "run.sh").write_text("#!/bin/sh\n")
    (workspace / "run.sh").chmod(0o755)
    (workspace / "secret").write_text("mine")
    (workspace / "secret").chmod(0o4600)  # a set-uid bit is not carried over
    (workspace / "link").symlink_to("deep/er/blob.bin")
    (workspace / "dirlink").symlink_to("deep")
    os.mkfifo(workspace / "fifo")  # not a file: left out
    (home / ".note").write_text("home")
    before = {**tree(workspace), "home": tree(home)}

    packed = run("pack", str(10**8), str(workspace), str(home))
    assert packed.returncode == 0, packed.stderr
    for root in roots:
        subprocess.run(["rm", "-rf", str(root)], check=True)
        root.mkdir()
    unpacked = run("unpack", str(workspace), str(home), stdin=packed.stdout)
    assert unpacked.returncode == 0, unpacked.stderr
    after = {**tree(workspace), "home": tree(home)}
    assert "fifo" not in after
    before["secret"] = ("file", 0o600, b"mine")
    assert after == before


def test_a_pack_past_its_limit_stops_with_status_3(roots: tuple[Path, Path]) -> None:
    workspace, _ = roots
    (workspace / "big").write_bytes(os.urandom(2_000_000))
    packed = run("pack", "1000000", str(workspace))
    assert packed.returncode == 3 and b"larger than 1000000 bytes" in packed.stderr


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def hostile_archives(workspace: Path, victim: Path) -> dict[str, bytes]:
    ws = workspace.as_posix().lstrip("/")
    return {
        "dot-dot": archive((member(f"{ws}/../escaped"), b"x")),
        "absolute": archive((member(f"/{victim.as_posix().lstrip('/')}/abs"), b"x")),
        "outside the roots": archive((member(f"{victim.as_posix().lstrip('/')}/outside"), b"x")),
        "hard link": archive((member(f"{ws}/hard", tarfile.LNKTYPE, victim.as_posix().lstrip("/") + "/f"), b"")),
        "device": archive((member(f"{ws}/null", tarfile.CHRTYPE), b"")),
        "through a symlink": archive((member(f"{ws}/link", tarfile.SYMTYPE, str(victim)), b""),
                                     (member(f"{ws}/link/planted"), b"x")),
    }


@pytest.mark.parametrize("kind", ["dot-dot", "absolute", "outside the roots", "hard link", "device",
                                  "through a symlink"])
def test_a_hostile_archive_writes_nothing_outside_the_roots(roots: tuple[Path, Path], tmp_path: Path,
                                                            kind: str) -> None:
    workspace, _ = roots
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("host file")
    unpacked = run("unpack", str(workspace), stdin=hostile_archives(workspace, victim)[kind])
    assert unpacked.returncode == 4, unpacked.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["f"] and (victim / "f").read_text() == "host file"
    assert not (tmp_path / "escaped").exists()


def test_garbage_is_refused_cleanly(roots: tuple[Path, Path]) -> None:
    unpacked = run("unpack", str(roots[0]), stdin=b"not a tar at all" * 100)
    assert unpacked.returncode == 4 and b"Traceback" not in unpacked.stderr
    assert run("frobnicate").returncode == 2
