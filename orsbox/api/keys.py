"""Typed application keys: the app's shared state, one place."""

from __future__ import annotations

from aiohttp import web

from ..auth import KeyRing, Principal
from ..backends.backend import Backend
from ..catalog import Catalog
from ..config import Config
from ..metrics import Metrics
from ..policy import PolicySet
from ..sessions import SessionManager

CONFIG = web.AppKey("config", Config)
BACKEND = web.AppKey("backend", Backend)
CATALOG = web.AppKey("catalog", Catalog)
POLICIES = web.AppKey("policies", PolicySet)
SESSIONS = web.AppKey("sessions", SessionManager)
KEYRING = web.AppKey("keyring", KeyRing)
METRICS = web.AppKey("metrics", Metrics)
ROOT_SEGMENTS = web.AppKey("root_segments", frozenset)  # first path segments of the app's own routes

PRINCIPAL = web.RequestKey("principal", Principal)  # set by the `authenticate` middleware


def principal(request: web.Request) -> Principal:
    """Who sent `request` (every route but /health has one)."""
    return request[PRINCIPAL]
