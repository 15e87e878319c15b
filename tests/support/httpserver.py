"""A real HTTP server on 127.0.0.1 whose faults the tests choose.

It serves files from a directory with Range/ETag support like nginx, counts every
request per path, and can misbehave per path: fail with a status for the first N
requests, close the connection after N bytes, flip a byte, lie in Content-Length,
stall, dribble, redirect in a loop, or throttle (so a test can kill a client mid-body).
"""
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Fault:
    def __init__(self, status=None, times=None, cut_at=None, corrupt_at=None, length_delta=0,
                 stall_at=None, stall_for=3600, dribble=False, redirect=None, rate=None,
                 no_ranges=False, cut_times=None):
        self.status = status            # answer this status ...
        self.times = times              # ... for the first `times` requests (None: always)
        self.cut_at = cut_at            # close the connection after this many body bytes
        self.cut_times = cut_times      # ... only for the first `cut_times` requests
        self.corrupt_at = corrupt_at    # flip the byte at this offset
        self.length_delta = length_delta
        self.stall_at = stall_at        # stop sending (keep the socket open) at this offset
        self.stall_for = stall_for
        self.dribble = dribble          # one byte per second
        self.redirect = redirect        # Location to send (a 302)
        self.rate = rate                # bytes per second
        self.no_ranges = no_ranges      # ignore Range, answer 200


class Server:
    def __init__(self, root):
        self.root = root
        self.faults = {}
        self.requests = []              # (method, path, range header)
        self.stalls = []                # (path, body offset) of each stall begun
        self.lock = threading.Lock()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def gets(self, name):
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == "GET" and p == "/" + name)

    def ranged_gets(self, name):
        with self.lock:
            return [r for m, p, r in self.requests if m == "GET" and p == "/" + name and r]

    def add_file(self, name, data):
        with open(os.path.join(self.root, name), "wb") as f:
            f.write(data)
        return hashlib.sha256(data).hexdigest()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.lstrip("/")
            with server.lock:
                server.requests.append(("GET", self.path, self.headers.get("Range")))
                nth = sum(1 for m, p, _ in server.requests if p == self.path)
            fault = server.faults.get(name) or Fault()
            if fault.redirect:
                self.send_response(302)
                self.send_header("Location", fault.redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault.status and (fault.times is None or nth <= fault.times):
                self.send_response(fault.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = os.path.join(server.root, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = '"%s"' % hashlib.md5(data).hexdigest()
            start = 0
            rng = self.headers.get("Range")
            if rng and not fault.no_ranges and self.headers.get("If-Range") in (None, etag):
                start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = bytearray(data[start:])
            if fault.corrupt_at is not None and fault.corrupt_at >= start:
                body[fault.corrupt_at - start] ^= 0xFF
            self.send_header("Content-Length", str(len(body) + fault.length_delta))
            self.send_header("ETag", etag)
            if not fault.no_ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self._send_body(memoryview(body), start, fault, nth)

        def _send_body(self, body, start, fault, nth):
            pos = start
            chunk = 64 << 10
            cut = fault.cut_at if (fault.cut_times is None or nth <= fault.cut_times) else None
            try:
                while body:
                    if fault.dribble:
                        n = 1
                    else:
                        n = min(chunk, len(body))
                    if cut is not None and pos + n > cut:
                        n = max(cut - pos, 0)
                        self.wfile.write(body[:n])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if fault.stall_at is not None and pos + n > fault.stall_at:
                        n = max(fault.stall_at - pos, 0)
                        self.wfile.write(body[:n])
                        self.wfile.flush()
                        with server.lock:
                            server.stalls.append((self.path, pos + n))
                        time.sleep(fault.stall_for)
                        self.close_connection = True
                        return
                    self.wfile.write(body[:n])
                    body = body[n:]
                    pos += n
                    if fault.dribble:
                        self.wfile.flush()
                        time.sleep(1)
                    elif fault.rate:
                        time.sleep(n / fault.rate)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler
