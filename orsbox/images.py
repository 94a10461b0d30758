"""Build orsbox's Docker images reproducibly, and skip the ones that are current.

Two kinds of image are built from the ``images/`` directory:

* ``orsbox/base``: a Debian bookworm root file system made with
  ``debootstrap --variant=minbase`` plus the packages in
  ``images/base/packages.txt``, given the user ``user`` (uid/gid 1000) and the
  mount points ``/workspace``, ``/run/orsbox`` and ``/opt/orsbox``, slimmed,
  packed with a deterministic tar and ``docker import``-ed.  When the
  environment variable ``ORSBOX_BASE_FROM`` names an image, the base is instead
  built ``FROM`` that image with a generated Dockerfile that adds the same user
  and directories.
* ``orsbox/<name>``: every other directory ``images/<name>/`` that holds a
  ``Dockerfile``, built with ``BASE_IMAGE`` set to the exact base tag.

An environment directory may hold a ``requirements.txt``.  Containers have no
network at build time, so the builder vendors those wheels on the host: it runs
the host's ``pip install --target`` into ``site-packages/`` of a temporary copy
of the build context, for the base image's ``python3`` (version, machine and
glibc read from the base image once, as pip's ``--python-version``,
``--platform manylinux_…`` and ``--only-binary=:all:``), and the Dockerfile
copies it: ``COPY site-packages /opt/env/site-packages``, which is on the
agent's ``PYTHONPATH``.  pip's download cache is reused between builds.

Each image's inputs are hashed (see `base_inputs_hash` and `context_inputs_hash`);
it is tagged ``orsbox/<name>:<hash[:12]>`` and ``orsbox/<name>:latest`` and
labelled ``orsbox.inputs=<hash>``.  An image whose hash tag already exists is
current and is not built again.

The module is synchronous: it is meant for the CLI (``orsbox build``), not for
the server's event loop.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.images import Image

BASE = "base"
IMAGE_PREFIX = "orsbox/"
INPUTS_LABEL = "orsbox.inputs"

# Bump whenever the base recipe below changes in a way that changes the image.
RECIPE_VERSION = "2"

DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "ORSBOX_DEBIAN_MIRROR"
BASE_FROM_ENV = "ORSBOX_BASE_FROM"
PACKAGES_FILE = "packages.txt"
# Fixed file times in the packed root file system; SOURCE_DATE_EPOCH overrides.
DEFAULT_SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z

USER_NAME = "user"
USER_ID = 1000
WORKSPACE = "/workspace"
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
# (path, mode, owned by the user) of the directories every orsbox image has.
MOUNT_POINTS = (
    (WORKSPACE, 0o755, True),
    ("/run/orsbox", 0o700, False),
    ("/opt/orsbox", 0o755, False),
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

TAG_LENGTH = 12
PROGRESS_INTERVAL = 15.0  # seconds between "still running" lines
LOG_TAIL_LINES = 25
WORK_ROOT = "/var/tmp"
# Where debootstrap lives when sbin is not on a user's PATH.
DEBOOTSTRAP_FALLBACKS = ("/usr/sbin/debootstrap", "/sbin/debootstrap")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")

# Wheels vendored on the host for an environment's requirements.txt.
REQUIREMENTS_FILE = "requirements.txt"
VENDOR_DIR = "site-packages"  # in the build context; images COPY it to /opt/env/site-packages
# Bump whenever how wheels are vendored changes: images with a requirements.txt are rebuilt.
VENDOR_RECIPE_VERSION = "1"
OLDEST_MANYLINUX_GLIBC = 5  # manylinux_2_5 (manylinux1) is the oldest manylinux tag
# What the base image's python3 is: JSON [major, minor, implementation, machine, libc, libc version].
PYTHON_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps([*sys.version_info[:2], sys.implementation.name, platform.machine(), *platform.libc_ver()]))"
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuiltImage:
    """One image that `build_images` made sure of.

    ``tag`` is the hash tag (``orsbox/<name>:<hash[:12]>``); ``built`` is False
    when the image was current and was skipped.
    """

    name: str
    tag: str
    image_id: str
    built: bool


class ImageBuildError(Exception):
    """An image could not be built; the message says which step failed and why."""


# --------------------------------------------------------------------------- API


def image_names(images_dir: Path) -> list[str]:
    """Names of the images buildable from *images_dir*: base first, then env dirs sorted."""
    if not images_dir.is_dir():
        return [BASE]
    envs = sorted(
        entry.name
        for entry in images_dir.iterdir()
        if entry.is_dir() and entry.name != BASE and (entry / "Dockerfile").is_file()
    )
    return [BASE, *envs]


def build_images(
    images_dir: Path,
    names: Sequence[str] | None = None,
    *,
    client: docker.DockerClient | None = None,
    progress: Progress = print,
    force: bool = False,
) -> list[BuiltImage]:
    """Build the images *names* (all when None) from *images_dir*, base first.

    Every environment image is built on the base, so the base is always made
    sure of first (built when it is not current) and is always the first
    entry of the result, followed by the environment images in the order
    asked.  Images that are current are skipped (``built=False``) unless
    *force*, which rebuilds the images asked for (all when *names* is None)
    but not the base when it is merely a dependency.
    """
    images_dir = Path(images_dir)
    envs = _resolve_env_names(image_names(images_dir), names)
    force_base = force and (names is None or BASE in names)
    with _connect(client) as engine:
        base = _ensure_base(engine, images_dir, force=force_base, progress=progress)
        results = [base]
        for name in envs:
            results.append(
                _ensure_env(engine, images_dir / name, name, base, force=force, progress=progress)
            )
    return results


# ------------------------------------------------------------------ selection


def _resolve_env_names(known: list[str], names: Sequence[str] | None) -> list[str]:
    """The environment images to build, in order, without duplicates; unknown names refused."""
    if names is None:
        names = known
    elif isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ImageBuildError(
            f"unknown image(s): {', '.join(unknown)}; known images: {', '.join(known)}"
        )
    for name in names:
        if not _NAME_RE.match(name):
            raise ImageBuildError(
                f"image directory name {name!r} is not a valid image name "
                "(lowercase letters and digits, with . _ - between them)"
            )
    return [name for name in dict.fromkeys(names) if name != BASE]


@contextmanager
def _connect(client: docker.DockerClient | None) -> Iterator[docker.DockerClient]:
    """Yield a docker client that answers; close it afterwards if we opened it."""
    own = client is None
    try:
        engine = docker.from_env() if client is None else client
        engine.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(
            f"the docker engine does not answer (is dockerd running, is DOCKER_HOST right?): {exc}"
        ) from exc
    try:
        yield engine
    finally:
        if own:
            engine.close()


# ------------------------------------------------------------ tags and hashes


def _repository(name: str) -> str:
    return f"{IMAGE_PREFIX}{name}"


def _hash_tag(name: str, inputs_hash: str) -> str:
    return f"{_repository(name)}:{inputs_hash[:TAG_LENGTH]}"


def _feed(digest: Any, *fields: str | bytes) -> None:
    """Add length-prefixed *fields* to *digest*, so no two field lists collide."""
    for field in fields:
        data = field.encode() if isinstance(field, str) else field
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)


def read_packages(packages_file: Path) -> list[str]:
    """The package names in *packages_file*: one a line, ``#`` comments and blanks ignored."""
    if not packages_file.is_file():
        raise ImageBuildError(f"base package list {packages_file} is missing")
    packages: list[str] = []
    for line in packages_file.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and name not in packages:
            packages.append(name)
    return packages


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_SOURCE_DATE_EPOCH


