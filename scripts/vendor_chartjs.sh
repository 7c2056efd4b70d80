#!/usr/bin/env bash
# Fetches the pinned Chart.js through npm and vendors its minified UMD build and licence into
# eval/static/ (package data, inlined into the dashboard so the page needs no network).
# Records the sha256 of what was vendored; `scripts/vendor_chartjs.sh --check` verifies it.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="4.6.1"
DEST="eval/static"
SUMS="$DEST/chartjs.sha256"
if [ "${1:-}" = "--check" ]; then
  (cd "$DEST" && sha256sum -c "$(basename "$SUMS")")
  exit
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "chart.js@$VERSION" >/dev/null && tar xzf "chart.js-$VERSION.tgz")
cp "$work/package/dist/chart.umd.min.js" "$DEST/chart.umd.min.js"
cp "$work/package/LICENSE.md" "$DEST/chart.js.LICENSE.md"
(cd "$DEST" && sha256sum chart.umd.min.js chart.js.LICENSE.md > "$(basename "$SUMS")")
echo "chart.js $VERSION vendored into $DEST:"
cat "$SUMS"
