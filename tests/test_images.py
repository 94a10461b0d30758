"""Tests for orsbox.images: naming, hashing, the mirror, packing, and real builds on the engine.

The tests marked ``docker`` need a docker engine; the base image is built once
(about 40 s with debootstrap) or reused when current, and is never removed.
Every other image they build is removed again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from orsbox.agent.layout import LABEL_INPUTS
from orsbox.images import (
    BASE,
    IMAGE_PREFIX,
    BuiltImage,
    ImageBuildError,
    build_images,
    hashing,
    host,
    image_names,
    mirror,
    vendoring,
)
from orsbox.images import base as base_recipe
from orsbox.images.build import build_network, task_images

REPO_IMAGES = Path(__file__).resolve().parents[1] / "images"
TEST_NAME = "imgtest"
FAIL_NAME = "imgtestfail"
NET_NAME = "imgtestnet"
TEST_DOCKERFILE = """\
ARG BASE_IMAGE=orsbox/base:latest
FROM ${BASE_IMAGE}
COPY hello.txt /opt/hello.txt
LABEL orsbox.environment=imgtest
"""


def _make_images_dir(root: Path) -> Path:
    """An images dir with the repo's base package list and a tiny env image."""
    images_dir = root / "images"
    (images_dir / BASE).mkdir(parents=True)
    shutil.copy(REPO_IMAGES / BASE / hashing.PACKAGES_FILE, images_dir / BASE)
    context = images_dir / TEST_NAME
    context.mkdir()
    (context / "Dockerfile").write_text(TEST_DOCKERFILE)
    (context / "hello.txt").write_text("hello\n")
    return images_dir


# ------------------------------------------------------------ without docker


def test_image_names_base_first_then_env_dirs_sorted(tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "mid"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / BASE).mkdir()
    (tmp_path / "no-dockerfile").mkdir()
    (tmp_path / "README.md").write_text("not an image\n")
    assert image_names(tmp_path) == [BASE, "alpha", "mid", "zeta"]


