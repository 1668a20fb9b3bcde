#!/usr/bin/python3
"""stackemu demo backend: a small HTTP service on 0.0.0.0:26701 (Python standard library).

GET /health            200 {"status": "ok"} while the process runs
GET /health?db=1       runs a query on PostgreSQL: 200 with what it read, 503 when it fails
GET /health?redis=1    sends PING to Redis: 200 or 503
Any other path is 404. PostgreSQL is reached over its Unix socket with peer authentication as
the system user this runs as (stackapp): there is no password.
"""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg2

PORT = int(os.environ.get("STACK_BACKEND_PORT", "26701"))
DATABASE = os.environ.get("STACK_DATABASE", "stackapp")
REDIS = ("127.0.0.1", 6379)
STARTED = time.time()


def check_database():
    started = time.monotonic()
    try:
        # dbname only: libpq uses the Unix socket in /var/run/postgresql.
        conn = psycopg2.connect(dbname=DATABASE, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*), max(created)::text, current_setting('server_version')"
                            " FROM stack_health")
                rows, last, version = cur.fetchone()
        finally:
            conn.close()
        return True, {"reachable": True, "rows": rows, "last_note_at": last,
                      "server_version": version,
                      "query_ms": round((time.monotonic() - started) * 1000, 1)}
    except psycopg2.Error as e:
        return False, {"reachable": False, "error": str(e).strip()}


def check_redis():
    try:
        with socket.create_connection(REDIS, timeout=5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
        ok = reply.startswith(b"+PONG")
        return ok, {"reachable": ok, "reply": reply.decode("ascii", "replace").strip()}
    except OSError as e:
        return False, {"reachable": False, "error": str(e)}


class Handler(BaseHTTPRequestHandler):
    server_version = "stackemu-demo-backend/1"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != "/health":
            self.reply(404, {"status": "not found", "path": url.path})
            return
        query = parse_qs(url.query)
        body = {"status": "ok", "uptime_s": round(time.time() - STARTED, 1)}
        healthy = True
        if query.get("db", ["0"])[0] not in ("", "0"):
            ok, body["db"] = check_database()
            healthy = healthy and ok
        if query.get("redis", ["0"])[0] not in ("", "0"):
            ok, body["redis"] = check_redis()
            healthy = healthy and ok
        if not healthy:
            body["status"] = "error"
        self.reply(200 if healthy else 503, body)

    def reply(self, code, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def notify_ready():
    """Tells systemd (Type=notify) that the port is listening."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(b"READY=1")


def main():
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    notify_ready()
    server.serve_forever()


if __name__ == "__main__":
    main()
