"""Request middleware: log context, the one place errors become HTTP, authentication, bare-path redirects.

Every error answer is JSON `{"detail": ...}`, never a traceback.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import Forbidden, NotReady, OrsboxError
from .keys import CATALOG, KEYRING, PRINCIPAL, ROOT_SEGMENTS
from .responses import json_response

log = structlog.get_logger()

def root_segments(router: web.UrlDispatcher) -> frozenset[str]:
    """First path segments of the app's own routes (`create`, `fork`, `run`, `metrics`, ...): never bare paths
    of the default environment (read once, when the app is made: `ROOT_SEGMENTS`)."""
    firsts = {resource.canonical.lstrip("/").split("/", 1)[0] for resource in router.resources()}
    return frozenset(first for first in firsts if first and not first.startswith("{"))
#: Paths only operator keys may use (client keys get 403).
ADMIN_PATHS = ("/admin/", "/metrics")


def json_error(status: int, detail: object, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"detail": detail}, status=status, headers=headers)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    sid = request.headers.get("X-Session-ID", "").strip()
    if sid:
        structlog.contextvars.bind_contextvars(session_id=sid)
    return await handler(request)


@web.middleware
async def errors_to_http(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place statuses are chosen for errors."""
    try:
        return await handler(request)
    except OrsboxError as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        if isinstance(exc, NotReady):
            headers["X-Backend-State"] = "starting"  # the official client rides this out
        return json_error(exc.status, exc.detail, headers or None)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = "Not Found" if exc.status == 404 else exc.reason
        return json_error(exc.status, reason, {k: v for k, v in exc.headers.items() if k == "Allow"})
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return json_error(500, "Internal Server Error")


def authenticate(public_paths: Collection[str]) -> Middleware:
    """401 without a valid key, before anything else is looked at (even whether the path exists), except on
    `public_paths`; 403 for a client key on the admin API and /metrics. The key is `X-API-Key`, or
    `Authorization: Bearer` (what a Prometheus scrape config sends)."""
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in public_paths:
            principal = request.app[KEYRING].authenticate(presented_key(request))
            request[PRINCIPAL] = principal
            structlog.contextvars.bind_contextvars(key=principal.key_id)
            if not principal.admin and (request.path.startswith(ADMIN_PATHS) or request.path == "/admin"):
                raise Forbidden("this route needs an operator key (ORSBOX_ADMIN_KEYS or `orsbox keys add --admin`); "
                                "client keys may not use it")
        return await handler(request)
    return authenticate


def presented_key(request: web.Request) -> str | None:
    """The key a request sends: X-API-Key, else a bearer token."""
    key = request.headers.get("X-API-Key")
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else key


@web.middleware
async def redirect_bare_paths(request: web.Request, handler: Handler) -> web.StreamResponse:
    """308 `/tools` to `/{default env}/tools`, as the reference does; 307 away trailing slashes."""
    first = request.path.lstrip("/").split("/", 1)[0]
    catalog = request.app[CATALOG]
    if (first and first not in request.app[ROOT_SEGMENTS] and not catalog.is_environment(first)
            and catalog.default):
        return redirect(308, f"/{catalog.default}{request.raw_path}")  # raw: still percent-encoded, with query
    if request.path != "/" and request.path.endswith("/") and request.match_info.http_exception is not None:
        return redirect(307, str(request.url.with_path(request.path.rstrip("/"))))
    return await handler(request)


def redirect(status: int, location: str) -> web.Response:
    """An empty redirect, as the reference sends it (no Content-Type; 308 and 307 keep POST bodies)."""
    return web.Response(status=status, headers={"Location": location})

