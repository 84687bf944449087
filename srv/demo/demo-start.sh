#!/bin/sh
# Reads its own section from $SRVCFG (fsm-init always exports the effective config).
port=$(python3 -c 'import json,os; print(json.loads(os.environ["SRVCFG"]).get("demo",{}).get("port",18080))')
echo "demo: serving $(pwd) on 127.0.0.1:$port"
exec python3 -m http.server "$port" --bind 127.0.0.1
