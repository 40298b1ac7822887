#!/bin/sh
# Write the per-host pages, then serve in the foreground. httpd as PID 1 would ignore SIGTERM
# (PID 1 gets no default signal handlers) and every stop would wait out Docker's timeout, so
# the shell stays PID 1, forwards TERM and exits at once.
echo "$VERSION" > /www/version
echo "${NODE_ID:-unknown}" > /www/node
echo "${PEERS:-}" > /www/peers
# The database URL arrives from the agent's [secrets] at deploy time; the page shows only its hash.
printf '%s' "${DATABASE_URL:-}" | sha256sum | cut -d' ' -f1 > /www/db
if [ -n "$BROKEN_ON" ] && { [ "$BROKEN_ON" = all ] || [ "$BROKEN_ON" = "$NODE_ID" ]; }; then
  rm -f /www/healthz
fi
httpd -f -p 8080 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
