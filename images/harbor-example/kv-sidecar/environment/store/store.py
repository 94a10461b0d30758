"""A tiny key-value store: GET /get?key=K, POST /set?key=K&value=V; seeded from STORE_SEED (k=v,k=v)."""

import http.server
import os
import urllib.parse

DATA = dict(item.split("=", 1) for item in os.environ.get("STORE_SEED", "").split(",") if "=" in item)


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        key = urllib.parse.parse_qs(url.query).get("key", [""])[0]
        if url.path == "/get" and key in DATA:
            self.answer(200, DATA[key])
        else:
            self.answer(404, "no such key")

    def do_POST(self) -> None:
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != "/set" or "key" not in query or "value" not in query:
            self.answer(400, "POST /set?key=NAME&value=VALUE")
            return
        DATA[query["key"][0]] = query["value"][0]
        self.answer(200, "ok")


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("STORE_PORT", "8080"))), Handler).serve_forever()