def base_inputs_hash(images_dir: Path, base_from: str | None = None) -> str:
    """The base image's inputs hash.

    It covers the recipe version, the suite and variant, the (normalised)
    package list and the file time, or the ``FROM`` image when *base_from* is
    given; not the mirror, which does not change what is installed.
    """
    digest = hashlib.sha256()
    _feed(digest, "orsbox-base", RECIPE_VERSION, str(USER_ID), *BASE_ENV)
    if base_from:
        _feed(digest, "from", base_from)
    else:
        packages = read_packages(images_dir / BASE / PACKAGES_FILE)
        _feed(digest, "debootstrap", DEBIAN_SUITE, DEBIAN_VARIANT, str(_source_date_epoch()))
        _feed(digest, "packages", *sorted(packages))
    return digest.hexdigest()


def context_inputs_hash(context_dir: Path, base_image_id: str) -> str:
    """An environment image's inputs hash: its build context and its base image id.

    Every entry of the context is hashed in order of relative path: files by
    path, executable bit and content, symlinks by target, directories by path.
    So a changed ``requirements.txt`` rebuilds the image and an unchanged one
    does not (the wheels it resolves to are not hashed: pin them to pin them).
    """
    digest = hashlib.sha256()
    _feed(digest, "orsbox-env", RECIPE_VERSION, "base", base_image_id)
    if (context_dir / REQUIREMENTS_FILE).is_file():
        _feed(digest, "vendor", VENDOR_RECIPE_VERSION)
    for relative in _context_entries(context_dir):
        path = context_dir / relative
        if path.is_symlink():
            _feed(digest, "L", relative, str(path.readlink()))
        elif path.is_dir():
            _feed(digest, "D", relative)
        elif path.is_file():
            executable = "x" if path.stat().st_mode & 0o111 else "-"
            _feed(digest, "F", relative, executable, _file_digest(path))
    return digest.hexdigest()


