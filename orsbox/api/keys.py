"""Typed application keys: the app's shared state, one place."""

from __future__ import annotations

from aiohttp import web

from ..backends.backend import Backend
from ..catalog import Catalog
from ..config import Config
from ..sessions import SessionManager

CONFIG = web.AppKey("config", Config)
BACKEND = web.AppKey("backend", Backend)
CATALOG = web.AppKey("catalog", Catalog)
SESSIONS = web.AppKey("sessions", SessionManager)
