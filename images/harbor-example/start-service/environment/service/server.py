"""A tiny order service: GET /total answers the sum of the amounts in the configured orders file."""

import configparser
import csv
import http.server
import os

HERE = os.path.dirname(os.path.abspath(__file__))
config = configparser.ConfigParser()
config.read(os.path.join(HERE, "service.conf"))
section = config["service"]
with open(section["orders"], newline="") as f:  # fails at once if the file is not there
    TOTAL = sum(int(row["amount"]) for row in csv.DictReader(f))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/total":
            self.send_error(404)
            return
        body = ("%d\n" % TOTAL).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.HTTPServer((section["host"], int(section["port"])), Handler).serve_forever()