def _context_entries(context_dir: Path) -> list[str]:
    """Relative POSIX paths of everything below *context_dir*, sorted; links not followed.

    Python bytecode caches are left out (running a task's tests must not force a rebuild); each image
    folder's .dockerignore keeps them out of the build too.
    """
    entries: list[str] = []
    for parent, dirs, files in os.walk(context_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        base = Path(parent).relative_to(context_dir)
        entries += [(base / entry).as_posix() for entry in (*dirs, *files) if not entry.endswith(".pyc")]
    return sorted(entries)


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


# ------------------------------------------------------------------- current


def _find_image(client: docker.DockerClient, reference: str) -> Image | None:
    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker could not look up {reference}: {exc}") from exc


def _tag_latest(client: docker.DockerClient, name: str, image: Image) -> None:
    """Make ``orsbox/<name>:latest`` point at *image*."""
    latest = _find_image(client, f"{_repository(name)}:latest")
    if latest is None or latest.id != image.id:
        image.tag(_repository(name), "latest")


def _current(
    client: docker.DockerClient, name: str, inputs_hash: str, progress: Progress
) -> BuiltImage | None:
    """The image *name* if its hash tag exists (with ``:latest`` set), else None."""
    tag = _hash_tag(name, inputs_hash)
    image = _find_image(client, tag)
    if image is None:
        return None
    _tag_latest(client, name, image)
    progress(f"{_repository(name)} is current ({inputs_hash[:TAG_LENGTH]})")
    return BuiltImage(name=name, tag=tag, image_id=str(image.id), built=False)


def _finish(client: docker.DockerClient, name: str, inputs_hash: str, started: float,
            progress: Progress) -> BuiltImage:
    """Check the freshly built hash tag, point ``:latest`` at it and report."""
    tag = _hash_tag(name, inputs_hash)
    image = _find_image(client, tag)
    if image is None:
        raise ImageBuildError(f"{tag} was built but docker does not list it")
    _tag_latest(client, name, image)
    progress(f"{_repository(name)} built as {tag} in {time.monotonic() - started:.1f}s")
    return BuiltImage(name=name, tag=tag, image_id=str(image.id), built=True)


# ---------------------------------------------------------------------- base


def _ensure_base(
    client: docker.DockerClient, images_dir: Path, *, force: bool, progress: Progress
) -> BuiltImage:
    """Build ``orsbox/base`` unless it is current."""
    base_from = os.environ.get(BASE_FROM_ENV) or None
    inputs_hash = base_inputs_hash(images_dir, base_from)
    if not force:
        current = _current(client, BASE, inputs_hash, progress)
        if current is not None:
            return current
    started = time.monotonic()
    if base_from:
        _build_base_from(client, base_from, inputs_hash, progress)
    else:
        packages = read_packages(images_dir / BASE / PACKAGES_FILE)
        _build_base_debootstrap(client, packages, inputs_hash, progress)
    return _finish(client, BASE, inputs_hash, started, progress)


def _base_dockerfile(base_from: str) -> str:
    """The generated Dockerfile for a base built ``FROM`` another image."""
    owner = f" -o {USER_ID} -g {USER_ID}"
    dirs = " ".join(
        f"&& install -d -m {mode:04o}{owner if owned else ''} {path}"
        for path, mode, owned in MOUNT_POINTS
    )
    return f"""\
FROM {base_from}
USER root
RUN set -eu; \\
    old_user="$(getent passwd {USER_ID} | cut -d: -f1)" || true; \\
    if [ -n "$old_user" ]; then userdel -r "$old_user" 2>/dev/null || userdel "$old_user"; fi; \\
    old_group="$(getent group {USER_ID} | cut -d: -f1)" || true; \\
    if [ -n "$old_group" ]; then groupdel "$old_group"; fi; \\
    groupadd -g {USER_ID} {USER_NAME} \\
    && useradd -m -u {USER_ID} -g {USER_ID} -d /home/{USER_NAME} -s /bin/bash {USER_NAME} \\
    {dirs}
ENV LANG=C.UTF-8
WORKDIR {WORKSPACE}
CMD ["/bin/bash"]
"""


def _build_base_from(
    client: docker.DockerClient, base_from: str, inputs_hash: str, progress: Progress
) -> None:
    """Build the base ``FROM`` *base_from* with a generated Dockerfile."""
    progress(f"building {_repository(BASE)} FROM {base_from} ({BASE_FROM_ENV})…")
    with tempfile.TemporaryDirectory(prefix="orsbox-base-from-") as context:
        Path(context, "Dockerfile").write_text(_base_dockerfile(base_from))
        _docker_build(
            client, BASE, Path(context), inputs_hash, buildargs={}, progress=progress
        )


def _build_base_debootstrap(
    client: docker.DockerClient, packages: list[str], inputs_hash: str, progress: Progress
) -> None:
    """debootstrap a root file system, customise and slim it, pack it and import it."""
    debootstrap = _require_debootstrap()
    workdir = Path(tempfile.mkdtemp(prefix="orsbox-base-", dir=WORK_ROOT))
    try:
        rootfs = workdir / "rootfs"
        recipe = f"{DEBIAN_VARIANT} + {' '.join(packages)}"
        with _step(progress, f"debootstrap {DEBIAN_SUITE} ({recipe})"):
            _run_debootstrap(debootstrap, rootfs, packages, workdir / "debootstrap.log", progress)
        with _step(progress, f"set up user {USER_NAME} ({USER_ID}) and mount points"):
            _customize_rootfs(rootfs)
        with _step(progress, "slim the root file system"):
            _slim_rootfs(rootfs)
        tarball = workdir / "rootfs.tar"
        with _step(progress, "pack the root file system (deterministic tar)"):
            _pack_rootfs(rootfs, tarball, _source_date_epoch())
        size_mb = tarball.stat().st_size / 1e6
        with _step(progress, f"docker import {_hash_tag(BASE, inputs_hash)} ({size_mb:.0f} MB)"):
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
        raise ImageBuildError(
            "debootstrap is not installed; run `apt-get install debootstrap` "
            f"(or set {BASE_FROM_ENV} to build the base from an image you can pull)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building the base with debootstrap needs root; run as root "
            f"(or set {BASE_FROM_ENV} to build the base from an image you can pull)"
        )
    return found


def _run(argv: Sequence[str], what: str) -> None:
    """Run a short command; raise ImageBuildError with its output if it fails."""
    done = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
        raise ImageBuildError(
            f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n" + "\n".join(output)
        )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last *lines* lines of a text file (none if it is missing)."""
    try:
        with path.open(errors="replace") as handle:
            return list(deque((line.rstrip("\n") for line in handle), maxlen=lines))
    except OSError:
        return []


def _run_debootstrap(
    debootstrap: str, rootfs: Path, packages: list[str], log: Path, progress: Progress
) -> None:
    """Run debootstrap into *rootfs*, its output to *log*, with a line every so often."""
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_DEBIAN_MIRROR
    argv = [debootstrap, f"--variant={DEBIAN_VARIANT}"]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    argv += [DEBIAN_SUITE, str(rootfs), mirror]
    # SOURCE_DATE_EPOCH makes py3compile write hash-based .pyc files, which stay
    # valid after the tar resets every file time (timestamp ones would not).
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(_source_date_epoch()),
           "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    progress(f"  from {mirror} (output kept in a log; its tail is shown on failure)")
    started = time.monotonic()
    with log.open("w") as out:
        # Its own process group, so stopping it also stops its dpkg and wget.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = _wait_reporting(proc, log, started, progress)
        finally:
            _stop(proc)
    if code != 0:
        detail = _tail(log)
        inner = _tail(rootfs / "debootstrap" / "debootstrap.log", 10)
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
            info = [line for line in _tail(log, 5) if line.startswith("I: ")]
            latest = info[-1][3:].strip() if info else "starting"
            progress(f"  debootstrap {time.monotonic() - started:.0f}s: {latest}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Make sure *proc* and its process group have ended (after an interrupt they run on)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _customize_rootfs(rootfs: Path) -> None:
    """Add the user, the mount points and the slim dpkg settings."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    _run([chroot, str(rootfs), "groupadd", "--gid", str(USER_ID), USER_NAME], "groupadd")
    _run([chroot, str(rootfs), "useradd", "--no-log-init", "--create-home",
          "--uid", str(USER_ID), "--gid", str(USER_ID), "--home-dir", f"/home/{USER_NAME}",
          "--shell", "/bin/bash", USER_NAME], "useradd")
    for path, mode, owned in MOUNT_POINTS:
        target = rootfs / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        os.chown(target, USER_ID if owned else 0, USER_ID if owned else 0)
        target.chmod(mode)
    dpkg_config = rootfs / "etc/dpkg/dpkg.cfg.d/orsbox-slim"
    dpkg_config.parent.mkdir(parents=True, exist_ok=True)
    dpkg_config.write_text(DPKG_SLIM_CONFIG)
    dpkg_config.chmod(0o644)


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


def _pack_rootfs(rootfs: Path, tarball: Path, epoch: int) -> None:
    """Pack *rootfs* into *tarball* with sorted names, numeric owners and fixed times."""
    _run(["tar", "--create", f"--file={tarball}", f"--directory={rootfs}",
          "--format=gnu", "--sort=name", "--numeric-owner", f"--mtime=@{epoch}",
          "--one-file-system", "."], "tar")


def _import_rootfs(client: docker.DockerClient, tarball: Path, inputs_hash: str) -> None:
    """``docker import`` *tarball* as the base's hash tag, with its config changes."""
    changes = [f"ENV {setting}" for setting in BASE_ENV] + [
        f"WORKDIR {WORKSPACE}",
        'CMD ["/bin/bash"]',
        f"LABEL {INPUTS_LABEL}={inputs_hash}",
    ]
    tag = inputs_hash[:TAG_LENGTH]
    try:
        # A path (not a file object) makes docker-py upload without a timeout.
        answer = client.api.import_image(
            src=str(tarball), repository=_repository(BASE), tag=tag, changes=changes
        )
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"docker import of {tarball} failed: {exc}") from exc
    for line in str(answer).splitlines():
        message = json.loads(line) if line.strip().startswith("{") else {}
        if "error" in message:
            raise ImageBuildError(f"docker import of {tarball} failed: {message['error']}")


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


