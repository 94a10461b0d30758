"""`/openapi.json` describes the API truthfully: schemathesis generates requests from it against a live
orsbox (a real server process on the real engine) and checks every answer against it — no 5xx,
documented statuses, content types and bodies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from orsbox.api.routes import api

from .support.run import AUTH, NODE_ID
from .support.server import OrsboxProcess

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def live_server(state_dir: Path, images: None, engine: docker.DockerClient,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("openapi") / "server.log"
    server = OrsboxProcess(state_dir=state_dir, node_id=NODE_ID, log_path=log).start()
    try:
        yield server.url
    finally:
        server.stop()


ROUTES = [(op.method, op.path) for op in api.operations if op.path != "/openapi.json"]


def operations(url: str) -> dict[tuple[str, str], Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=AUTH)
    return {(op.method.upper(), op.path): op for op in (result.ok() for result in schema.get_all_operations())}


def test_the_description_covers_every_route(live_server: str) -> None:
    assert set(operations(live_server)) == set(ROUTES)
    assert len(ROUTES) == 20  # the ORS routes, /fork among them


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
@pytest.mark.parametrize("method,path", ROUTES)
def test_every_answer_matches_the_description(live_server: str, method: str, path: str, mode: GenerationMode) -> None:
    """Valid and invalid requests alike. (Schemathesis's pytest plugin does not run on pytest 9:
    hypothesis drives its strategies here.)"""
    operation = operations(live_server)[(method, path)]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(mode))
    def check(case: Any) -> None:
        response = case.call(base_url=live_server, headers=AUTH, timeout=30)
        try:
            # Every check but "schema-valid data is accepted": a well-formed request can still name a split,
            # index or session that does not exist, which ORS answers with a documented 400/404.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        finally:
            if case.path == "/create" and response.status_code == 200:  # leave no session behind
                httpx.post(f"{live_server}/delete", headers={"X-Session-ID": response.json()["sid"], **AUTH},
                           timeout=30)

    try:
        check()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip(f"{method} {path} takes nothing that could be made invalid")
