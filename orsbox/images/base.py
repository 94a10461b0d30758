"""``orsbox/base``: the image every environment image is built on.

By default a Debian root file system made with ``debootstrap --variant=minbase`` plus
the packages in ``images/base/packages.txt`` (from the mirror `mirror.debian_mirror`
finds), given the command user (uid/gid 1000) and the mount points ``/workspace``,
``/run/orsbox`` and ``/opt/orsbox``, slimmed, packed with a deterministic tar and
``docker import``-ed. When ``ORSBOX_BASE_FROM`` names an image, the base is instead
built ``FROM`` that image with a generated Dockerfile that adds the same user and
directories.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

from ..agent.layout import AGENT_MOUNT, COMMAND_HOME, COMMAND_UID, COMMAND_USER, LABEL_INPUTS, SOCKET_DIR, WORKSPACE
from ..errors import ImageBuildError
from .engine import BuiltImage, Progress, current, docker_build, finish
from .hashing import (
    BASE,
    BASE_ENV,
    DEBIAN_SUITE,
    DEBIAN_VARIANT,
    PACKAGES_FILE,
    TAG_LENGTH,
    base_inputs_hash,
    hash_tag,
    read_packages,
    repository,
    source_date_epoch,
)
from .host import run, scratch_dir, stop, tail
from .mirror import Mirror, debian_mirror

BASE_FROM_ENV = "ORSBOX_BASE_FROM"
_OR_BASE_FROM = f"(or set {BASE_FROM_ENV} to build the base from an image you can pull)"
# Where debootstrap lives when sbin is not on a user's PATH.
DEBOOTSTRAP_FALLBACKS = ("/usr/sbin/debootstrap", "/sbin/debootstrap")
PROGRESS_INTERVAL = 15.0  # seconds between "still running" lines

# (path, mode, owned by the command user) of the directories every orsbox image has.
MOUNT_POINTS = (
    (WORKSPACE, 0o755, True),
    (SOCKET_DIR, 0o700, False),
    (AGENT_MOUNT, 0o755, False),
)
# Files written into the root file system so later `apt-get install`s in
# environment images stay slim too (as Debian's own slim images do).
DPKG_SLIM_CONFIG = """\
# orsbox: keep images small; no docs, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def ensure_base(
    client: docker.DockerClient, images_dir: Path, *, force: bool, progress: Progress
) -> BuiltImage:
    """Build ``orsbox/base`` unless it is current."""
    base_from = os.environ.get(BASE_FROM_ENV) or None
    inputs_hash = base_inputs_hash(images_dir, base_from)
    if not force:
        found = current(client, BASE, inputs_hash, progress)
        if found is not None:
            return found
    started = time.monotonic()
    if base_from:
        _build_base_from(client, base_from, inputs_hash, progress)
    else:
        packages = read_packages(images_dir / BASE / PACKAGES_FILE)
        _build_base_debootstrap(client, packages, inputs_hash, progress)
    return finish(client, BASE, inputs_hash, started, progress)


# ------------------------------------------------------------ FROM an image


def _base_dockerfile(base_from: str) -> str:
    """The generated Dockerfile for a base built ``FROM`` another image."""
    owner = f" -o {COMMAND_UID} -g {COMMAND_UID}"
    dirs = " ".join(
        f"&& install -d -m {mode:04o}{owner if owned else ''} {path}"
        for path, mode, owned in MOUNT_POINTS
    )
    return f"""\
FROM {base_from}
USER root
RUN set -eu; \\
    old_user="$(getent passwd {COMMAND_UID} | cut -d: -f1)" || true; \\
    if [ -n "$old_user" ]; then userdel -r "$old_user" 2>/dev/null || userdel "$old_user"; fi; \\
    old_group="$(getent group {COMMAND_UID} | cut -d: -f1)" || true; \\
    if [ -n "$old_group" ]; then groupdel "$old_group"; fi; \\
    groupadd -g {COMMAND_UID} {COMMAND_USER} \\
    && useradd -m -u {COMMAND_UID} -g {COMMAND_UID} -d {COMMAND_HOME} -s /bin/bash {COMMAND_USER} \\
    {dirs}
ENV LANG=C.UTF-8
WORKDIR {WORKSPACE}
CMD ["/bin/bash"]
"""


def _build_base_from(
    client: docker.DockerClient, base_from: str, inputs_hash: str, progress: Progress
) -> None:
    """Build the base ``FROM`` *base_from* with a generated Dockerfile."""
    progress(f"building {repository(BASE)} FROM {base_from} ({BASE_FROM_ENV})…")
    with tempfile.TemporaryDirectory(prefix="orsbox-base-from-") as context:
        Path(context, "Dockerfile").write_text(_base_dockerfile(base_from))
        docker_build(client, BASE, Path(context), inputs_hash, buildargs={}, progress=progress)


