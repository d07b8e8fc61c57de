#!/bin/bash
# missive-probe PORT [PATH]: exits 0 when GET http://127.0.0.1:PORT/PATH (default /healthz)
# answers 200, non-zero otherwise. The container health check of the Missive image, which has
# no curl or wget: bash's /dev/tcp is enough for one request.
set -eu
port=${1:?usage: missive-probe PORT [PATH]}
path=${2:-/healthz}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
read -r -t 5 _version status _reason <&3
[ "$status" = 200 ]
