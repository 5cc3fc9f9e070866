#!/usr/bin/env python3
"""Usage-webhook receiver for scripts/bench-delivery.sh: counts records and the time from the first
to the last one. --delay-ms: sleep before answering (a slow receiver). --nagle: answer like a plain
http.server handler (head and body in two writes, no TCP_NODELAY), the receiver that stalls a client
on Nagle + delayed ACK; otherwise head and body go out in one write. Keep-alive (HTTP/1.1),
one thread per connection. On SIGTERM prints {"records":N,"first":t0,"last":t1} and exits."""
import argparse, json, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--delay-ms", type=float, default=0)
ap.add_argument("--nagle", action="store_true")
a = ap.parse_args()
lock = threading.Lock()
st = {"records": 0, "first": None, "last": None}


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if a.delay_ms:
            time.sleep(a.delay_ms / 1000)
        n = body.count(b'"request_id"')
        now = time.time()
        with lock:
            st["records"] += n
            st["first"] = st["first"] or now
            st["last"] = now
        out = b'{"ok":true}'
        if a.nagle:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()  # first write: the head
            self.wfile.write(out)  # second write: the body
        else:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out)
            self.wfile.write(head + out)


srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
srv.daemon_threads = True


def stop(*_):
    with lock:
        print(json.dumps(st), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while True:
    time.sleep(3600)
