#!/usr/bin/env bash
# Retakes the dashboard screenshots in this folder with the browser the tests
# use (Debian: apt-get install chromium chromium-driver): the full-flow browser
# test, in edgecache-cli since it runs `edgecache serve`, saves each page as it
# passes through it.
set -euo pipefail
cd "$(dirname "$0")"
docs="$PWD"
cd ../../..
EDGECACHE_SCREENSHOTS="$docs" cargo test -p edgecache-cli --test it \
    dashboard::an_operator_finds_pins_tags_fetches_and_deletes_a_resource_in_the_browser
ls -l "$docs"/dashboard-*.png
