"""openreward's sandbox API, served by orsbox: `/create_sandbox`, `/run`, the file routes, `/set_network`.

A sandbox is a session like an ORS one (the same registry, keys, quotas, policies, reaper,
container profile and agent), of an image the client names, whose agent runs in sandbox mode:
commands and files instead of an environment's tools. `models.py` mirrors the client's bodies,
`mapping.py` turns `SandboxSettings` into a policy (or refuses it), `routes.py` serves them.
"""