# ------------------------------------------------------------- environments


def _ensure_env(
    client: docker.DockerClient,
    context: Path,
    name: str,
    base: BuiltImage,
    *,
    force: bool,
    progress: Progress,
) -> BuiltImage:
    """Build ``orsbox/<name>`` from *context* on *base* unless it is current."""
    inputs_hash = context_inputs_hash(context, base.image_id)
    if not force:
        current = _current(client, name, inputs_hash, progress)
        if current is not None:
            return current
    started = time.monotonic()
    with _build_context(client, context, name, base, progress) as build_context:
        progress(f"docker build {_hash_tag(name, inputs_hash)} from {context} on {base.tag}…")
        _docker_build(client, name, build_context, inputs_hash,
                      buildargs={"BASE_IMAGE": base.tag}, progress=progress)
    return _finish(client, name, inputs_hash, started, progress)


# ------------------------------------------------------------ vendored wheels


@dataclass(frozen=True)
class PythonTarget:
    """The interpreter wheels are vendored for: a base image's ``python3``."""

    version: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str  # "2.36"

    def platforms(self) -> list[str]:
        """pip ``--platform`` tags: every manylinux this glibc runs, newest first.

        pip does not widen ``manylinux_2_X`` to older glibc versions itself, so
        all are given; ``manylinux2014`` covers wheels with only legacy tags.
        """
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, OLDEST_MANYLINUX_GLIBC - 1, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]

    def pip_options(self) -> list[str]:
        """The pip options that select wheels for this interpreter instead of the host's."""
        options = ["--only-binary=:all:", "--python-version", self.version, "--implementation", "cp",
                   "--abi", f"cp{self.version.replace('.', '')}"]
        for platform in self.platforms():
            options += ["--platform", platform]
        return options

    def describe(self) -> str:
        return f"python {self.version} ({self.machine}, glibc {self.glibc})"


