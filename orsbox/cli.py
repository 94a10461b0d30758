"""The `orsbox` command: `serve` the ORS API, `build` environment images, list `envs`, `policy explain|check`,
`keys add|list|revoke`, `config show`, `doctor`, and over a running server's admin API (`admin_cli.py`)
`ps|inspect|rm|logs|events|top|cp`.

Logging is configured here and nowhere else: `serve` logs at info; `build`, `envs` and `policy` print
their results on stdout and log only warnings and errors, unless `--log-level` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
from pathlib import Path

import structlog
from aiohttp import web
from pydantic import ValidationError

from . import __version__, admin_cli
from .config import Config
from .errors import ConfigError, OrsboxError
from .instance import InstanceLock
from .log import configure_logging

log = structlog.get_logger()

LOG_LEVELS = ["debug", "info", "warning", "error"]
ADMIN_COMMANDS = frozenset({"ps", "inspect", "rm", "logs", "events", "top", "cp"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orsbox", description="Sandboxed ORS environment runner.")
    parser.add_argument("--version", action="version", version=f"orsbox {__version__}")
    log_help = "log events from this level up, on stderr (default: info for serve, warning for the others)"
    parser.add_argument("--log-level", choices=LOG_LEVELS, help=log_help)
    logging_options = argparse.ArgumentParser(add_help=False)  # so `orsbox build --log-level info` works too
    logging_options.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help=log_help)
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument("--config", type=Path, dest="config_file",
                               help="TOML file of server settings (env ORSBOX_CONFIG); flags and ORSBOX_* win over it")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the ORS API (default 127.0.0.1:8080)",
                                parents=[logging_options, config_option])
    serve.add_argument("--host", help="address to listen on (env ORSBOX_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (env ORSBOX_PORT)")
    serve.add_argument("--policies", type=Path, dest="policies_dir", help="policy folder (env ORSBOX_POLICIES)")
    serve.add_argument("--state-dir", type=Path, help="session folders and caches (env ORSBOX_STATE_DIR)")
    serve.add_argument("--default-env", dest="default_environment", help="environment served on bare paths")
    serve.add_argument("--env", dest="environments", action="append",
                       help="serve only this environment (repeatable; env ORSBOX_ENVIRONMENTS=a,b); default: all")
    serve.add_argument("--idle-timeout", type=float, help="seconds; overrides every policy's idle_timeout")
    serve.add_argument("--max-sessions", type=int, help="live sessions at most (default 64); then /create is 429")
    serve.add_argument("--keep-sessions", action="store_true", default=None,
                       help="at shutdown, leave ready sessions running for the next start to adopt (rolling restart)")
    serve.add_argument("--image-pattern", dest="image_patterns", action="append",
                       help="serve only images whose repository[:tag] matches this glob (repeatable; "
                            "env ORSBOX_IMAGE_PATTERNS=a,b; default orsbox/*)")
    serve.add_argument("--label-policy", dest="label_policies", action="append",
                       help="a policy an image's orsbox.policy label may name (repeatable; env ORSBOX_LABEL_POLICIES)")
    serve.add_argument("--keys-file", type=Path,
                       help="keys file (env ORSBOX_KEYS_FILE; default <state dir>/api_keys.json)")
    serve.add_argument("--no-auth", dest="auth", action="store_false", default=None,
                       help="serve without API keys (only on a loopback address)")
    serve.add_argument("--no-adopt", dest="adopt", action="store_false", default=None,
                       help="at start-up, remove left-over session containers instead of serving them again")

    build = commands.add_parser("build", help="build the images in images/ and the Harbor datasets' task images "
                                              "that are not current", parents=[logging_options, config_option])
    build.add_argument("names", nargs="*", help="images or Harbor datasets (harbor_datasets) to build (default: all)")
    build.add_argument("--images-dir", type=Path, default=Path("images"))
    build.add_argument("--force", action="store_true", help="rebuild even if current")
    build.add_argument("--allow-network", action="append", default=[], metavar="NAME",
                       help="let NAME's build use the network, if its build.toml asks (repeatable); "
                            "builds run without network otherwise")

    envs = commands.add_parser("envs", help="the environments this machine can serve, with their tasks and tools",
                               parents=[logging_options, config_option])
    envs.add_argument("--policies", type=Path, dest="policies_dir", help="policy folder (env ORSBOX_POLICIES)")
    envs.add_argument("--state-dir", type=Path, help="where the catalog cache lives (env ORSBOX_STATE_DIR)")

    config = commands.add_parser("config", help="the server's resolved settings")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    config_commands.add_parser("show", help="every setting, its value and where it came from (secrets masked)",
                               parents=[config_option])

    keys = commands.add_parser("keys", help="manage the API keys in the keys file (a running server sees changes)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_commands.add_parser("add", help="make a key and print it (shown once; only its digest is kept)")
    add.add_argument("--name", default="", help="what the key is for (shown by list)")
    add.add_argument("--max-sessions", type=int, help="live sessions at most for this key")
    add.add_argument("--starts-per-minute", type=int, help="new sessions per minute at most for this key")
    add.add_argument("--secret", action="append", default=[], metavar="NAME[=VALUE]",
                     help="a secret this key's sessions get (repeatable; without =VALUE, from the variable NAME, "
                          "which keeps it out of shell history); a request's X-Secrets win over it")
    add.add_argument("--admin", action="store_true",
                     help="an operator key: the admin API, /metrics and orsbox ps|inspect|rm|logs|events|top")
    keys_commands.add_parser("list", help="the keys: id, name, created, quotas (never the keys)")
    revoke = keys_commands.add_parser("revoke", help="remove a key by its id; its requests get 401 within a second")
    revoke.add_argument("key_id", help="the key's id (the 8 hex digits after osk_)")
    for sub in keys_commands.choices.values():
        sub.add_argument("--state-dir", type=Path, help="(env ORSBOX_STATE_DIR)")
        sub.add_argument("--keys-file", type=Path, help="(env ORSBOX_KEYS_FILE; default <state dir>/api_keys.json)")

    policy = commands.add_parser("policy", help="show or check the sandbox policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    explain = policy_commands.add_parser("explain", help="an environment's resolved policy, each value's source, "
                                                        "and the container settings it becomes",
                                         parents=[logging_options])
    explain.add_argument("environment", help="environment name (e.g. bash)")
    explain.add_argument("--full", action="store_true", help="print the seccomp profile too")
    check = policy_commands.add_parser("check", help="validate every policy file; exit 1 on the first bad one",
                                       parents=[logging_options])
    for sub in (explain, check):
        sub.add_argument("--policies", type=Path, dest="policies_dir", help="policy folder (env ORSBOX_POLICIES)")

    admin_cli.add_commands(commands)
    doctor = commands.add_parser("doctor", help="check this host for orsbox serve: engine, runtimes, cgroups, "
                                 "iptables, disk, images, port (OK/FAIL, with what to do)",
                                 parents=[logging_options, config_option])
    doctor.add_argument("--state-dir", type=Path, help="(env ORSBOX_STATE_DIR)")
    doctor.add_argument("--policies", type=Path, dest="policies_dir", help="policy folder (env ORSBOX_POLICIES)")
    doctor.add_argument("--port", type=int, help="the port serve will use (env ORSBOX_PORT)")

    args = parser.parse_args(argv)
    configure_logging(args.log_level or ("info" if args.command == "serve" else "warning"))
    try:
        if args.command == "serve":
            return serve_command(args)
        if args.command == "policy":
            return policy_command(args)
        if args.command == "envs":
            return asyncio.run(envs_command(args))
        if args.command == "keys":
            return keys_command(args)
        if args.command == "config":
            return config_command(args)
        if args.command in ADMIN_COMMANDS:
            settings = Config.from_env()
            host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
            return admin_cli.run(args, f"http://{f'[{host}]' if ':' in host else host}:{settings.port}")
        if args.command == "doctor":
            from .doctor import doctor_command
            return doctor_command(Config.from_env(args.config_file, state_dir=args.state_dir,
                                                  policies_dir=args.policies_dir, port=args.port))
        return build_command(args)
    except OrsboxError as exc:
        print(f"orsbox: {exc.detail}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a bad flag or ORSBOX_* value
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "configuration"
            print(f"orsbox: {where}: {error['msg']}", file=sys.stderr)
        return 2


def serve_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; exit 1 at once if another server holds this state dir or node id."""
    from .api import create_app

    open_files = raise_open_file_limit()
    config = Config.from_env(
        args.config_file, host=args.host, port=args.port, policies_dir=args.policies_dir, state_dir=args.state_dir,
        default_environment=args.default_environment, idle_timeout=args.idle_timeout, environments=args.environments,
        max_sessions=args.max_sessions, keep_sessions=args.keep_sessions, adopt=args.adopt,
        keys_file=args.keys_file, auth=args.auth, image_patterns=args.image_patterns,
        label_policies=args.label_policies,
    )
    with InstanceLock.acquire(config.state_dir, config.node_id) as lock:  # before the engine: no second sweeper
        log.info("starting", host=config.host, port=config.port, version=__version__, node_id=config.node_id,
                 locks=[str(path) for path in lock.paths], open_files=open_files)
        web.run_app(create_app(config), host=config.host, port=config.port, print=None,
                    shutdown_timeout=config.shutdown_timeout, access_log=None, loop=asyncio.new_event_loop())
    return 0


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one, so that many sessions' agent sockets and proxied connections
    fit (the egress proxies' budget is a share of it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit the kernel caps lower
            log.warning("open_file_limit_kept", soft=soft, hard=hard, error=str(exc))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def envs_command(args: argparse.Namespace) -> int:
    """One line per environment: name, image, tasks per split, tools, policy."""
    from .backends.docker.engine import DockerBackend
    from .catalog import Catalog
    from .policy import PolicySet

    config = Config.from_env(args.config_file, policies_dir=args.policies_dir, state_dir=args.state_dir)
    backend = await DockerBackend.connect(state_dir=config.state_dir, node_id=config.node_id,
                                          timeout=config.docker_timeout, pool_size=config.docker_pool)
    try:
        catalog = await Catalog.load(backend, PolicySet.load(config.policies_dir), config.state_dir / "catalog",
                                     image_patterns=config.image_patterns, label_policies=config.label_policies,
                                     datasets=config.datasets, base_map=config.base_map)
    finally:
        await backend.close()
    if not catalog.names():
        print("no environments: build some with `orsbox build` (see images/)")
    for name in catalog.names():
        env = catalog.get(name)
        splits = ", ".join(f"{split}: {len(tasks)}" for split, tasks in env.tasks.items())
        tools = ", ".join(tool["name"] for tool in env.tools)
        note = f"  ({env.note})" if env.note else ""
        print(f"{name:12} {env.image.tags[0]:28} tasks ({splits})  tools ({tools})  policy {env.policy.digest()}{note}")
    return 0


def config_command(args: argparse.Namespace) -> int:
    """`orsbox config show`: flags ▸ ORSBOX_* ▸ the config file ▸ defaults, each value with its source."""
    config, sources = Config.resolve({}, config_file=args.config_file)
    for line in config.shown(sources):
        print(line)
    return 0


def keys_command(args: argparse.Namespace) -> int:
    """`orsbox keys add|list|revoke` on the keys file a server of this state dir reads."""
    from .auth import KeyFile, new_key
    from .auth.keyfile import describe

    config = Config.from_env(state_dir=args.state_dir, keys_file=args.keys_file)
    keys = KeyFile(config.key_file_path)
    if args.keys_command == "add":
        record, key = new_key(args.name, max_sessions=args.max_sessions, starts_per_minute=args.starts_per_minute,
                              admin=args.admin, secrets=key_secrets(args.secret))
        keys.add(record)
        print(key)
        print(f"added key {record.id} to {keys.path}; this is the only time it is shown", file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        if not keys.revoke(args.key_id):
            print(f"orsbox keys: no key {args.key_id!r} in {keys.path}", file=sys.stderr)
            return 1
        print(f"revoked key {args.key_id}")
        return 0
    records = keys.load()
    if not records:
        print(f"no keys in {keys.path}")
    for record in records:
        shown = describe(record)
        quotas = f"max_sessions={shown['max_sessions'] or '-'} starts_per_minute={shown['starts_per_minute'] or '-'}"
        names = f"  secrets: {', '.join(record.secrets)}" if record.secrets else ""
        print(f"{record.id}  {shown['created']}  {record.role:6}  {quotas}  {record.name}{names}")
    return 0


def secrets_explained(config: Config, environment: str) -> str:
    """Where a session of `environment` gets its secrets, by precedence: names only, never values."""
    from .auth import KeyFile
    from .sessions.secrets import OperatorSecrets

    folder = config.secrets_path
    try:
        names = OperatorSecrets(folder).names(environment) if folder.is_dir() else []
    except ConfigError as exc:
        names = str(exc.detail)
    try:
        keyed = [f"key {r.id} ({r.name or 'no name'}): {', '.join(r.secrets)}"
                 for r in KeyFile(config.key_file_path).load() if r.secrets]
    except ConfigError as exc:
        keyed = [str(exc.detail)]
    own = names if isinstance(names, str) else (", ".join(names) or "none")
    return "\n".join([
        "precedence: X-Secrets of the /create request > the API key's own > the operator's file > none",
        "1. the request: whatever X-Secrets names (as far as each one's allowed_domains allow)",
        f"2. API keys with secrets ({config.key_file_path}): " + ("; ".join(keyed) if keyed else "none"),
        f"3. the operator's file {folder / (environment + '.toml')}: {own}",
    ])


def key_secrets(given: list[str]) -> dict[str, str]:
    """`--secret NAME=VALUE` or `--secret NAME` (the value of the variable NAME) as {name: value}."""
    secrets = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise ConfigError(f"--secret {name}: give NAME=VALUE, or set the variable {name}")
            value = os.environ[name]
        secrets[name] = value
    return secrets


def build_command(args: argparse.Namespace) -> int:
    """Progress lines while it builds, then one line per image: its tag, and whether it was built."""
    from .harbor.cli import build_datasets
    from .images import ImageBuildError, build_images

    config = Config.from_env(args.config_file)
    datasets = [name.lower() for name in args.names if name.lower() in config.datasets]
    images = [name for name in args.names if name.lower() not in config.datasets]
    try:
        results = build_images(args.images_dir, images or None, force=args.force,
                               allow_network=args.allow_network) if images or not args.names else []
    except ImageBuildError as exc:
        print(f"orsbox build: {exc.detail}", file=sys.stderr)
        return 1
    if results:
        built = sum(image.built for image in results)
        print(f"\n{len(results)} image(s): {built} built, {len(results) - built} current")
        for image in results:
            print(f"  {image.name:12} {image.tag:28} {'built' if image.built else 'current'}")
    failures = build_datasets(config, datasets if args.names else None, force=args.force,
                              allow_network=args.allow_network)
    return 1 if failures else 0


def policy_command(args: argparse.Namespace) -> int:
    """`orsbox policy explain ENV` and `orsbox policy check`: the files first, then what the engine says."""
    from .backends.docker.engine import EngineFacts, engine_facts
    from .backends.docker.settings import explain_sections, runtime_check, runtime_problem
    from .backends.network.networks import Firewall
    from .policy import PolicySet, explanation

    settings = Config.from_env(policies_dir=args.policies_dir)
    folder = settings.policies_dir
    policies, problems = PolicySet.read(folder)
    environment: str | None = getattr(args, "environment", None)
    facts: EngineFacts | None = None
    try:
        facts = engine_facts(environment, timeout=5)
    except OrsboxError as exc:
        unreachable = f"the Docker engine does not answer ({exc.detail})"

    if args.policy_command == "check":
        if not problems and facts is not None:
            problems = policies.runtime_problems(runtime_check(facts.runtimes))
        if not problems:
            problems = policies.network_problems(Firewall.problem())
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(f"ok: the policies in {folder} are valid ({', '.join(policies.names()) or 'built-in defaults only'})")
        print("the Docker engine has every runtime they ask for" if facts else f"runtimes not checked: {unreachable}")
        return 0

    assert environment is not None
    label = facts.policy_label if facts else None
    if facts is None:
        print(f"{unreachable}: explaining from the policy files only; an image's orsbox.policy label, "
              "which can name another file, was not read.")
    else:
        print(f"environment {environment!r}: image {facts.image or '(none on this engine)'}, "
              f"label orsbox.policy: {label or 'not set'}")
        if label and policies.file(label) is None:
            print(f"  (there is no {label}.toml in {folder}, so default.toml applies)")
    resolved = policies.resolve(environment, label)
    sections = [*explain_sections(resolved, full=args.full), ("secrets", secrets_explained(settings, environment))]
    print(explanation(policies, environment, label, sections=sections))
    blocker = runtime_problem(resolved, facts.runtimes) if facts else None
    if blocker is None and resolved.network != "none":
        blocker = Firewall.problem()
    if blocker:
        print(f"\nthis engine cannot run it: {blocker}")
    if problems:
        print(f"\n{len(problems)} policy file(s) in {folder} are invalid, and orsbox serve would refuse to start: "
              "see orsbox policy check")
    return 1 if blocker or problems else 0


if __name__ == "__main__":
    sys.exit(main())
