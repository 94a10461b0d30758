"""The `orsbox` command: `serve` the ORS API, `build` environment images.

Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog
from aiohttp import web

from . import __version__
from .config import Config
from .errors import OrsboxError
from .log import configure_logging

log = structlog.get_logger()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orsbox", description="Sandboxed ORS environment runner.")
    parser.add_argument("--version", action="version", version=f"orsbox {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the ORS API (default 127.0.0.1:8080)")
    serve.add_argument("--host", help="address to listen on (env ORSBOX_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (env ORSBOX_PORT)")
    serve.add_argument("--policies", type=Path, dest="policies_dir", help="policy folder (env ORSBOX_POLICIES)")
    serve.add_argument("--state-dir", type=Path, help="session folders and caches (env ORSBOX_STATE_DIR)")
    serve.add_argument("--default-env", dest="default_environment", help="environment served on bare paths")
    serve.add_argument("--idle-timeout", type=float, help="seconds; overrides every policy's idle_timeout")

    build = commands.add_parser("build", help="build the images in images/ that are not current")
    build.add_argument("names", nargs="*", help="images to build (default: all)")
    build.add_argument("--images-dir", type=Path, default=Path("images"))
    build.add_argument("--force", action="store_true", help="rebuild even if current")

    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "serve":
            return serve_command(args)
        return build_command(args)
    except OrsboxError as exc:
        print(f"orsbox: {exc.detail}", file=sys.stderr)
        return 1


def serve_command(args: argparse.Namespace) -> int:
    from .server import create_app

    config = Config.from_env(
        host=args.host, port=args.port, policies_dir=args.policies_dir, state_dir=args.state_dir,
        default_environment=args.default_environment, idle_timeout=args.idle_timeout,
    )
    log.info("starting", host=config.host, port=config.port, version=__version__)
    web.run_app(create_app(config), host=config.host, port=config.port, print=None,
                shutdown_timeout=config.shutdown_timeout, access_log=None, loop=asyncio.new_event_loop())
    return 0


def build_command(args: argparse.Namespace) -> int:
    from .images import ImageBuildError, build_images

    try:
        build_images(args.images_dir, args.names or None, force=args.force)
    except ImageBuildError as exc:
        print(f"orsbox build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
