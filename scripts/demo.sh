#!/usr/bin/env bash
# The demo: throwaway registries, synthetic images made offline (shared base layers,
# multi-arch indexes, Docker v2 and OCI), a mirror from one to the other, a validation,
# skopeo's view of one copied index; then a save into a Hangar zip archive, its listing and
# verification, and a load of the archive into a third registry, validated.
# KEEP=1 leaves the registries running and the work directory (list, archive) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
HANGAR_SKIP_GARAGE=1 scripts/dev-services.sh
echo "--- building hangar-coord and hangar-loadtest (the first build takes several minutes on 2 cores)"
cargo build --bin hangar-coord --bin hangar-loadtest
bin=target/debug
work="$(mktemp -d -t hangar-demo-XXXXXX)"
pids=()
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "--- kept (KEEP=1): work directory $work; registries $src, $dst, $gap"
    echo "    stop them with: kill ${pids[*]}; rm -rf '$work'"
    return
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Each registry helper removes its own storage once stopped; wait for that.
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
src="" dst="" gap=""
trap cleanup EXIT

# Not in $(…): the registries must be children of this shell so cleanup can stop them.
start_registry() {
  scripts/dev-services.sh registry >"$work/$1.addr" 2>"$work/$1.err" &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$work/$1.addr" ] && break; sleep 0.05; done
}
start_registry source
start_registry destination
start_registry airgap
src="$(cat "$work/source.addr")"
dst="$(cat "$work/destination.addr")"
gap="$(cat "$work/airgap.addr")"
echo "source registry $src, destination registry $dst"

"$bin/hangar-loadtest" seed --registry "$src" --list "$work/list.txt" \
  --images 12 --layers 2 --layer-size 2000000 --shared-layers 2 --shared-layer-size 8000000 --multiarch 0.4
echo "--- image list"
cat "$work/list.txt"
echo "--- mirror"
"$bin/hangar-coord" mirror -f "$work/list.txt" -d "$dst" --tls-verify=false -j 4 -o "$work/mirror-failed.txt"
echo "--- mirror validate"
"$bin/hangar-coord" mirror validate -f "$work/list.txt" -d "$dst" --tls-verify=false -j 4 -o "$work/mirror-failed.txt"
first="$(head -n1 "$work/list.txt")"
echo "--- skopeo inspect --raw of the copy of $first"
skopeo inspect --raw --tls-verify=false "docker://${first/$src/$dst}"
echo
echo "--- save into $work/images.zip"
"$bin/hangar-coord" save -f "$work/list.txt" -d "$work/images.zip" --tls-verify=false -j 4 -o "$work/save-failed.txt"
echo "--- archive ls"
"$bin/hangar-coord" archive ls "$work/images.zip"
echo "--- archive verify"
"$bin/hangar-coord" archive verify "$work/images.zip"
echo "--- load into the air-gapped registry $gap"
"$bin/hangar-coord" load -s "$work/images.zip" -d "$gap" --tls-verify=false -j 4 -o "$work/load-failed.txt"
echo "--- load validate"
"$bin/hangar-coord" load validate -s "$work/images.zip" -d "$gap" --tls-verify=false -o "$work/load-failed.txt"
