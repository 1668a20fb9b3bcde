#!/usr/bin/python3
"""stackemu demo dashboard: a static page on 0.0.0.0:26700 (Python standard library).

GET /                  the page (index.html)
GET /api/health        the backend's /health?db=1&redis=1, fetched inside the guest, so the page
                       works whatever host ports the VM's forwards use
"""

import os
import socket
import sys
import urllib.error
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("STACK_DASHBOARD_PORT", "26700"))
BACKEND = os.environ.get("STACK_BACKEND_URL", "http://127.0.0.1:26701")
ROOT = os.environ.get("STACK_DASHBOARD_ROOT", "/opt/stackemu-demo/dashboard")


class Handler(SimpleHTTPRequestHandler):
    server_version = "stackemu-demo-dashboard/1"

    def do_GET(self):
        if self.path.split("?", 1)[0] == "/api/health":
            self.proxy_health()
            return
        super().do_GET()

    def proxy_health(self):
        try:
            with urllib.request.urlopen(BACKEND + "/health?db=1&redis=1", timeout=10) as r:
                code, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, data = e.code, e.read()
        except OSError as e:
            code, data = 502, ('{"status": "error", "backend": "%s"}\n' % e).encode()
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
    server = ThreadingHTTPServer(("0.0.0.0", PORT), partial(Handler, directory=ROOT))
    server.daemon_threads = True
    notify_ready()
    server.serve_forever()


if __name__ == "__main__":
    main()
