"""Images are untrusted: only ops' image patterns become environments, and labels pick only allowed policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orsbox.api.keys import CATALOG

from ..support.fake_backend import FakeBackend


async def test_only_images_matching_the_patterns_are_served(server: Any) -> None:
    ors = await server(image_patterns=["fake/ech*"])
    assert await (await ors.http.get("/list_environments")).json() == ["echo"]
    assert (await ors.http.get("/slow/tools")).status == 404


async def test_by_default_only_images_orsbox_build_made_are_served(server: Any) -> None:
    ors = await server(image_patterns=["orsbox/*"], default_environment=None)  # the fake images are fake/…
    assert await (await ors.http.get("/list_environments")).json() == []


async def test_a_label_naming_a_policy_ops_did_not_allow_keeps_the_image_out(server: Any, backend: FakeBackend,
                                                                            policies: Path) -> None:
    (policies / "roomy.toml").write_text('memory = "8g"\n')
    backend.policy_labels["slow"] = "roomy"
    ors = await server()
    assert await (await ors.http.get("/list_environments")).json() == ["echo", "broken"]


async def test_a_label_naming_an_allowed_policy_gets_it(server: Any, backend: FakeBackend, policies: Path) -> None:
    (policies / "roomy.toml").write_text('memory = "3g"\n')
    backend.policy_labels["slow"] = "roomy"
    ors = await server(label_policies=["roomy"])
    assert "slow" in await (await ors.http.get("/list_environments")).json()
    assert ors.http.app[CATALOG].get("slow").policy.memory == 3 * 1024**3
