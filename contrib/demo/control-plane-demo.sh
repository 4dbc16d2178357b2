#!/usr/bin/env bash
# `make run`: the real thing on loopback. The server (embedded SQLite in
# ./.portunus-dev), one local edge enrolled through the real enroll flow, a
# small HTTP server as target and a sample rule 127.0.0.1:18080 -> :18081.
# Everything listens on 127.0.0.1 only. Ctrl-C stops it all; state is kept,
# so the next `make run` reuses the enrolled edge and its rule.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
TWISTD=.venv/bin/twistd
SERVER=.venv/bin/portunus-server
CLIENT=.venv/bin/portunus-client
DATA=${PORTUNUS_DEMO_DIR:-.portunus-dev}
STATE="$DATA/server"
BUNDLE="$DATA/edge.bundle.json"
export PORTUNUS_HTTP_ENDPOINT=127.0.0.1:7080

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 0' INT TERM   # Ctrl-C is how the demo ends: not an error

mkdir -p "$DATA"
"$PY" -m http.server 18081 --bind 127.0.0.1 --directory docs >/dev/null 2>&1 &
pids+=($!)

"$TWISTD" --nodaemon --pidfile= portunus-server --data-dir "$STATE" \
  --control-listen 127.0.0.1:7443 --operator-http-listen 127.0.0.1:7080 \
  --log-format pretty 2>>"$DATA/server.log" &
pids+=($!)

"$PY" - <<'PYEOF'
import time, urllib.request
deadline = time.monotonic() + 20
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:7080/v1/health", timeout=1).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the server did not start; see .portunus-dev/server.log")
        time.sleep(0.1)
PYEOF
PORTUNUS_OPERATOR_TOKEN=$(cat "$STATE/operator.token")
export PORTUNUS_OPERATOR_TOKEN

if [ ! -f "$BUNDLE" ]; then
  uri=$("$SERVER" enroll-client local-edge | sed -n "s/.*enroll '\(portunus:[^']*\)'.*/\1/p")
  "$CLIENT" enroll "$uri" --out "$BUNDLE" >/dev/null
  echo "demo: enrolled edge 'local-edge' (bundle $BUNDLE)"
fi

"$TWISTD" --nodaemon --pidfile= portunus-client --bundle "$BUNDLE" \
  --log-format pretty 2>>"$DATA/client.log" &
pids+=($!)

"$PY" - <<'PYEOF'
import json, os, time, urllib.request
token = os.environ["PORTUNUS_OPERATOR_TOKEN"]
def get(path):
    req = urllib.request.Request("http://127.0.0.1:7080" + path,
                                 headers={"Authorization": f"Bearer {token}"})
    return json.load(urllib.request.urlopen(req, timeout=5))
deadline = time.monotonic() + 20
while not any(c["client_name"] == "local-edge" and c["state"] == "connected"
              for c in get("/v1/clients")):
    if time.monotonic() > deadline:
        raise SystemExit("demo: the edge did not connect; see .portunus-dev/client.log")
    time.sleep(0.1)
PYEOF

if ! "$SERVER" list-rules --format json | grep -q '"18080"'; then
  # Through the API rather than the CLI so the sample rule can be bound on
  # 127.0.0.1 only (listen_addresses; the CLI binds an edge's defaults).
  "$PY" - <<'PYEOF'
import json, os, urllib.request
body = {"client": "local-edge", "name": "demo-web", "listen": 18080,
        "listen_addresses": ["127.0.0.1"],
        "targets": [{"host": "127.0.0.1", "port": 18081}]}
req = urllib.request.Request(
    "http://127.0.0.1:7080/v1/rules", data=json.dumps(body).encode(), method="POST",
    headers={"Authorization": "Bearer " + os.environ["PORTUNUS_OPERATOR_TOKEN"],
             "Content-Type": "application/json"})
rule = json.load(urllib.request.urlopen(req, timeout=10))["rule"]
print(f"demo: pushed rule {rule['id']} (127.0.0.1:18080 -> 127.0.0.1:18081)")
PYEOF
fi

"$PY" - <<'PYEOF'
import time, urllib.request
deadline = time.monotonic() + 15
while True:
    try:
        body = urllib.request.urlopen("http://127.0.0.1:18080/", timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the rule does not forward; see .portunus-dev/*.log")
        time.sleep(0.2)
print(f"demo: fetched {len(body)} bytes from http://127.0.0.1:18080/ through the edge\n")
PYEOF

SETUP_TOKEN=$(cat "$STATE/onboarding.token" 2>/dev/null || true)
if [ -n "$SETUP_TOKEN" ] && .venv/bin/python - <<'PYEOF'
import json, sys, urllib.request
status = json.load(urllib.request.urlopen("http://127.0.0.1:7080/v1/auth/status", timeout=5))
sys.exit(0 if status["onboarding_required"] else 1)
PYEOF
then
  ONBOARDING="  first superadmin  open the web console and paste the setup token $SETUP_TOKEN
                  (replaced every 30 min: $SERVER onboarding-token --data-dir $STATE)"
else
  ONBOARDING="  accounts        log in to the web console with your user (onboarding is done)"
fi

cat <<MSG
Portunus is running on loopback:
  web console     http://127.0.0.1:7080/
  control plane   127.0.0.1:7443 (TLS, pinned)      logs: $DATA/server.log
  operator API    http://127.0.0.1:7080/v1/          logs: $DATA/client.log (edge)
  metrics         http://127.0.0.1:7081/metrics
  operator token  $STATE/operator.token
$ONBOARDING
Try, in another shell:
  export PORTUNUS_OPERATOR_TOKEN=\$(cat $STATE/operator.token)
  .venv/bin/portunus-server list-clients
  .venv/bin/portunus-server list-rules
  .venv/bin/portunus-server push-rule local-edge 18090 127.0.0.1:18081   # binds all addresses
  curl -s http://127.0.0.1:18090/ | head
  .venv/bin/portunus-server rule-stats 1
The standalone forwarder demo: bash contrib/demo/standalone-demo.sh
Ctrl-C to stop (state stays in $DATA).
MSG
wait "${pids[1]}"
