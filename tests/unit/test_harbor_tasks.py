"""Harbor task folders without Docker: task.toml (both schema versions), dataset layout, the FROM mapping,
resources within the policy's caps, and the verifier's reward files read as hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orsbox.agent.grading.harbor_verifier import DeliveryError, decode_tests, parse_rewards
from orsbox.agent.runtime.processes import ProgramResult
from orsbox.config import Config
from orsbox.errors import BadRequest, ConfigError, HarborTaskError
from orsbox.harbor.dataset import load_dataset, read_task
from orsbox.harbor.images import from_images, rewritten_dockerfile, task_image
from orsbox.harbor.serving import task_policy, verifier_files
from orsbox.harbor.taskconfig import read_task_config
from orsbox.policy import SandboxPolicy


def task_folder(root: Path, name: str, toml: str = "", dockerfile: str = "FROM orsbox/base:latest\n") -> Path:
    folder = root / name
    (folder / "environment").mkdir(parents=True)
    (folder / "tests").mkdir()
    (folder / "task.toml").write_text(toml)
    (folder / "instruction.md").write_text("Do it.\n")
    (folder / "environment" / "Dockerfile").write_text(dockerfile)
    (folder / "tests" / "test.sh").write_text("echo 1 > /logs/verifier/reward.txt\n")
    return folder


def test_schema_1_0_with_size_strings(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text('version = "1.0"\n[metadata]\ndifficulty = "easy"\n[verifier]\ntimeout_sec = 30\n'
                    '[environment]\nmemory = "2G"\nstorage = "512M"\ncpus = 2\n')
    config = read_task_config(path)
    assert (config.schema_version, config.verifier.timeout_sec) == ("1.0", 30.0)
    assert (config.environment.memory_mb, config.environment.storage_mb, config.environment.cpus) == (2048, 512, 2)


def test_schema_1_1_with_a_task_table_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text('schema_version = "1.1"\n[task]\nname = "org/x"\n[agent]\ntimeout_sec = 60\n'
                    '[verifier.env]\nMODE = "strict"\n')
    config = read_task_config(path)
    assert config.task == {"name": "org/x"} and config.agent.timeout_sec == 60
    assert config.verifier.env == {"MODE": "strict"} and config.environment.memory_mb == 2048


@pytest.mark.parametrize("text,where", [
    ('[verifier]\ntimeout_sec = "soon"\n', "verifier.timeout_sec"),
    ('[environment]\nmemory = "lots"\n', "environment"),
    ('[environment]\ncpus = -1\n', "environment.cpus"),
    ("[agent\n", "not valid TOML"),
])
def test_malformed_task_toml_names_the_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "task.toml"
    path.write_text(text)
    with pytest.raises(HarborTaskError) as caught:
        read_task_config(path)
    assert caught.value.detail.startswith(f"{path}: {where}")


def test_splits_come_from_the_layout(tmp_path: Path) -> None:
    task_folder(tmp_path / "train", "a")
    task_folder(tmp_path / "train", "b")
    task_folder(tmp_path / "dev", "c")
    dataset = load_dataset("d", tmp_path)
    assert {split: [t.id for t in tasks] for split, tasks in dataset.tasks.items()} == {
        "dev": ["c"], "train": ["a", "b"]}
    flat = load_dataset("flat", tmp_path / "train")
    assert list(flat.tasks) == ["test"]


def test_a_task_without_a_dockerfile_is_refused(tmp_path: Path) -> None:
    folder = task_folder(tmp_path, "x")
    (folder / "environment" / "Dockerfile").unlink()
    with pytest.raises(HarborTaskError, match="environment/Dockerfile: missing"):
        read_task(folder)
    (folder / "environment" / "docker-compose.yaml").write_text("services: {main: {build: .}}\n")
    with pytest.raises(HarborTaskError, match="its compose main service"):
        read_task(folder)


@pytest.mark.parametrize("compose,where", [
    ("services: {db: {image: x}}", "services.main: a compose task needs a `main` service"),
    ("services: {main: {build: ./other}}", "services.main.build: orsbox builds main from environment/Dockerfile"),
    ("services: {main: {}, db: {image: x, volumes: [a:/b]}}", "services.db.volumes: not supported"),
    ("services: {main: {privileged: true}}", "services.main.privileged: not supported"),
    ("services: {main: {}, db: {build: ../..}}", "services.db.build: must stay inside environment/"),
    ("services: {main: {}, db: {image: '${DB_IMAGE}'}}", "services.db.image: ${DB_IMAGE} has no default"),
    ("services: {main: {}, Bad_Name: {image: x}}", "services.Bad_Name: a service name must be a host name"),
    ("services: [", "not valid YAML"),
])
def test_compose_files_are_refused_naming_the_key(tmp_path: Path, compose: str, where: str) -> None:
    folder = task_folder(tmp_path, "x")
    (folder / "environment" / "docker-compose.yaml").write_text(compose + "\n")
    with pytest.raises(HarborTaskError) as caught:
        read_task(folder)
    assert caught.value.detail.startswith(f"{folder}/environment/docker-compose.yaml: {where}"), caught.value.detail


def test_compose_sidecars_are_read(tmp_path: Path) -> None:
    folder = task_folder(tmp_path, "x")
    (folder / "environment" / "cache").mkdir()
    (folder / "environment" / "cache" / "Dockerfile.cache").write_text("FROM redis:7\n")
    (folder / "environment" / "docker-compose.yaml").write_text(
        "services:\n  main: {build: {context: .}, command: [sleep, infinity], depends_on: [cache, db]}\n"
        "  cache: {build: {context: ./cache, dockerfile: Dockerfile.cache}, command: redis-server --save ''}\n"
        "  db: {image: 'postgres:${PG:-16}', environment: [POSTGRES_PASSWORD=pw]}\n")
    task = read_task(folder)
    cache, db = task.sidecars
    assert (cache.name, cache.context, cache.dockerfile, cache.command) == (
        "cache", (folder / "environment" / "cache").resolve(), "Dockerfile.cache", ("redis-server", "--save", ""))
    assert (db.image, db.env) == ("postgres:16", (("POSTGRES_PASSWORD", "pw"),))
    hashed = task_image("d", task, {"redis:7": "orsbox/base:latest"}).inputs_hash
    assert hashed != task_image("d", task, {}).inputs_hash  # a sidecar's mapped FROM is an input too


def test_from_lines_are_mapped_only_as_ops_say(tmp_path: Path) -> None:
    task = read_task(task_folder(tmp_path, "x", dockerfile=(
        "FROM --platform=linux/amd64 ubuntu:24.04 AS build\nRUN true\nFROM build\nFROM python:3.12-slim\n")))
    assert from_images(task) == ["ubuntu:24.04", "python:3.12-slim"]
    text = rewritten_dockerfile(task, {"ubuntu:24.04": "orsbox/base:latest"})
    assert "FROM --platform=linux/amd64 orsbox/base:latest AS build" in text
    assert "FROM python:3.12-slim" in text and "FROM build" in text
    assert "chmod 0700 /logs/verifier" in text  # orsbox's last layer
    assert task_image("d", task, {}).inputs_hash != task_image("d", task, {"ubuntu:24.04": "x"}).inputs_hash
    assert task_image("d", task, {"other:1": "x"}).inputs_hash == task_image("d", task, {}).inputs_hash


def test_resources_are_given_within_the_caps_and_refused_past_them(tmp_path: Path) -> None:
    caps = SandboxPolicy(cpus=2, memory="1g")
    small = read_task(task_folder(tmp_path, "small", "[agent]\ntimeout_sec = 100\n[verifier]\ntimeout_sec = 20\n"
                                                     "[environment]\ncpus = 1\nmemory_mb = 256\n"))
    policy = task_policy(caps, small, "d")
    assert (policy.cpus, policy.memory, policy.root_writable) == (1, 256 * 1024**2, True)
    assert policy.max_lifetime == caps.setup_timeout + 100 + 20 + 60
    assert policy.tmp_size + policy.workspace_size + policy.home_size + policy.shm_size <= 192 * 1024**2
    big = read_task(task_folder(tmp_path, "big", "[environment]\ncpus = 4\nmemory_mb = 512\n"))
    with pytest.raises(BadRequest, match=r"cpus = 4.*at most cpus = 2"):
        task_policy(caps, big, "d")
    default = read_task(task_folder(tmp_path, "default"))  # Harbor's default: 2048 MB
    with pytest.raises(BadRequest, match="memory_mb = 2048"):
        task_policy(caps, default, "d")


def rewards(files: dict[str, object]) -> tuple[float, dict[str, float], str | None]:
    return parse_rewards(ProgramResult(json.dumps(files).encode(), b"", 0, False, False, 0.1))


def test_reward_files_are_read_as_hostile_input() -> None:
    assert rewards({"reward.txt": {"text": " 0.75\n", "over": False}, "reward.json": None}) == (
        0.75, {"reward": 0.75}, None)
    assert rewards({"reward.txt": None, "reward.json": {"text": '{"reward": 1, "x": 0.5}', "over": False}})[:2] == (
        1.0, {"reward": 1.0, "x": 0.5})
    assert rewards({"reward.txt": None, "reward.json": {"text": '{"score": 0.5}', "over": False}})[0] == 0.5
    for bad in ({"reward.txt": {"text": "nan", "over": False}}, {"reward.txt": {"text": "yes", "over": False}},
                {"reward.txt": {"text": "1", "over": True}},
                {"reward.json": {"text": '{"reward": true}', "over": False}},
                {"reward.json": {"text": '{"a": 1, "b": 2}', "over": False}},
                {"reward.json": {"text": "[1]", "over": False}}, {}):
        reward, _, problem = rewards(bad)
        assert reward == 0.0 and problem, bad
    assert parse_rewards(ProgramResult(b"not json", b"", 0, False, False, 0.1))[2]


def test_tests_travel_as_relative_files_only(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "test.sh").write_text("true\n")
    (tmp_path / "test.sh").chmod(0o755)
    (tmp_path / "sub" / "data.bin").write_bytes(b"\0\1")
    (tmp_path / "link").symlink_to("/etc/passwd")
    files, executable = decode_tests(verifier_files(tmp_path))
    assert files == {"sub/data.bin": b"\0\1", "test.sh": b"true\n"} and executable == ["test.sh"]
    for rel in ("../x", "/etc/x", "a//b", "./a"):
        with pytest.raises(DeliveryError):
            decode_tests({"files": {rel: ""}})


def test_config_pairs_are_checked() -> None:
    config = Config(harbor_datasets=["Ex=/srv/ex"], harbor_base_map=["ubuntu:24.04=orsbox/base:latest"])
    assert config.datasets == {"ex": Path("/srv/ex")} and config.base_map == {"ubuntu:24.04": "orsbox/base:latest"}
    with pytest.raises(ConfigError, match=r"harbor_datasets.*NAME=VALUE"):
        Config.resolve({}, environ={"ORSBOX_HARBOR_DATASETS": "just-a-name"})
