"""The build context of orsbox's own image (``deploy/Dockerfile``): orsbox and its wheels, on the base.

``python -m orsbox.images.deploy`` makes sure of ``orsbox/base`` (built when it is not current, as
``orsbox build`` does), then fills ``deploy/build/``: ``site-packages/`` with the wheels of orsbox's
dependencies (``pyproject.toml``) installed by the host's pip for the base's ``python3``, and
``orsbox/`` with orsbox's own source. Builds have no network, so the image only copies them.
The wheels are installed again only when the dependencies or the base's Python change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import docker

from ..errors import ImageBuildError
from .base import ensure_base
from .engine import BuiltImage, Progress, connect
from .host import run_streaming
from .vendoring import PythonTarget, python_target

ROOT = Path(__file__).resolve().parents[2]  # the checkout: pyproject.toml, images/, deploy/
BUILD_DIR = "build"  # in the deploy folder; the Dockerfile COPYs from it
DEPENDENCIES = "site-packages"
SOURCE = "orsbox"
STAMP = ".orsbox-dependencies"  # in site-packages/: what it was installed for


def prepare(deploy_dir: Path = ROOT / "deploy", *, client: docker.DockerClient | None = None,
            progress: Progress = print) -> BuiltImage:
    """Fill *deploy_dir*/build for ``deploy/Dockerfile``; the base image it builds on."""
    with connect(client) as engine:
        base = ensure_base(engine, ROOT / "images", force=False, progress=progress)
        target = python_target(engine, base)
    build = deploy_dir / BUILD_DIR
    build.mkdir(parents=True, exist_ok=True)
    vendor_dependencies(build / DEPENDENCIES, dependencies(ROOT / "pyproject.toml"), target, progress)
    copy_source(ROOT / SOURCE, build / SOURCE)
    progress(f"{build} is ready: build on {base.tag} (BASE_IMAGE)")
    return base


def dependencies(pyproject: Path) -> list[str]:
    """orsbox's runtime requirements, as its pyproject.toml lists them."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def vendor_dependencies(target_dir: Path, requirements: list[str], target: PythonTarget, progress: Progress) -> None:
    """``pip install --target`` *requirements* for *target* into *target_dir*, unless it already holds them."""
    stamp = hashlib.sha256(json.dumps([requirements, target.describe()]).encode()).hexdigest()
    if (target_dir / STAMP).is_file() and (target_dir / STAMP).read_text() == stamp:
        progress(f"{target_dir}: current for {target.describe()}")
        return
    shutil.rmtree(target_dir, ignore_errors=True)
    progress(f"vendoring orsbox's dependencies for {target.describe()}: {', '.join(requirements)}")
    argv = [sys.executable, "-m", "pip", "install", "--target", str(target_dir), "--no-compile", "--no-input",
            "--disable-pip-version-check", "--progress-bar", "off", *target.pip_options(), *requirements]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    code, output = run_streaming(argv, target_dir.parent, env, lambda line: progress(f"[pip] {line}"))
    if code != 0:
        shutil.rmtree(target_dir, ignore_errors=True)
        raise ImageBuildError(f"vendoring orsbox's dependencies failed (pip exited {code}): {' '.join(argv)}\n"
                              + "\n".join(output))
    shutil.rmtree(target_dir / "bin", ignore_errors=True)  # console scripts name the host's interpreter
    (target_dir / STAMP).write_text(stamp)


def copy_source(source: Path, copy: Path) -> None:
    """A fresh copy of orsbox's package, without byte code (the image compiles its own)."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orsbox.images.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--deploy-dir", type=Path, default=ROOT / "deploy", help="the folder of deploy/Dockerfile")
    args = parser.parse_args(argv)
    try:
        prepare(args.deploy_dir)
    except ImageBuildError as exc:
        print(f"orsbox deploy: {exc.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
