#!/usr/bin/env bash
# The test command: installs the real services the tests need, then runs formatting,
# lint and every test (unit and integration). Tests start and stop their own registries
# on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dev-services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fleet tests start hangar-worker processes: build every binary first.
cargo build --workspace --bins
cargo test --workspace
