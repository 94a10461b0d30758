"""The aiohttp application: routes, middleware, and resources in cleanup contexts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ..auth import KeyRing, Quota
from ..auth.keyring import server_secret
from ..backends.backend import Backend
from ..backends.docker.engine import DockerBackend
from ..backends.docker.settings import runtime_check
from ..catalog import Catalog
from ..config import Config
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import Metrics
from ..policy import PolicySet
from ..sandbox_api.forwarding import SessionApi
from ..sandbox_api.routes import MAX_RUN_BODY, sandbox_api
from ..sessions import SessionManager
from .admin import admin_api
from .keys import BACKEND, CATALOG, CONFIG, KEYRING, METRICS, POLICIES, ROOT_SEGMENTS, SESSIONS
from .middleware import authenticate, errors_to_http, redirect_bare_paths, request_context, root_segments
from .routes import api
from .workspace import workspace_api

log = structlog.get_logger()

ENGINE_WATCH_INTERVAL = 2.0  # s between engine pings (/health reports the result)


def keyring(config: Config) -> KeyRing:
    """The keys this server accepts; one made (and where it is logged) if none is configured."""
    ring, generated = KeyRing.open(
        state_dir=config.state_dir, env_keys=[key.get_secret_value() for key in config.api_keys],
        key_file=config.key_file_path, required=config.auth,
        default_quota=Quota(config.key_max_sessions, config.key_starts_per_minute),
        admin_keys=[key.get_secret_value() for key in config.admin_keys])
    if generated is not None:
        log.warning("api_key_generated", file=str(generated),
                    hint=f"no API key was configured: clients send the one in {generated} as X-API-Key")
    if not config.auth:
        log.warning("authentication_off", host=config.host, hint="any local process may use this server")
    return ring


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (needs an operator key while authentication is on, as the admin API does)."""
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def create_app(config: Config, *, backend: Backend | None = None) -> web.Application:
    """The ORS server. Without `backend`, it connects to the local Docker engine on start-up."""
    middlewares = [request_context, errors_to_http, authenticate(api.public_paths), redirect_bare_paths]
    # Each route reads its body within its own limit (exchange.read_body); this is only the ceiling.
    app = web.Application(middlewares=middlewares, client_max_size=max(config.max_body_bytes, MAX_RUN_BODY))
    app[CONFIG] = config
    app[KEYRING] = keyring(config)
    app[METRICS] = Metrics()
    app.add_routes(api.routes)
    app.add_routes(sandbox_api.routes)
    app.add_routes(admin_api.routes)
    app.add_routes(workspace_api.routes)
    app.router.add_get("/metrics", metrics)
    app[ROOT_SEGMENTS] = root_segments(app.router)  # every route is added by now

    async def sandbox(app: web.Application) -> AsyncIterator[None]:
        app[BACKEND] = backend or await DockerBackend.connect(
            state_dir=config.state_dir, node_id=config.node_id,
            timeout=config.docker_timeout, pool_size=config.docker_pool, metrics=app[METRICS])
        yield
        if backend is None:
            await app[BACKEND].close()

    async def catalog(app: web.Application) -> AsyncIterator[None]:
        app[POLICIES] = policies = PolicySet.load(config.policies_dir)
        policies.require_runtimes(runtime_check(app[BACKEND].runtimes))  # refuse to start half-configured
        policies.require_network(app[BACKEND].network_problem())
        app[CATALOG] = await Catalog.load(app[BACKEND], policies, config.state_dir / "catalog",
                                          config.default_environment, only=config.environments,
                                          image_patterns=config.image_patterns, label_policies=config.label_policies,
                                          datasets=config.datasets, base_map=config.base_map)
        if not app[CATALOG].names():
            log.warning("no_environments", hint="build the example images: orsbox build")
        yield

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = manager = SessionManager(app[BACKEND], app[CATALOG], config, app[POLICIES], app[METRICS])
        session_api = SessionApi(app, server_secret(config.state_dir))  # environments' sandboxes (max_sandboxes)
        await session_api.start()
        manager.lifecycle.session_api = session_api.link
        await manager.start(ENGINE_WATCH_INTERVAL)  # labels are the state: serve again or remove what was left
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not in the main thread
            loop.add_signal_handler(signal.SIGHUP, manager.refresh_catalog_soon, "SIGHUP")
        yield
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await manager.close(timeout=config.shutdown_timeout)
        await session_api.close()

    async def drain(app: web.Application) -> None:
        """Shutdown has begun: refuse new sessions while in-flight calls finish."""
        if SESSIONS in app:
            app[SESSIONS].drain()

    app.cleanup_ctx.extend([sandbox, catalog, sessions])
    app.on_shutdown.append(drain)
    return app
