"""The catalog: discovery data is read once per image (and agent), cached, and refreshed when the image changes."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import structlog

from orsbox.api import create_app
from orsbox.config import Config
from orsbox.images import build_images

from .support.ors import Ors
from .support.run import NODE_ID, ROOT
from .support.server import OrsboxProcess

pytestmark = pytest.mark.docker


@pytest.fixture
def cachetest(engine: docker.DockerClient, images: None) -> Iterator[Path]:
    """An images folder with one environment, `cachetest`: a copy of bash; its images are removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ob-images-"))
    shutil.copytree(ROOT / "images" / "base", folder / "base")
    shutil.copytree(ROOT / "images" / "bash", folder / "cachetest")
    dockerfile = folder / "cachetest" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace('orsbox.environment="bash"', 'orsbox.environment="cachetest"'))
    yield folder
    for image in engine.images.list(name="orsbox/cachetest"):
        engine.images.remove(image.id, force=True)
    shutil.rmtree(folder, ignore_errors=True)


async def start_and_stop(aiohttp_client: Any, config: Config) -> list[str]:
    """Start orsbox, list its environments, stop; the environments it had to describe."""
    with structlog.testing.capture_logs() as events:
        client = await aiohttp_client(create_app(config))
        names = await (await client.get("/list_environments")).json()
        await client.close()
    assert "cachetest" in names
    return [e["env"] for e in events if e["event"] == "environment_described"]


async def test_discovery_is_cached_per_image(aiohttp_client: Any, config: Config, cachetest: Path,
                                              engine: docker.DockerClient, tmp_path: Path) -> None:
    build_images(cachetest, ["cachetest"], client=engine, progress=lambda line: None)
    fresh = config.model_copy(update={"state_dir": Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))})
    try:
        assert "cachetest" in await start_and_stop(aiohttp_client, fresh)
        assert "cachetest" not in await start_and_stop(aiohttp_client, fresh)  # the second start reads the cache
        env_file = cachetest / "cachetest" / "bash_env.py"
        env_file.write_text(env_file.read_text().replace("hello world", "hello there"))
        build_images(cachetest, ["cachetest"], client=engine, progress=lambda line: None)
        assert "cachetest" in await start_and_stop(aiohttp_client, fresh)  # a rebuilt image is described again
        client = await aiohttp_client(create_app(fresh))
        tasks = await (await client.post("/cachetest/tasks", json={"split": "train"})).json()
        assert "hello there" in tasks["tasks"][0]["instruction"]
        await Ors(client).http.close()
    finally:
        shutil.rmtree(fresh.state_dir, ignore_errors=True)


async def test_a_broken_environment_is_skipped_with_its_reason(aiohttp_client: Any, config: Config, cachetest: Path,
                                                               engine: docker.DockerClient) -> None:
    env_file = cachetest / "cachetest" / "bash_env.py"
    env_file.write_text(env_file.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    build_images(cachetest, ["cachetest"], client=engine, progress=lambda line: None)
    with structlog.testing.capture_logs() as events:
        client = await aiohttp_client(create_app(config))
        names = await (await client.get("/list_environments")).json()
    assert "bash" in names and "cachetest" not in names
    [unavailable] = [e for e in events if e["event"] == "environment_unavailable"]
    assert unavailable["env"] == "cachetest" and "broken on purpose" in unavailable["reason"]


async def test_an_image_from_elsewhere_is_not_served_until_ops_allow_it(aiohttp_client: Any, config: Config,
                                                                        cachetest: Path,
                                                                        engine: docker.DockerClient) -> None:
    """A third party's image labelled as an environment, tagged outside orsbox/*, or naming a policy."""
    built = build_images(cachetest, ["cachetest"], client=engine, progress=lambda line: None)
    image = next(image for image in built if image.name == "cachetest")
    engine.images.get(image.tag).tag("thirdparty/cachetest", "latest")
    try:
        for local in engine.images.list(name="orsbox/cachetest"):
            for tag in local.tags:
                if tag.startswith("orsbox/cachetest"):
                    engine.images.remove(tag)  # only the third party's tag is left
        client = await aiohttp_client(create_app(config))
        assert "cachetest" not in await (await client.get("/list_environments")).json()
        await client.close()
        allowed = config.model_copy(update={"image_patterns": ["orsbox/*", "thirdparty/*"]})
        client = await aiohttp_client(create_app(allowed))
        assert "cachetest" in await (await client.get("/list_environments")).json()
        await client.close()
    finally:
        engine.images.remove("thirdparty/cachetest:latest", force=True)


async def test_sighup_serves_an_image_built_meanwhile_and_drops_a_removed_one(
        engine: docker.DockerClient, images: None, state_dir: Path, tmp_path: Path) -> None:
    # Checks of the images an hour apart: only SIGHUP reads them again within the test.
    server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=tmp_path / "server.log",
                           env={"ORSBOX_CATALOG_INTERVAL": "3600"}).start()
    tag = "orsbox/hupcopy:test"
    try:
        async with server.client() as http:
            assert "hupcopy" not in await (await http.get("/list_environments")).json()
            dockerfile = b'FROM orsbox/bash:latest\nLABEL orsbox.environment="hupcopy"\n'
            engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, network_mode="none")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(60):
                while "hupcopy" not in await (await http.get("/list_environments")).json():
                    await asyncio.sleep(0.1)
            sid = "hup-" + tmp_path.name[-8:]
            created = await http.post("/create", json={"env_name": "hupcopy", "split": "train", "index": 0},
                                      headers={"X-Session-ID": sid})
            assert created.status == 200
            answer = await http.post("/hupcopy/call", json={"name": "bash", "input": {"command": "echo hup"}},
                                     headers={"X-Session-ID": sid})
            assert answer.status == 200 and "hup" in await answer.text()
            assert (await http.post("/delete", headers={"X-Session-ID": sid})).status == 200
            engine.images.remove(tag, force=True)
            server.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(60):
                while "hupcopy" in await (await http.get("/list_environments")).json():
                    await asyncio.sleep(0.1)
        assert '"catalog_refreshed"' in server.log() and '"SIGHUP"' in server.log()
    finally:
        server.stop()
        for image in engine.images.list(name="orsbox/hupcopy"):
            engine.images.remove(image.id, force=True)
