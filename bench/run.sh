#!/usr/bin/env bash
# The full benchmark: installs the peers (cached), builds release, runs
# `switchboard-bench suite` against Switchboard, sockudo and the raw limit, and writes
# BENCHMARKS.md with plots in bench/plots/. Takes about 15 minutes on 2 cores.
#
#   bench/run.sh                 # everything
#   SECONDS_EACH=3 bench/run.sh  # shorter measurements
#   REPORT_ONLY=1 bench/run.sh   # only re-render BENCHMARKS.md from bench/results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SWITCHBOARD_BENCH_CACHE:-$HOME/.cache/switchboard-bench}"
SOCKUDO_VERSION="${SOCKUDO_VERSION:-5.2.0}"
mkdir -p "$CACHE" bench/plots

step() { printf '\n==> %s\n' "$*"; }

if [[ -z "${REPORT_ONLY:-}" ]]; then
  step "peers"
  if ! command -v protoc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
  fi
  if [[ ! -x "$CACHE/sockudo/bin/sockudo" ]]; then
    cargo install sockudo --version "$SOCKUDO_VERSION" --locked --root "$CACHE/sockudo"
  fi
  python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

  step "build"
  cargo build --release -p switchboard -p switchboard-bench

  step "machine"
  {
    printf '{'
    printf '"date": "%s", ' "$(date -u +%Y-%m-%dT%H:%MZ)"
    printf '"cpu": "%s", ' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc)"
    printf '"memory": "%s GiB", ' "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)"
    printf '"kernel": "%s", ' "$(uname -r)"
    printf '"load before the run": "%s", ' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '"rustc": "%s", ' "$(rustc --version)"
    printf '"switchboard": "%s (git %s)", ' "$(target/release/switchboard --version 2>/dev/null || echo switchboard)" "$(git rev-parse --short HEAD)"
    printf '"sockudo": "%s (crates.io, default features, jemalloc)"' "$SOCKUDO_VERSION"
    printf '}\n'
  } > bench/machine.json

  step "suite"
  rm -f bench/results.jsonl
  target/release/switchboard-bench suite --out bench/results.jsonl --seconds "${SECONDS_EACH:-5}"
fi

step "report"
python3 bench/report.py bench/results.jsonl bench/machine.json bench/notes.md BENCHMARKS.md bench/plots
echo "wrote BENCHMARKS.md and bench/plots/"
