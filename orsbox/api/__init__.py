"""The ORS HTTP front end."""

from .app import create_app

__all__ = ["create_app"]
