#!/bin/sh
# Write the per-host pages, then serve in the foreground (exec: httpd is PID 1 and gets SIGTERM).
echo "$VERSION" > /www/version
echo "${NODE_ID:-unknown}" > /www/node
if [ -n "$BROKEN_ON" ] && { [ "$BROKEN_ON" = all ] || [ "$BROKEN_ON" = "$NODE_ID" ]; }; then
  rm -f /www/healthz
fi
exec httpd -f -p 8080 -h /www
