#!/bin/sh
# A fleet service: serves /name, /version, /db (sha256 of $DATABASE_URL, which arrives from
# the agent's [secrets] at deploy time and is never stored) and /health, unless BROKEN is set
# or the password is missing. The shell stays PID 1 and forwards TERM, so a stop is instant.
echo "$SERVICE" > /www/name
echo "$VERSION" > /www/version
printf '%s' "${DATABASE_URL:-}" | sha256sum | cut -d' ' -f1 > /www/db
if [ -z "$BROKEN" ] && [ -n "${DATABASE_URL:-}" ]; then echo ok > /www/health; fi
httpd -f -p "$PORT" -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