# ------------------------------------------------------------- debootstrap


def _build_base_debootstrap(
    client: docker.DockerClient, packages: list[str], inputs_hash: str, progress: Progress
) -> None:
    """debootstrap a root file system, customise and slim it, pack it and import it."""
    debootstrap = _require_debootstrap()
    mirror = _require_mirror()
    workdir = scratch_dir("orsbox-base-")
    try:
        rootfs = workdir / "rootfs"
        recipe = f"{DEBIAN_VARIANT} + {' '.join(packages)}"
        with _step(progress, f"debootstrap {DEBIAN_SUITE} ({recipe})"):
            _run_debootstrap(debootstrap, mirror, rootfs, packages, workdir / "debootstrap.log", progress)
        with _step(progress, f"set up user {COMMAND_USER} ({COMMAND_UID}) and mount points"):
            _customize_rootfs(rootfs)
        with _step(progress, "slim the root file system"):
            _slim_rootfs(rootfs)
        tarball = workdir / "rootfs.tar"
        with _step(progress, "pack the root file system (deterministic tar)"):
            _pack_rootfs(rootfs, tarball, source_date_epoch())
        size_mb = tarball.stat().st_size / 1e6
        with _step(progress, f"docker import {hash_tag(BASE, inputs_hash)} ({size_mb:.0f} MB)"):
            _import_rootfs(client, tarball, inputs_hash)
    finally:
        _remove_workdir(workdir)


@contextmanager
def _step(progress: Progress, label: str) -> Iterator[None]:
    """Report the start of a step, and its duration when it ends well."""
    progress(f"{label}…")
    started = time.monotonic()
    yield
    progress(f"  done in {time.monotonic() - started:.1f}s")


