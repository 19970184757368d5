"""A webhook receiver whose receipts can be read back: what the `alert-routing` probe's
`receiptUrl` points at, behind an Alertmanager `webhook_configs` receiver.

    python -m adapters.probes.webhook_sink --listen 127.0.0.1:9095 [--keep 1000]

POST (any path): the JSON body is kept (the newest `--keep`), with the path and the time.
GET (any path): `{"received": [{"path": ..., "at": ..., "payload": ...}, ...]}`, oldest
first. Meant for a lab or a site's verification receiver, beside the real ones: it keeps
notifications in memory only.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import json
import threading
import time
from typing import Any


class Sink(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], keep: int = 1000) -> None:
        super().__init__(address, _Handler)
        self.lock = threading.Lock()
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Sink

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 4 << 20))
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode(errors="replace")
        with self.server.lock:
            self.server.received.append({"path": self.path, "at": time.time(), "payload": payload})
        self._send(200, b"{}")

    def do_GET(self) -> None:
        with self.server.lock:
            doc = {"received": list(self.server.received)}
        self._send(200, json.dumps(doc).encode())

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m adapters.probes.webhook_sink")
    parser.add_argument("--listen", default="127.0.0.1:9095", help="HOST:PORT")
    parser.add_argument("--keep", type=int, default=1000, help="notifications kept")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    sink = Sink((host or "127.0.0.1", int(port)), keep=args.keep)
    print(f"webhook sink on {sink.url}", flush=True)
    try:
        sink.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sink.server_close()


if __name__ == "__main__":
    main()
