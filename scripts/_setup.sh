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

setup_all() {
  setup_venv
  check_docker
  build_images
}