_python_targets: dict[str, PythonTarget] = {}  # by base image id: probed once per process


def python_target(client: docker.DockerClient, base: BuiltImage) -> PythonTarget:
    """What the base image's ``python3`` is (run once per base image id and remembered)."""
    if base.image_id not in _python_targets:
        try:
            output = client.containers.run(
                base.image_id, ["python3", "-c", PYTHON_PROBE], entrypoint=[], remove=True,
                network_disabled=True,
            )
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageBuildError(f"could not run python3 in {base.tag} to vendor wheels for it: {exc}") from exc
        _python_targets[base.image_id] = parse_python_probe(output.decode(errors="replace"), base.tag)
    return _python_targets[base.image_id]


def parse_python_probe(output: str, where: str) -> PythonTarget:
    """A PythonTarget from `PYTHON_PROBE`'s output; refuse what manylinux wheels cannot serve."""
    try:
        major, minor, implementation, machine, libc, libc_version = json.loads(output)
    except (TypeError, ValueError):
        raise ImageBuildError(f"unexpected answer from python3 in {where}: {output.strip()!r}") from None
    if implementation != "cpython" or libc != "glibc":
        raise ImageBuildError(
            f"{where}'s python3 is {implementation} on {libc or 'an unknown libc'}: vendored wheels "
            "(manylinux) need CPython on glibc"
        )
    return PythonTarget(version=f"{major}.{minor}", machine=machine, glibc=libc_version)


