"""Which of a client's secrets a session gets: each one's `allowed_domains` against where the session can send it.

A secret restricted to domains may only go to a session that cannot send it anywhere else:
- network "none": it reaches nothing, so every secret is given;
- "allowlist": every listed host must be one of the secret's domains (`*.name` covers sub-domains);
- "full": it reaches anything, so only secrets without `allowed_domains` are given.
Otherwise `/create` is refused with a 400 naming the secret and the hosts in the way, except for the
entries whose value is the client's own API key (the official client adds `api_key` and
`OPENREWARD_API_KEY` to every session, allowed to reach the server's own host, which no session can
reach): those are withheld from sessions that have a network, and the log says so (names only).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import structlog

from ..errors import BadSecrets
from ..policy import SandboxPolicy
from ..policy.model import covers, parse_allow_entry
from ..protocol import Secret

log = structlog.get_logger()


def secrets_for_session(secrets: Mapping[str, Secret], policy: SandboxPolicy, *,
                        client_keys: Collection[str] = ()) -> dict[str, str]:
    """{name: value} of the secrets the session may get; `client_keys`: names whose value is the caller's key."""
    given: dict[str, str] = {}
    for name, secret in secrets.items():
        problem = leak_problem(secret, policy)
        if problem is None:
            given[name] = secret.value
        elif name in client_keys:
            log.info("secret_withheld", secret=name[:100], reason=problem[:300])
        else:
            domains = ", ".join(secret.allowed_domains or ()) or "no domain"
            raise BadSecrets(f"secret {name[:100]!r} may only be sent to {domains[:500]}, but {problem[:500]}")
    return given


def leak_problem(secret: Secret, policy: SandboxPolicy) -> str | None:
    """Where a session of `policy` could send `secret` that its allowed domains do not include; None: nowhere."""
    if secret.allowed_domains is None or policy.network == "none":
        return None
    if policy.network == "full":
        return 'sessions of this environment reach any address (network = "full")'
    outside = [host for host, _ in map(parse_allow_entry, policy.allow)
               if not any(covers(domain, host) for domain in secret.allowed_domains)]
    return f"sessions of this environment can also reach {', '.join(outside)}" if outside else None
