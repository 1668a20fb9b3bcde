#!/bin/bash
# stackemu demo: writes STACK_EMULATOR_READY on its own line to the serial console once the stack
# answers: PostgreSQL and Redis through the backend (/health?db=1&redis=1 on 26701) and the
# dashboard (/ on 26700). Run at every boot by stackemu-demo-ready.service, after the services
# have started; the retries only cover a service that is slow to answer its first request.
# --no-marker: check only (the provisioning smoke test). Exits 1 when not ready in time.
set -u
marker=1
[ "${1:-}" = --no-marker ] && marker=0
deadline=$((SECONDS + ${STACK_READY_TIMEOUT:-120}))
last=""

# GET through bash's /dev/tcp (no curl in the image); true when the answer is 200.
http_ok() {
  local status_line=""
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || { last="port $1 refuses connections"; return 1; }
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  IFS= read -r -t 10 status_line <&3 || true
  exec 3<&-
  status_line="${status_line%$'\r'}"
  last="GET :$1$2 answered '${status_line}'"
  [[ $status_line == "HTTP/1."[01]" 200 "* ]]
}

until http_ok 26701 '/health?db=1&redis=1' && http_ok 26700 /; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "stack-ready: the demo stack is not ready: $last" >&2
    [ "$marker" = 1 ] && printf '\nstackemu-demo: not ready: %s\n' "$last" >/dev/ttyS0
    exit 1
  fi
  sleep 0.2
done
if [ "$marker" = 1 ]; then
  printf '\nSTACK_EMULATOR_READY\n' >/dev/ttyS0
fi
echo "stack-ready: ready after ${SECONDS} s of checking"
