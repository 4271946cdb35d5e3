#!/usr/bin/env bash
# Turn saved `ipclab bench --export-json` runs into a plot or a comparison.
#
#   scripts/bench-report.sh plot RUN.json OUT.svg|.png   the same plot as `bench --plot`
#   scripts/bench-report.sh compare BEFORE.json AFTER.json   p50 before → after, per transport and size
#   scripts/bench-report.sh show RUN.json                the tables and summary again
#
# Uses the ipclab binary named by $IPCLAB, or builds and runs this checkout's.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
run_ipclab() {
  if [ -n "${IPCLAB:-}" ]; then
    "$IPCLAB" "$@"
  else
    cargo run --manifest-path "$here/Cargo.toml" --release --quiet -- "$@"
  fi
}
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
case "$1" in
  plot) [ $# -eq 3 ] || usage; run_ipclab report "$2" --plot "$3" ;;
  compare) [ $# -eq 3 ] || usage; run_ipclab report "$3" --against "$2" ;;
  show) [ $# -eq 2 ] || usage; run_ipclab report "$2" ;;
  *) usage ;;
esac
