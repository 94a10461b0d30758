"""Wheels for an environment's ``requirements.txt``, vendored on the host.

Containers have no network at build time, so the builder runs the host's ``pip install
--target`` into ``site-packages/`` of a temporary copy of the build context, for the base
image's ``python3`` (version, machine and glibc read from the base image once, as pip's
``--python-version``, ``--platform manylinux_…`` and ``--only-binary=:all:``), and the
Dockerfile copies it: ``COPY site-packages /opt/env/site-packages``, which is on the
agent's ``PYTHONPATH``. pip's download cache is reused between builds.

No package index is named here: pip reads its own configuration (``pip.conf``,
``PIP_INDEX_URL``, a ``--index-url`` line in the requirements file).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ..errors import ImageBuildError
from .engine import BuiltImage, Progress
from .hashing import REQUIREMENTS_FILE
from .host import run_streaming, scratch_dir

#: The folder made in the build context; images COPY it to ENV_SITE_PACKAGES (agent/layout.py).
VENDOR_DIR = "site-packages"
OLDEST_MANYLINUX_GLIBC = 5  # manylinux_2_5 (manylinux1) is the oldest manylinux tag
# What the base image's python3 is: JSON [major, minor, implementation, machine, libc, libc version].
PYTHON_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps([*sys.version_info[:2], sys.implementation.name, platform.machine(), *platform.libc_ver()]))"
)


@contextmanager
def vendored_context(client: docker.DockerClient, context: Path, name: str, base: BuiltImage,
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
    workdir = scratch_dir(f"orsbox-{name}-")
    try:
        copy = workdir / "context"
        shutil.copytree(context, copy, symlinks=True)
        vendor_requirements(copy, target, name, progress)
        yield copy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    code, output = run_streaming(argv, context, env, lambda line: progress(f"[{name}] {line}"))
    if code != 0:
        raise ImageBuildError(
            f"vendoring the wheels of {name}'s {REQUIREMENTS_FILE} for {target.describe()} failed "
            f"(pip exited {code}): {' '.join(argv)}\n" + "\n".join(output)
        )
    shutil.rmtree(context / VENDOR_DIR / "bin", ignore_errors=True)
    size_mb = _tree_size(context / VENDOR_DIR) / 1e6
    progress(f"  vendored {size_mb:.0f} MB in {time.monotonic() - started:.1f}s")


def pip_install_command(context: Path, target: PythonTarget) -> list[str]:
    """The host's pip, installing *context*'s requirements.txt into its site-packages/ for *target*.

    It names no index: pip's own configuration chooses it.
    """
    return [
        sys.executable, "-m", "pip", "install", "--target", str(context / VENDOR_DIR),
        "--no-compile", "--no-input", "--disable-pip-version-check", "--progress-bar", "off",
        *target.pip_options(), "-r", str(context / REQUIREMENTS_FILE),
    ]


def read_requirements(requirements: Path) -> list[str]:
    """The requirement lines of *requirements* (options, comments and blanks left out), for progress."""
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def _tree_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file() and not path.is_symlink())
