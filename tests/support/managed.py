"""What orsbox started for this test run, as the engine sees it: containers and networks by their labels,
and orsbox's firewall rules whose network is gone (the leak check of tests/conftest.py uses all three)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import docker

from .run import NODE_ID


def managed_containers(engine: docker.DockerClient) -> list[Any]:
    return list(engine.containers.list(all=True, ignore_removed=True,  # one removed meanwhile is not an error
                                       filters={"label": ["orsbox.managed=1", f"orsbox.node={NODE_ID}"]}))


def managed_networks(engine: docker.DockerClient) -> list[Any]:
    return list(engine.networks.list(filters={"label": ["orsbox.managed=1", f"orsbox.node={NODE_ID}"]}))


def session_containers(engine: docker.DockerClient, sid: str) -> list[Any]:
    return list(engine.containers.list(all=True, ignore_removed=True,
                                       filters={"label": [f"orsbox.session={sid}", f"orsbox.node={NODE_ID}"]}))


def dangling_firewall_rules(engine: docker.DockerClient) -> list[str]:
    """orsbox's iptables rules (any node's) whose network is gone, as iptables-save prints them."""
    if shutil.which("iptables-save") is None or os.geteuid() != 0:
        return []
    out = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True).stdout
    rules = {line: match.group(1) for line in out.splitlines()
             if (match := re.search(r'--comment "?orsbox:([^"\s]+)', line))}
    networks = {network.name for network in engine.networks.list()} if rules else set()
    return [line for line, network in rules.items() if network not in networks]
