#!/usr/bin/env bash
# Instructions per job of the dispatch path, threadtide against a bare crossbeam worker (the
# floor), counted by callgrind: a figure that does not drift with the machine's load.
#
#   bash benches/callgrind.sh [SMALL LARGE]      (defaults: 100000 and 600000 jobs)
#
# Each peer runs twice, with SMALL and with LARGE pre-filled no-op jobs drained by one worker
# (producer's pushes included). Setup and teardown are the same in both runs, so
# (instructions(LARGE) - instructions(SMALL)) / (LARGE - SMALL) is the cost of one job.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-100000}
large=${2:-600000}
cargo build --release --locked -p threadtide-benches --bin dispatch-instructions >&2
bin=target/release/dispatch-instructions

instructions() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A per_job
for peer in floor threadtide; do
  a=$(instructions "$peer" "$small")
  b=$(instructions "$peer" "$large")
  per_job[$peer]=$(awk -v a="$a" -v b="$b" -v s="$small" -v l="$large" \
    'BEGIN { printf "%.1f", (b - a) / (l - s) }')
  printf '%-10s %8s instructions per job  (%s at %s jobs, %s at %s)\n' \
    "$peer" "${per_job[$peer]}" "$a" "$small" "$b" "$large"
done
awk -v f="${per_job[floor]}" -v t="${per_job[threadtide]}" \
  'BEGIN { printf "threadtide / floor: %.2fx, %+.1f instructions per job\n", t / f, t - f }'
