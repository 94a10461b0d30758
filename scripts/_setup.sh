# Shared set-up for scripts/serve, scripts/test and scripts/bench (sourced, not run).
# Makes .venv, installs orsbox, checks the Docker engine, builds missing images.
# A second run skips everything already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

setup_venv() {
  local stamp="$VENV/.orsbox-installed" want
  want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/orsbox" ]; then
    return 0
  fi
  local python
  python="$(find_python)" || die "Python 3.11 or newer is needed (python3.11 or python3 on PATH)."
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $python"
    "$python" -m venv "$VENV"
  fi
  say "installing orsbox and its test tools into .venv"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
}

check_docker() {
  if ! command -v docker >/dev/null 2>&1 && [ ! -S /var/run/docker.sock ] && [ -z "${DOCKER_HOST:-}" ]; then
    die "no Docker engine found: install Docker (apt-get install docker.io) and start it."
  fi
  if ! "$VENV/bin/python" - <<'PY' 2>/tmp/orsbox-docker-check.$$; then
import docker
docker.from_env(timeout=10).ping()
PY
    local why; why="$(tail -n 1 /tmp/orsbox-docker-check.$$)"; rm -f /tmp/orsbox-docker-check.$$
    die "the Docker engine does not answer at ${DOCKER_HOST:-unix:///var/run/docker.sock}: ${why}
       Start it (systemctl start docker, or dockerd &) and check that you may use its socket."
  fi
  rm -f /tmp/orsbox-docker-check.$$
}

ensure_debootstrap() {
  if [ -n "${ORSBOX_BASE_FROM:-}" ] || command -v debootstrap >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing debootstrap (the base image is made from Debian's packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    die "debootstrap is needed to build the base image: sudo apt-get install debootstrap
       (or set ORSBOX_BASE_FROM=python:3.12-slim where your engine can pull images)."
  fi
}

build_images() {
  ensure_debootstrap
  "$VENV/bin/orsbox" build
}

# gVisor: orsbox's runtimes for policies with `runtime = "runsc"`. The agent dials in to the server's
# socket on a read-only mount: --host-uds=open (connect to host sockets, create none); network "none"
# needs --network=none (runsc's own netstack cannot start in the root network namespace here), the
# later network modes --network=host. Runtime arguments cannot be set per container through the
# Docker API, hence one registered runtime per network mode. Registered differently (an older orsbox's
# --host-uds=create), they are registered again and dockerd reloaded.
RUNSC_RUNTIMES='{"orsbox-runsc": ["--platform=ptrace", "--network=none", "--host-uds=open"],
                 "orsbox-runsc-host": ["--platform=ptrace", "--network=host", "--host-uds=open"]}'

ensure_runsc() {
  local skip="runsc (gVisor) tests will be skipped"
  if [ -n "${DOCKER_HOST:-}" ] || ! pidof dockerd >/dev/null 2>&1; then
    say "$skip: the Docker engine is not a local dockerd this script may configure"; return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    say "$skip: registering runsc in /etc/docker/daemon.json needs root"; return 0
  fi
  if ! command -v runsc >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      say "$skip: runsc is not installed and there is no apt-get to install it"; return 0
    fi
    say "installing runsc (gVisor) from Debian's packages"
    if ! { apt-get update -qq >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null 2>&1; }; then
      say "$skip: apt-get install runsc failed"; return 0
    fi
  fi
  local changed
  changed="$(RUNSC_PATH="$(command -v runsc)" RUNSC_RUNTIMES="$RUNSC_RUNTIMES" "$VENV/bin/python" - <<'PY'
import json, os, pathlib
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text() or "{}") if path.exists() else {}
runtimes = config.setdefault("runtimes", {})
wanted = {name: {"path": os.environ["RUNSC_PATH"], "runtimeArgs": args}
          for name, args in json.loads(os.environ["RUNSC_RUNTIMES"]).items()}
if all(runtimes.get(name) == value for name, value in wanted.items()):
    print("no")
else:
    runtimes.update(wanted)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".orsbox-tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    print("yes")
PY
)" || { say "$skip: could not update /etc/docker/daemon.json"; return 0; }
  if [ "$changed" = yes ]; then
    say "registered orsbox-runsc runtimes in /etc/docker/daemon.json; reloading dockerd (SIGHUP, no restart)"
    kill -HUP $(pidof dockerd)
    for _ in $(seq 50); do
      docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q orsbox-runsc && return 0
      sleep 0.2
    done
    say "$skip: dockerd did not load the runtimes after SIGHUP (see its log)"
  fi
}

setup_all() {
  setup_venv
  check_docker
  ensure_runsc
  build_images
}
