#!/usr/bin/env bash
# Runs every fuzz target in turn for a while and prints the executions of each.
#
#   fuzz/run.sh [seconds-per-target] [--keep]
#
# Default 600 s per target. New inputs go to fuzz/target/corpus/<target> (scratch); with
# --keep, the ones that reach new code are merged into fuzz/corpus/<target> (committed).
# A crash leaves its input in fuzz/artifacts/<target>/: once fixed, copy it to
# fuzz/regressions/<target>/ so `cargo test` replays it for good.
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`). It passes -Z flags to rustc, which
# a stable toolchain accepts with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-600}
keep=${2:-}
export RUSTC_BOOTSTRAP=1

targets=$(cargo fuzz list)
cargo fuzz build

failed=()
summary=()
mkdir -p target/logs
for target in $targets; do
  work=target/corpus/$target
  log=target/logs/$target.log
  mkdir -p "$work" "corpus/$target"
  printf '==> %s (%s s)\n' "$target" "$seconds"
  # -timeout: an input taking over 10 s is reported as a hang.
  if ! cargo fuzz run "$target" "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    failed+=("$target")
    tail -n 40 "$log"
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "$log" | tail -n 1 || true)
  summary+=("$(printf '%-16s %s' "$target" "${runs:-no summary (see $log)}")")
  if [[ $keep == --keep ]]; then
    # Only inputs that reach new code (edges, not hit counts), so the corpus stays small.
    cargo fuzz run "$target" "corpus/$target" "$work" -- -merge=1 -use_counters=0 >>"$log" 2>&1
  fi
done

printf '\nexecutions per target:\n'
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  printf '\nfailed: %s (inputs in fuzz/artifacts/<target>/, logs in fuzz/target/logs/)\n' \
    "${failed[*]}"
  exit 1
fi