@contextmanager
def _build_context(client: docker.DockerClient, context: Path, name: str, base: BuiltImage,
                   progress: Progress) -> Iterator[Path]:
    """The directory to build from: *context* itself, or a copy with requirements.txt's wheels vendored."""
    if not (context / REQUIREMENTS_FILE).is_file():
        yield context
        return
    if (context / VENDOR_DIR).exists():
        raise ImageBuildError(
            f"{context / VENDOR_DIR} exists: the builder makes {VENDOR_DIR}/ from {REQUIREMENTS_FILE} "
            "in a copy of the build context; remove it"
        )
    target = python_target(client, base)
    workdir = Path(tempfile.mkdtemp(prefix=f"orsbox-{name}-", dir=WORK_ROOT))
    try:
        copy = workdir / "context"
        shutil.copytree(context, copy, symlinks=True)
        vendor_requirements(copy, target, name, progress)
        yield copy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def read_requirements(requirements: Path) -> list[str]:
    """The requirement lines of *requirements* (options, comments and blanks left out), for progress."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def pip_install_command(context: Path, target: PythonTarget) -> list[str]:
    """The host's pip, installing *context*'s requirements.txt into its site-packages/ for *target*."""
    return [
        sys.executable, "-m", "pip", "install", "--target", str(context / VENDOR_DIR),
        "--no-compile", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
        *target.pip_options(), "-r", str(context / REQUIREMENTS_FILE),
    ]


def vendor_requirements(context: Path, target: PythonTarget, name: str, progress: Progress) -> None:
    """``pip install`` *context*'s requirements.txt into *context*/site-packages, for *target*.

    No byte code is compiled (the host's Python may not be the image's: the image
    compiles it); console scripts, which name the host's interpreter, are dropped.
    """
    if importlib.util.find_spec("pip") is None:
        raise ImageBuildError(
            f"{name} has a {REQUIREMENTS_FILE}, but {sys.executable} has no pip to vendor its wheels "
            "(install it: python -m ensurepip)"
        )
    wanted = ", ".join(read_requirements(context / REQUIREMENTS_FILE)) or "(no requirements)"
    progress(f"vendoring wheels for {target.describe()}: {wanted}")
    started = time.monotonic()
    argv = pip_install_command(context, target)
    code, output = _run_streaming(argv, context, lambda line: progress(f"[{name}] {line}"))
    if code != 0:
        raise ImageBuildError(
            f"vendoring the wheels of {name}'s {REQUIREMENTS_FILE} for {target.describe()} failed "
            f"(pip exited {code}): {' '.join(argv)}\n" + "\n".join(output)
        )
    shutil.rmtree(context / VENDOR_DIR / "bin", ignore_errors=True)
    size_mb = _tree_size(context / VENDOR_DIR) / 1e6
    progress(f"  vendored {size_mb:.0f} MB in {time.monotonic() - started:.1f}s")


def _run_streaming(argv: Sequence[str], cwd: Path, line_out: Progress) -> tuple[int, list[str]]:
    """Run *argv* in *cwd*, passing each output line on; its exit code and last lines."""
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    # Its own process group, so an interrupted build also stops pip.
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line.strip():
                tail.append(line)
                line_out(line)
        return proc.wait(), list(tail)
    finally:
        _stop(proc)


def _tree_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file() and not path.is_symlink())


def _docker_build(
    client: docker.DockerClient,
    name: str,
    context: Path,
    inputs_hash: str,
    *,
    buildargs: dict[str, str],
    progress: Progress,
) -> None:
    """``docker build`` *context* as *name*'s hash tag, streaming lines prefixed by *name*."""
    output: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    try:
        stream = client.api.build(
            path=str(context), tag=_hash_tag(name, inputs_hash), buildargs=buildargs,
            labels={INPUTS_LABEL: inputs_hash}, rm=True, forcerm=True, decode=True,
        )
        for chunk in stream:
            _report_chunk(name, chunk, output, progress)
    except (docker.errors.DockerException, OSError) as exc:
        raise ImageBuildError(_build_failure(name, str(exc), output)) from exc


def _report_chunk(name: str, chunk: dict[str, Any], output: deque[str], progress: Progress) -> None:
    """Print one decoded build-stream chunk; raise on an error chunk."""
    if "error" in chunk:
        raise ImageBuildError(_build_failure(name, str(chunk["error"]).strip(), output))
    text = chunk.get("stream") or chunk.get("status") or ""
    for line in str(text).splitlines():
        if line.strip():
            output.append(line)
            progress(f"[{name}] {line}")


def _build_failure(name: str, error: str, output: deque[str]) -> str:
    tail = "\n".join(output)
    return f"docker build of {_repository(name)} failed: {error}" + (
        f"\n--- last build output ---\n{tail}" if tail else ""
    )
