#!/bin/sh
# Serves /id (NODE_ID: from the host's `vars`, the same on every redeploy), /peers (SEEDS: every
# node's address) and /health on port 7100.
mkdir -p /www
echo "$NODE_ID" > /www/id
echo "$SEEDS" > /www/peers
echo "$VERSION" > /www/version
echo ok > /www/health
httpd -f -p 7100 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
