#!/usr/bin/env bash
# `make run`: the standalone forwarder on contrib/examples/demo.toml, with a
# small HTTP server as its target, so a newcomer sees bytes flow.
# Everything listens on 127.0.0.1 only. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
TWISTD=.venv/bin/twistd
CONFIG=contrib/examples/demo.toml

target_pid=""
forwarder_pid=""
cleanup() {
  [ -n "$forwarder_pid" ] && kill -TERM "$forwarder_pid" 2>/dev/null && wait "$forwarder_pid" 2>/dev/null
  [ -n "$target_pid" ] && kill "$target_pid" 2>/dev/null
  true
}
trap cleanup EXIT
trap 'exit 0' INT TERM   # Ctrl-C is how the demo ends: not an error

"$PY" -m http.server 18081 --bind 127.0.0.1 --directory docs >/dev/null 2>&1 &
target_pid=$!

"$TWISTD" --nodaemon --pidfile= portunus-standalone --config "$CONFIG" &
forwarder_pid=$!

"$PY" - <<'PYEOF'
import socket, time, urllib.request
deadline = time.monotonic() + 15
while True:
    try:
        socket.create_connection(("127.0.0.1", 18080), timeout=1).close()
        socket.create_connection(("127.0.0.1", 18081), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the forwarder did not start; see its log above")
        time.sleep(0.1)
body = urllib.request.urlopen("http://127.0.0.1:18080/", timeout=5).read()
print(f"\ndemo: fetched {len(body)} bytes from http://127.0.0.1:18080/ "
      "through the forwarder to the HTTP server on 127.0.0.1:18081\n")
PYEOF

cat <<'MSG'
Portunus standalone is forwarding 127.0.0.1:18080 -> 127.0.0.1:18081.
Try:
  curl -s http://127.0.0.1:18080/ | head           # bytes through the rule
  .venv/bin/twistd -n portunus-standalone --config contrib/examples/demo.toml --check
Per-rule counters are logged every 10 s as `standalone.stats`. Ctrl-C to stop.
MSG
wait "$forwarder_pid"
