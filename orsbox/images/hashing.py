"""What an image is: its name, its tags, and the hash of its build inputs.

Each image's inputs are hashed (`base_inputs_hash`, `context_inputs_hash`); it is
tagged ``orsbox/<name>:<hash[:12]>`` and ``orsbox/<name>:latest`` and labelled
``orsbox.inputs=<hash>``. An image whose hash tag already exists is current.

The recipe constants that go into a hash live here, beside the hash: change one
and every image built from it is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..agent.layout import COMMAND_UID
from ..errors import ImageBuildError

BASE = "base"
IMAGE_PREFIX = "orsbox/"
TAG_LENGTH = 12

# Bump whenever the base recipe (base.py) changes in a way that changes the image.
RECIPE_VERSION = "2"
DEBIAN_SUITE = "bookworm"
DEBIAN_VARIANT = "minbase"
PACKAGES_FILE = "packages.txt"  # in images/base/
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
# Fixed file times in the packed root file system; SOURCE_DATE_EPOCH overrides.
DEFAULT_SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z

# An environment's wheels, vendored on the host (vendoring.py).
REQUIREMENTS_FILE = "requirements.txt"
# Bump whenever how wheels are vendored changes: images with a requirements.txt are rebuilt.
VENDOR_RECIPE_VERSION = "1"


def repository(name: str) -> str:
    """``orsbox/<name>``."""
    return f"{IMAGE_PREFIX}{name}"


def hash_tag(name: str, inputs_hash: str) -> str:
    """``orsbox/<name>:<hash[:12]>``: the tag that says an image is current."""
    return f"{repository(name)}:{inputs_hash[:TAG_LENGTH]}"


def base_inputs_hash(images_dir: Path, base_from: str | None = None) -> str:
    """The base image's inputs hash.

    It covers the recipe version, the suite and variant, the (normalised)
    package list and the file time, or the ``FROM`` image when *base_from* is
    given; not the mirror, which does not change what is installed.
    """
    digest = hashlib.sha256()
    _feed(digest, "orsbox-base", RECIPE_VERSION, str(COMMAND_UID), *BASE_ENV)
    if base_from:
        _feed(digest, "from", base_from)
    else:
        packages = read_packages(images_dir / BASE / PACKAGES_FILE)
        _feed(digest, "debootstrap", DEBIAN_SUITE, DEBIAN_VARIANT, str(source_date_epoch()))
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


def source_date_epoch() -> int:
    """The file time of the packed base (unix time): SOURCE_DATE_EPOCH, else a fixed one."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_SOURCE_DATE_EPOCH


def _feed(digest: Any, *fields: str | bytes) -> None:
    """Add length-prefixed *fields* to *digest*, so no two field lists collide."""
    for field in fields:
        data = field.encode() if isinstance(field, str) else field
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)


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
