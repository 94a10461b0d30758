"""orsbox: an ORS server that runs every session in its own hardened container."""

__version__ = "0.1.0"
