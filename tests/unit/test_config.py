"""The server's settings: flags ▸ ORSBOX_* ▸ the config file ▸ defaults, each with its source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orsbox.config import Config
from orsbox.errors import ConfigError

from ..support.run import ROOT


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    file = tmp_path / "orsbox.toml"
    file.write_text('port = 9001\nmax_sessions = 7\nimage_patterns = ["orsbox/*", "team/*"]\nnode_id = "from-file"\n')
    environ = {"ORSBOX_MAX_SESSIONS": "9", "ORSBOX_NODE_ID": "from-env", "ORSBOX_LABEL_POLICIES": "a, b"}
    config, sources = Config.resolve({"node_id": "from-flag", "host": None}, environ=environ, config_file=file)
    assert (config.port, config.max_sessions, config.node_id) == (9001, 9, "from-flag")
    assert config.image_patterns == ["orsbox/*", "team/*"] and config.label_policies == ["a", "b"]
    assert sources["port"] == f"file {file}" and sources["max_sessions"] == "env ORSBOX_MAX_SESSIONS"
    assert sources["node_id"] == "flag" and sources["host"] == "default"


def test_the_file_can_come_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "orsbox.toml"
    file.write_text("keepalive = 5.0\n")
    config, sources = Config.resolve({}, environ={"ORSBOX_CONFIG": str(file)})
    assert config.keepalive == 5.0 and sources["keepalive"] == f"file {file}"


@pytest.mark.parametrize(("text", "words"), [
    ("max_sesions = 3\n", "unknown setting(s) max_sesions"),
    ("port = 'eighty'\n", "port (file"),
    ("port = [\n", "orsbox.toml"),
])
def test_a_bad_file_names_the_file_and_the_field(tmp_path: Path, text: str, words: str) -> None:
    file = tmp_path / "orsbox.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Config.resolve({}, environ={}, config_file=file)


def test_a_bad_variable_names_it() -> None:
    with pytest.raises(ConfigError, match=r"max_sessions \(env ORSBOX_MAX_SESSIONS\)"):
        Config.resolve({}, environ={"ORSBOX_MAX_SESSIONS": "many"})


def test_config_show_prints_every_setting_and_its_source_with_keys_masked(tmp_path: Path) -> None:
    file = tmp_path / "orsbox.toml"
    file.write_text('api_keys = ["k-secret-1", "k-secret-2"]\nport = 9100\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORSBOX_")}, "ORSBOX_NODE_ID": "n7"}
    shown = subprocess.run([sys.executable, "-m", "orsbox.cli", "config", "show", "--config", str(file)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=True).stdout
    assert f"port = 9100  # file {file}" in shown and "node_id = 'n7'  # env ORSBOX_NODE_ID" in shown
    assert "k-secret" not in shown and "<2 key(s), masked>" in shown
    assert len(shown.splitlines()) == len(Config.model_fields)
