#!/bin/sh
# The demo app's tests: the pages it serves exist and say what they should.
set -e
test "$(cat www/healthz)" = ok
grep -q "hoist demo app" www/index.html
echo "tests passed for $HOIST_REPO at $HOIST_COMMIT_SHORT"
