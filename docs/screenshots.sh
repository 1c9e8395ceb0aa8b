#!/usr/bin/env bash
# Retakes the dashboard screenshots in docs/ with the browser the tests use
# (Debian: apt-get install chromium chromium-driver): the full-flow browser
# test saves each page as it passes through it.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGECACHE_SCREENSHOTS="$PWD/docs" cargo test --all-features --test it \
    dashboard::an_operator_finds_pins_tags_fetches_and_deletes_a_resource_in_the_browser
ls -l docs/dashboard-*.png
