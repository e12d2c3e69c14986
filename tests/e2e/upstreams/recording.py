"""Ordinary upstreams, as users run them, that record what reached them.

    python3 recording.py http LOG   # http.server, HTTP/1.1 keep-alive
    python3 recording.py wsgi LOG   # wsgiref (WSGI, CGI-style environ)

`http` is Python's http.server with protocol_version "HTTP/1.1": like many
hand-written servers it reads a body only by Content-Length and only for
methods that it expects to carry one, so the body of a GET is read as the
next request on the connection. `wsgi` is the standard library's WSGI server:
headers reach the application as HTTP_* variables, where `X_Sigma_Tenant`
and `X-Sigma-Tenant` are the same name.

Each request that reaches the application is appended to LOG as one JSON
line. The port is printed as `listening PORT` once the server is ready.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from socketserver import ThreadingMixIn

mode, log_path = sys.argv[1], sys.argv[2]
lock = threading.Lock()


def record(entry):
    with lock, open(log_path, "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


class Naive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        record({
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
        })
        if self.command in ("POST", "PUT", "PATCH"):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = handle_any

    def log_message(self, *args):
        pass


def wsgi_app(environ, start_response):
    record({
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "environ": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    })
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b'{"ok": true}']


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


if mode == "http":
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Naive)
elif mode == "wsgi":
    server = make_server("127.0.0.1", 0, wsgi_app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
else:
    sys.exit(f"unknown mode {mode}")

print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