def test_task_images_are_the_task_folders_with_a_dockerfile(tmp_path: Path) -> None:
    assert task_images(tmp_path) == []
    for task in ("two", "one", "no-dockerfile"):
        (tmp_path / "tasks" / task).mkdir(parents=True)
    for task in ("two", "one"):
        (tmp_path / "tasks" / task / "Dockerfile").write_text("FROM scratch\n")
    assert task_images(tmp_path) == [("one", tmp_path / "tasks" / "one"), ("two", tmp_path / "tasks" / "two")]
    (tmp_path / "tasks" / "Bad Name").mkdir()
    (tmp_path / "tasks" / "Bad Name" / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(ImageBuildError, match="not a valid image name part"):
        task_images(tmp_path)
    assert [name for name, _ in task_images(REPO_IMAGES / "swe-mini")] == [
        "bisect", "intervals", "roman", "stack", "wordcount"]


def test_image_names_without_images_dir(tmp_path: Path) -> None:
    assert image_names(tmp_path / "missing") == [BASE]


def test_unknown_name_lists_known_images(tmp_path: Path) -> None:
    images_dir = _make_images_dir(tmp_path)
    with pytest.raises(ImageBuildError) as caught:
        build_images(images_dir, ["nope"], progress=lambda _: None)
    message = str(caught.value)
    assert "nope" in message
    assert f"{BASE}, {TEST_NAME}" in message


def test_engine_not_answering(tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-docker.sock", version="1.41")
    with pytest.raises(ImageBuildError, match="does not answer"):
        build_images(_make_images_dir(tmp_path), [BASE], client=client, progress=print)


def test_missing_debootstrap_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(base_recipe, "DEBOOTSTRAP_FALLBACKS", ())
    with pytest.raises(ImageBuildError, match="apt-get install debootstrap"):
        base_recipe._require_debootstrap()


def test_read_packages_ignores_comments_and_duplicates(tmp_path: Path) -> None:
    packages = tmp_path / "packages.txt"
    packages.write_text("# comment\npython3\n\n  procps  # ps and friends\npython3\n")
    assert hashing.read_packages(packages) == ["python3", "procps"]


def test_base_hash_ignores_mirror_and_comments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images_dir = _make_images_dir(tmp_path)
    packages = images_dir / BASE / hashing.PACKAGES_FILE
    first = hashing.base_inputs_hash(images_dir)
    monkeypatch.setenv(mirror.MIRROR_ENV, "http://deb.example.com/debian")
    packages.write_text(packages.read_text() + "\n# just a comment\n")
    assert hashing.base_inputs_hash(images_dir) == first
    packages.write_text(packages.read_text() + "less\n")
    assert hashing.base_inputs_hash(images_dir) != first
    assert hashing.base_inputs_hash(images_dir, "python:3.12-slim") != first


def test_context_hash_covers_paths_contents_modes_and_base(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "sub").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM x\n")
    (context / "sub" / "a.txt").write_text("a")
    first = hashing.context_inputs_hash(context, "sha256:1")
    assert hashing.context_inputs_hash(context, "sha256:1") == first
    assert hashing.context_inputs_hash(context, "sha256:2") != first
    (context / "sub" / "a.txt").write_text("b")
    changed = hashing.context_inputs_hash(context, "sha256:1")
    assert changed != first
    (context / "sub" / "a.txt").chmod(0o755)
    assert hashing.context_inputs_hash(context, "sha256:1") != changed
    (context / "sub" / "a.txt").rename(context / "sub" / "b.txt")
    assert hashing.context_inputs_hash(context, "sha256:1") != changed


def test_pack_is_deterministic(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "b").write_text("b")
    (rootfs / "etc" / "a").write_text("a")
    (rootfs / "workspace").mkdir()
    if os.geteuid() == 0:
        os.chown(rootfs / "workspace", 1000, 1000)
    digests = []
    for attempt in range(2):
        os.utime(rootfs / "etc" / "a", (1_000_000 + attempt, 1_000_000 + attempt))
        tarball = tmp_path / f"rootfs{attempt}.tar"
        base_recipe._pack_rootfs(rootfs, tarball, 1_700_000_000)
        digests.append(hashlib.sha256(tarball.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    with tarfile.open(tmp_path / "rootfs0.tar") as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == [".", "./etc", "./etc/a", "./etc/b", "./workspace"]
    assert {m.mtime for m in members} == {1_700_000_000}
    if os.geteuid() == 0:
        assert members[-1].uid == 1000


def test_base_from_dockerfile_adds_user_and_mount_points() -> None:
    dockerfile = base_recipe._base_dockerfile("python:3.12-slim")
    assert dockerfile.startswith("FROM python:3.12-slim\n")
    assert "useradd -m -u 1000 -g 1000 -d /home/user -s /bin/bash user" in dockerfile
    assert "install -d -m 0755 -o 1000 -g 1000 /workspace" in dockerfile
    assert "install -d -m 0700 /run/orsbox" in dockerfile
    assert "install -d -m 0755 /opt/orsbox" in dockerfile
    assert "WORKDIR /workspace" in dockerfile


# ---------------------------------------------------------------- the mirror

DEBIAN_SOURCES = """\
Types: deb-src
URIs: http://src.example.com/debian
Suites: bookworm
Components: main

# Enabled: no below: apt skips it, and so do we.
Types: deb
URIs: http://disabled.example.com/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://security.example.com/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://deb.example.com/debian/ http://other.example.com/debian
Suites: bookworm bookworm-updates
Components: main contrib
"""


@pytest.fixture
def apt_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty /etc/apt, and no ORSBOX_DEBIAN_MIRROR."""
    monkeypatch.delenv(mirror.MIRROR_ENV, raising=False)
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True)
    return tmp_path / "apt"


def test_mirror_from_deb822_skips_source_disabled_and_security_entries(apt_dir: Path) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    found = mirror.debian_mirror(apt_dir)
    assert found == mirror.Mirror("http://deb.example.com/debian", str(apt_dir / "sources.list.d/debian.sources"))


def test_mirror_from_sources_list_comes_first_and_options_are_skipped(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text(
        "# deb http://commented.example.com/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://list.example.com/debian bookworm main\n"
    )
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    (apt_dir / "sources.list.d" / "other.list.disabled").write_text("deb http://off.example.com/debian sid main\n")
    assert mirror.debian_mirror(apt_dir).url == "http://list.example.com/debian"


def test_mirror_env_wins_over_apt_sources(apt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (apt_dir / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    monkeypatch.setenv(mirror.MIRROR_ENV, "https://mirror.example.com/debian")
    assert mirror.debian_mirror(apt_dir) == mirror.Mirror("https://mirror.example.com/debian", mirror.MIRROR_ENV)


def test_no_debian_mirror_is_a_clear_error(apt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (apt_dir / "sources.list").write_text(
        "deb http://archive.example.com/ubuntu jammy main restricted\n"
        "deb cdrom:[Debian 12]/ bookworm main\n"
    )
    with pytest.raises(ImageBuildError) as caught:
        mirror.debian_mirror(apt_dir)
    message = str(caught.value)
    assert f"read {apt_dir / 'sources.list'}" in message and mirror.MIRROR_ENV in message
    monkeypatch.setattr(mirror, "APT_DIR", apt_dir)
    monkeypatch.setattr(base_recipe, "_require_debootstrap", lambda: "/bin/false")
    with pytest.raises(ImageBuildError, match="ORSBOX_BASE_FROM"):  # before any work is done
        base_recipe._build_base_debootstrap(None, ["python3"], "0" * 64, lambda _: None)


# --------------------------------------------------------------- with docker


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    try:
        engine = docker.from_env()
        engine.ping()
    except (docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"docker engine not available: {exc}")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base(client: docker.DockerClient) -> BuiltImage:
    """orsbox/base from the repo's recipe: built once, reused when current, never removed."""
    (built,) = build_images(REPO_IMAGES, [BASE], client=client)
    return built


def _remove_repository(client: docker.DockerClient, name: str) -> None:
    for image in client.images.list(name=f"{IMAGE_PREFIX}{name}"):
        for tag in image.tags:
            client.images.remove(tag, force=True)


@pytest.fixture
def cleanup(client: docker.DockerClient) -> Iterator[None]:
    for name in (TEST_NAME, FAIL_NAME, NET_NAME):
        _remove_repository(client, name)
    yield
    for name in (TEST_NAME, FAIL_NAME, NET_NAME):
        _remove_repository(client, name)


@pytest.mark.docker
def test_base_image_layout(client: docker.DockerClient, base: BuiltImage) -> None:
    image = client.images.get(base.tag)
    assert client.images.get(f"{IMAGE_PREFIX}{BASE}:latest").id == image.id == base.image_id
    assert image.labels[LABEL_INPUTS].startswith(base.tag.rsplit(":", 1)[1])
    assert image.attrs["Config"]["WorkingDir"] == "/workspace"
    script = "id; stat -c '%n %u:%g %a' /workspace /run/orsbox /opt/orsbox; python3 -V"
    output = client.containers.run(
        base.tag, ["sh", "-c", script], user="1000", read_only=True, remove=True
    ).decode()
    assert "uid=1000(user) gid=1000(user) groups=1000(user)" in output
    assert "/workspace 1000:1000 755" in output
    assert "/run/orsbox 0:0 700" in output
    assert "/opt/orsbox 0:0 755" in output
    assert "Python 3." in output


@pytest.mark.docker
def test_base_current_is_skipped_fast(client: docker.DockerClient, base: BuiltImage) -> None:
    lines: list[str] = []
    started = time.monotonic()
    (again,) = build_images(REPO_IMAGES, [BASE], client=client, progress=lines.append)
    assert time.monotonic() - started < 1.0
    assert again == BuiltImage(BASE, base.tag, base.image_id, built=False)
    assert lines == [f"orsbox/base is current ({base.tag.rsplit(':', 1)[1]})"]


@pytest.mark.docker
def test_env_image_build_skip_and_rebuild(
    client: docker.DockerClient, base: BuiltImage, tmp_path: Path, cleanup: None
) -> None:
    images_dir = _make_images_dir(tmp_path)
    hello = images_dir / TEST_NAME / "hello.txt"
    repository = f"{IMAGE_PREFIX}{TEST_NAME}"
    lines: list[str] = []

    first_base, first = build_images(images_dir, [TEST_NAME], client=client,
                                     progress=lines.append)
    assert first_base == BuiltImage(BASE, base.tag, base.image_id, built=False)
    assert first.name == TEST_NAME and first.built
    assert first.tag.startswith(f"{repository}:") and len(first.tag.rsplit(":", 1)[1]) == 12
    image = client.images.get(first.tag)
    assert image.id == first.image_id == client.images.get(f"{repository}:latest").id
    assert image.labels[LABEL_INPUTS].startswith(first.tag.rsplit(":", 1)[1])
    assert image.labels["orsbox.environment"] == TEST_NAME
    assert any(line.startswith(f"[{TEST_NAME}] ") for line in lines)

    lines.clear()
    (_, second) = build_images(images_dir, [TEST_NAME], client=client, progress=lines.append)
    assert second == BuiltImage(TEST_NAME, first.tag, first.image_id, built=False)
    assert f"{repository} is current ({first.tag.rsplit(':', 1)[1]})" in lines

    hello.write_text("hello again\n")
    (_, third) = build_images(images_dir, [TEST_NAME], client=client, progress=lambda _: None)
    assert third.built and third.tag != first.tag and third.image_id != first.image_id
    assert client.images.get(f"{repository}:latest").id == third.image_id

    # Back to the first inputs: current again, and :latest follows it back.
    hello.write_text("hello\n")
    (_, fourth) = build_images(images_dir, [TEST_NAME], client=client, progress=lambda _: None)
    assert fourth == BuiltImage(TEST_NAME, first.tag, first.image_id, built=False)
    assert client.images.get(f"{repository}:latest").id == first.image_id

    (_, forced) = build_images(images_dir, [TEST_NAME], client=client, force=True,
                               progress=lambda _: None)
    assert forced.built and forced.tag == first.tag


def _network_probe_image(images_dir: Path, build_toml: str | None) -> Path:
    """An image whose build records the network interfaces its RUN step sees (a step of its own per
    variant: the engine's layer cache does not key on the network)."""
    context = images_dir / NET_NAME
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text("ARG BASE_IMAGE=orsbox/base:latest\nFROM ${BASE_IMAGE}\n"
                                        f"RUN ls /sys/class/net > /opt/interfaces  # {build_toml!r}\n")
    if build_toml is not None:
        (context / "build.toml").write_text(build_toml)
    return context


def _interfaces(client: docker.DockerClient, tag: str) -> list[str]:
    output = client.containers.run(tag, ["cat", "/opt/interfaces"], network_disabled=True, remove=True)
    return output.decode().split()


@pytest.mark.docker
def test_builds_run_without_network_unless_the_image_asks_and_the_operator_agrees(
    client: docker.DockerClient, base: BuiltImage, tmp_path: Path, cleanup: None
) -> None:
    images_dir = _make_images_dir(tmp_path)
    _network_probe_image(images_dir, None)
    (_, offline) = build_images(images_dir, [NET_NAME], client=client, progress=lambda _: None)
    assert _interfaces(client, offline.tag) == ["lo"]

    _network_probe_image(images_dir, 'network = true\nreason = "fetches its data set"\n')
    with pytest.raises(ImageBuildError) as refused:
        build_images(images_dir, [NET_NAME], client=client, progress=lambda _: None)
    assert "fetches its data set" in str(refused.value) and f"--allow-network {NET_NAME}" in str(refused.value)

    (_, online) = build_images(images_dir, [NET_NAME], client=client, progress=lambda _: None,
                               allow_network=[NET_NAME])
    assert "lo" in _interfaces(client, online.tag) and len(_interfaces(client, online.tag)) > 1


def test_a_malformed_build_toml_names_the_file(tmp_path: Path) -> None:
    context = _network_probe_image(_make_images_dir(tmp_path), "network = 'yes please'\nspeed = 3\n")
    with pytest.raises(ImageBuildError, match=r"build\.toml"):
        build_network(context, NET_NAME, allowed=True)


@pytest.mark.docker
def test_failing_build_reports_output_tail(
    client: docker.DockerClient, base: BuiltImage, tmp_path: Path, cleanup: None
) -> None:
    images_dir = _make_images_dir(tmp_path)
    context = images_dir / FAIL_NAME
    context.mkdir()
    (context / "Dockerfile").write_text(
        "ARG BASE_IMAGE=orsbox/base:latest\nFROM ${BASE_IMAGE}\n"
        "RUN echo boom-output-marker && false\n"
    )
    with pytest.raises(ImageBuildError) as caught:
        build_images(images_dir, [FAIL_NAME], client=client, progress=lambda _: None)
    message = str(caught.value)
    assert f"docker build of {IMAGE_PREFIX}{FAIL_NAME} failed" in message
    assert "boom-output-marker" in message
    assert not client.images.list(name=f"{IMAGE_PREFIX}{FAIL_NAME}")


def test_debootstrap_failure_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "debootstrap"
    fake.write_text("#!/bin/sh\necho 'I: Retrieving InRelease'\necho 'E: no mirror here'\nexit 1\n")
    fake.chmod(0o755)
    workdirs = tmp_path / "work"
    workdirs.mkdir()
    monkeypatch.setattr(host, "WORK_ROOT", str(workdirs))
    monkeypatch.setattr(base_recipe, "_require_debootstrap", lambda: str(fake))
    monkeypatch.setenv(mirror.MIRROR_ENV, "http://deb.example.com/debian")
    with pytest.raises(ImageBuildError) as caught:
        base_recipe._build_base_debootstrap(None, ["python3"], "0" * 64, lambda _: None)
    assert "debootstrap failed (exit 1)" in str(caught.value)
    assert "bookworm" in str(caught.value) and "http://deb.example.com/debian" in str(caught.value)
    assert "E: no mirror here" in str(caught.value)
    assert list(workdirs.iterdir()) == []


def test_workdir_removal_unmounts_first(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    workdir = tmp_path / "orsbox-base-x"
    target = workdir / "rootfs" / "dev"
    target.mkdir(parents=True)
    keep = tmp_path / "host-dev"
    keep.mkdir()
    (keep / "precious").write_text("must survive")
    mounted = subprocess.run(["mount", "--bind", str(keep), str(target)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot bind mount here")
    base_recipe._remove_workdir(workdir)
    assert not workdir.exists()
    assert (keep / "precious").read_text() == "must survive"


@pytest.mark.docker
def test_base_from_image_builds_same_layout(
    client: docker.DockerClient, base: BuiltImage
) -> None:
    """The ORSBOX_BASE_FROM recipe, tried FROM our own base (nothing can be pulled here).

    Our base already has a uid 1000 user, so this also covers replacing one.
    """
    inputs_hash = "f" * 64
    tag = f"{IMAGE_PREFIX}{BASE}:{inputs_hash[:12]}"
    lines: list[str] = []
    try:
        base_recipe._build_base_from(client, base.tag, inputs_hash, lines.append)
        image = client.images.get(tag)
        assert image.labels[LABEL_INPUTS] == inputs_hash
        assert image.attrs["Config"]["WorkingDir"] == "/workspace"
        script = "id; stat -c '%n %u:%g %a' /workspace /run/orsbox /opt/orsbox /home/user"
        output = client.containers.run(tag, ["sh", "-c", script], user="1000",
                                       remove=True).decode()
        assert "uid=1000(user) gid=1000(user) groups=1000(user)" in output
        assert "/workspace 1000:1000 755" in output
        assert "/run/orsbox 0:0 700" in output
        assert "/home/user 1000:1000" in output
        assert any(line.startswith(f"[{BASE}] ") for line in lines)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag, force=True)
    assert client.images.get(f"{IMAGE_PREFIX}{BASE}:latest").id == base.image_id


# ------------------------------------------------------------ vendored wheels

VENDORED = "orsbox_vendortest"
DEBIAN_PYTHON = vendoring.PythonTarget(version="3.11", machine="x86_64", glibc="2.36")
VENDOR_DOCKERFILE = f"""\
ARG BASE_IMAGE=orsbox/base:latest
FROM ${{BASE_IMAGE}}
COPY site-packages /opt/env/site-packages
LABEL orsbox.environment={TEST_NAME}
"""


def _make_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of `orsbox_vendortest` whose module says its version (no network needed)."""
    files = {
        f"{VENDORED}/__init__.py": f"VERSION = {version!r}\n",
        f"{VENDORED}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {VENDORED}\nVersion: {version}\n",
        f"{VENDORED}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: orsbox-tests\n"
                                                  "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_record_hash(text.encode())},{len(text.encode())}" for path, text in files.items()]
    files[f"{VENDORED}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{VENDORED}-{version}.dist-info/RECORD,,"])
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{VENDORED}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _requirements(wheels: Path, requirement: str) -> str:
    """A requirements.txt that resolves from *wheels* only."""
    return f"--no-index\n--find-links {wheels}\n{requirement}  # the test wheel\n"


def test_platform_tags_cover_every_manylinux_the_glibc_runs() -> None:
    platforms = DEBIAN_PYTHON.platforms()
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in platforms and "manylinux_2_5_x86_64" in platforms
    assert platforms[-1] == "manylinux2014_x86_64"
    options = DEBIAN_PYTHON.pip_options()
    assert options[:8] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                           "--abi", "cp311", "--platform"]


def test_python_probe_is_parsed_and_non_glibc_pythons_refused() -> None:
    assert vendoring.parse_python_probe('[3, 11, "cpython", "x86_64", "glibc", "2.36"]\n', "b") == DEBIAN_PYTHON
    with pytest.raises(ImageBuildError, match="need CPython on glibc"):
        vendoring.parse_python_probe('[3, 12, "cpython", "x86_64", "", ""]', "alpine")
    with pytest.raises(ImageBuildError, match="need CPython on glibc"):
        vendoring.parse_python_probe('[3, 10, "pypy", "x86_64", "glibc", "2.36"]', "pypy")
    with pytest.raises(ImageBuildError, match="unexpected answer from python3 in b"):
        vendoring.parse_python_probe("python3: not found", "b")


def test_vendoring_installs_the_requirements_for_the_image_python(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _make_wheel(wheels, "1.0")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / hashing.REQUIREMENTS_FILE).write_text(_requirements(wheels, f"{VENDORED}==1.0"))
    lines: list[str] = []
    vendoring.vendor_requirements(context, DEBIAN_PYTHON, TEST_NAME, lines.append)
    installed = context / vendoring.VENDOR_DIR / VENDORED / "__init__.py"
    assert installed.read_text() == "VERSION = '1.0'\n"
    assert not list((context / vendoring.VENDOR_DIR).rglob("*.pyc"))  # the image compiles its own byte code
    assert lines[0] == f"vendoring wheels for python 3.11 (x86_64, glibc 2.36): {VENDORED}==1.0"
    assert any(line.startswith(f"[{TEST_NAME}] ") and "Successfully installed" in line for line in lines)


def test_a_failing_pip_is_a_clear_build_error(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / hashing.REQUIREMENTS_FILE).write_text(_requirements(tmp_path / "no-wheels", "no-such-package==9"))
    with pytest.raises(ImageBuildError) as caught:
        vendoring.vendor_requirements(context, DEBIAN_PYTHON, TEST_NAME, lambda _: None)
    message = str(caught.value)
    assert message.startswith(f"vendoring the wheels of {TEST_NAME}'s requirements.txt for python 3.11")
    assert "pip exited 1" in message and "no-such-package" in message


def test_requirements_are_hashed_with_the_vendoring_recipe(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM x\n")
    plain = hashing.context_inputs_hash(context, "sha256:1")
    (context / hashing.REQUIREMENTS_FILE).write_text("pkg==1\n")
    first = hashing.context_inputs_hash(context, "sha256:1")
    assert first != plain
    (context / hashing.REQUIREMENTS_FILE).write_text("pkg==2\n")
    assert hashing.context_inputs_hash(context, "sha256:1") != first


@pytest.mark.docker
def test_requirements_are_vendored_and_rebuilt_only_when_they_change(
    client: docker.DockerClient, base: BuiltImage, tmp_path: Path, cleanup: None
) -> None:
    images_dir = _make_images_dir(tmp_path)
    context = images_dir / TEST_NAME
    (context / "Dockerfile").write_text(VENDOR_DOCKERFILE)
    wheels = tmp_path / "wheels"
    for version in ("1.0", "2.0"):
        _make_wheel(wheels, version)
    requirements = context / hashing.REQUIREMENTS_FILE

    def build(requirement: str) -> tuple[BuiltImage, list[str]]:
        requirements.write_text(_requirements(wheels, requirement))
        lines: list[str] = []
        (_, built) = build_images(images_dir, [TEST_NAME], client=client, progress=lines.append)
        return built, lines

    def vendored_version(image: BuiltImage) -> str:
        script = f"import {VENDORED}; print({VENDORED}.VERSION)"
        output = client.containers.run(image.tag, ["python3", "-c", script], remove=True, network_disabled=True,
                                       environment={"PYTHONPATH": "/opt/env/site-packages"})
        return str(output.decode().strip())

    first, lines = build(f"{VENDORED}==1.0")
    assert first.built and vendored_version(first) == "1.0"
    assert any(line.startswith("vendoring wheels for python 3.") for line in lines)
    assert not (context / vendoring.VENDOR_DIR).exists()  # vendored into a copy of the context

    again, lines = build(f"{VENDORED}==1.0")
    assert again == BuiltImage(TEST_NAME, first.tag, first.image_id, built=False)
    assert not any(line.startswith("vendoring") for line in lines)

    second, _ = build(f"{VENDORED}==2.0")
    assert second.built and second.tag != first.tag and vendored_version(second) == "2.0"

    (context / vendoring.VENDOR_DIR).mkdir()
    with pytest.raises(ImageBuildError, match="site-packages exists"):
        build(f"{VENDORED}==1.0")


# ------------------------------------------------------------ the command


def orsbox_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`orsbox …` as ops run it, with *env* added to the environment."""
    return subprocess.run([sys.executable, "-m", "orsbox.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_build_command_failure_is_one_message_on_stderr(tmp_path: Path) -> None:
    done = orsbox_command("build", "--images-dir", str(_make_images_dir(tmp_path)),
                          DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    assert done.returncode == 1
    assert done.stderr.startswith("orsbox build: the docker engine does not answer")
    assert done.stdout == ""


@pytest.mark.docker
def test_build_command_prints_its_results_and_no_log_lines(base: BuiltImage) -> None:
    done = orsbox_command("build", BASE, "--images-dir", str(REPO_IMAGES))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["1 image(s): 0 built, 1 current", f"  {BASE:12} {base.tag:28} current"]
    assert done.stderr == ""