def _require_debootstrap() -> str:
    """The debootstrap executable; refuse early when it, or root, is missing."""
    found = shutil.which("debootstrap") or next(
        (path for path in DEBOOTSTRAP_FALLBACKS if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise ImageBuildError(f"debootstrap is not installed; run `apt-get install debootstrap` {_OR_BASE_FROM}")
    if os.geteuid() != 0:
        raise ImageBuildError(f"building the base with debootstrap needs root; run as root {_OR_BASE_FROM}")
    return found


def _require_mirror() -> Mirror:
    """The Debian mirror; refuse before any work when there is none."""
    try:
        return debian_mirror()
    except ImageBuildError as exc:
        raise ImageBuildError(f"{exc.detail} {_OR_BASE_FROM}") from None


def _run_debootstrap(
    debootstrap: str, mirror: Mirror, rootfs: Path, packages: list[str], log: Path, progress: Progress
) -> None:
    """Run debootstrap into *rootfs*, its output to *log*, with a line every so often."""
    argv = [debootstrap, f"--variant={DEBIAN_VARIANT}"]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    argv += [DEBIAN_SUITE, str(rootfs), mirror.url]
    # SOURCE_DATE_EPOCH makes py3compile write hash-based .pyc files, which stay
    # valid after the tar resets every file time (timestamp ones would not).
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch()),
           "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    progress(f"  from {mirror.url} ({mirror.source}; output kept in a log, its tail is shown on failure)")
    started = time.monotonic()
    with log.open("w") as out:
        # Its own process group, so stopping it also stops its dpkg and wget.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = _wait_reporting(proc, log, started, progress)
        finally:
            stop(proc)
    if code != 0:
        detail = tail(log)
        inner = tail(rootfs / "debootstrap" / "debootstrap.log", 10)
        if inner:
            detail += ["--- debootstrap/debootstrap.log ---", *inner]
        raise ImageBuildError(
            f"debootstrap failed (exit {code}) after {time.monotonic() - started:.0f}s: "
            f"{' '.join(argv)}\n" + "\n".join(detail)
        )


def _wait_reporting(proc: subprocess.Popen[bytes], log: Path, started: float,
                    progress: Progress) -> int:
    """Wait for *proc*, printing its latest ``I:`` log line every PROGRESS_INTERVAL."""
    while True:
        try:
            return proc.wait(timeout=PROGRESS_INTERVAL)
        except subprocess.TimeoutExpired:
            info = [line for line in tail(log, 5) if line.startswith("I: ")]
            latest = info[-1][3:].strip() if info else "starting"
            progress(f"  debootstrap {time.monotonic() - started:.0f}s: {latest}")


# ------------------------------------------------------- the root file system


def _customize_rootfs(rootfs: Path) -> None:
    """Add the user, the mount points and the slim dpkg settings."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    run([chroot, str(rootfs), "groupadd", "--gid", str(COMMAND_UID), COMMAND_USER], "groupadd")
    run([chroot, str(rootfs), "useradd", "--no-log-init", "--create-home",
         "--uid", str(COMMAND_UID), "--gid", str(COMMAND_UID), "--home-dir", COMMAND_HOME,
         "--shell", "/bin/bash", COMMAND_USER], "useradd")
    for path, mode, owned in MOUNT_POINTS:
        target = rootfs / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, COMMAND_UID if owned else 0, COMMAND_UID if owned else 0)
        target.chmod(mode)
    dpkg_config = rootfs / "etc/dpkg/dpkg.cfg.d/orsbox-slim"
    dpkg_config.parent.mkdir(parents=True, exist_ok=True)
    dpkg_config.write_text(DPKG_SLIM_CONFIG)
    dpkg_config.chmod(0o644)


def _slim_rootfs(rootfs: Path) -> None:
    """Drop apt lists and caches, logs, docs, man pages, translations, the machine id."""
    _empty_dir(rootfs / "var/lib/apt/lists")
    _remove_matching(rootfs / "var/cache/apt", ["*.bin", "archives/*.deb"])
    _remove_matching(rootfs / "var/cache/debconf", ["*-old"])
    # ldconfig's aux-cache records inode numbers and times: the only file that
    # otherwise differs between two builds from the same packages.
    _remove_matching(rootfs / "var/cache/ldconfig", ["aux-cache"])
    _empty_dir(rootfs / "var/log")
    for directory in ("man", "info"):
        _empty_dir(rootfs / "usr/share" / directory)
    _empty_dir(rootfs / "usr/share/locale", keep=lambda p: p.name == "locale.alias")
    doc = rootfs / "usr/share/doc"
    if doc.is_dir():
        for package in doc.iterdir():
            if package.is_dir() and not package.is_symlink():
                _empty_dir(package, keep=lambda p: p.name == "copyright")
    for name in ("etc/machine-id", "var/lib/dbus/machine-id"):
        machine_id = rootfs / name
        if machine_id.is_file() and not machine_id.is_symlink():
            machine_id.write_text("")
    # docker mounts its own /dev, /proc and /sys; the image keeps the empty dirs.
    for directory in ("dev", "proc", "sys", "tmp", "var/tmp", "run/lock"):
        _empty_dir(rootfs / directory)
    (rootfs / "tmp").chmod(0o1777)


def _empty_dir(directory: Path, keep: Callable[[Path], bool] = lambda _: False) -> None:
    """Remove what is inside *directory* (not itself), except entries *keep* accepts."""
    if not directory.is_dir() or directory.is_symlink():
        return
    for entry in directory.iterdir():
        if keep(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove_matching(directory: Path, patterns: Iterable[str]) -> None:
    for pattern in patterns:
        for entry in directory.glob(pattern):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()


def _pack_rootfs(rootfs: Path, tarball: Path, epoch: int) -> None:
    """Pack *rootfs* into *tarball* with sorted names, numeric owners and fixed times."""
    run(["tar", "--create", f"--file={tarball}", f"--directory={rootfs}",
         "--format=gnu", "--sort=name", "--numeric-owner", f"--mtime=@{epoch}",
         "--one-file-system", "."], "tar")


def _import_rootfs(client: docker.DockerClient, tarball: Path, inputs_hash: str) -> None:
    """``docker import`` *tarball* as the base's hash tag, with its config changes."""
    changes = [f"ENV {setting}" for setting in BASE_ENV] + [
        f"WORKDIR {WORKSPACE}",
        'CMD ["/bin/bash"]',
        f"LABEL {LABEL_INPUTS}={inputs_hash}",
    ]
    tag = inputs_hash[:TAG_LENGTH]
    try:
        # A path (not a file object) makes docker-py upload without a timeout.
        answer = client.api.import_image(
            src=str(tarball), repository=repository(BASE), tag=tag, changes=changes
        )
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"docker import of {tarball} failed: {exc}") from exc
    for line in str(answer).splitlines():
        message = json.loads(line) if line.strip().startswith("{") else {}
        if "error" in message:
            raise ImageBuildError(f"docker import of {tarball} failed: {message['error']}")


def _remove_workdir(workdir: Path) -> None:
    """Unmount anything debootstrap left mounted below *workdir*, then delete it.

    A bind mount of the host's /dev left behind by a failed debootstrap must
    never be deleted through, so the tree is only removed once nothing is
    mounted below it.
    """
    for point in _mounts_below(workdir):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = _mounts_below(workdir)
    if left:
        raise ImageBuildError(
            f"could not unmount {', '.join(left)}; remove {workdir} by hand once unmounted"
        )
    shutil.rmtree(workdir, ignore_errors=True)


def _mounts_below(directory: Path) -> list[str]:
    """Mount points at or below *directory*, deepest first."""
    prefix = str(directory.resolve())
    points = []
    with Path("/proc/self/mounts").open() as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].encode().decode("unicode_escape") if len(fields) > 1 else ""
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)
