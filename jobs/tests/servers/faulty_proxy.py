"""An HTTP proxy that injects faults between steerflow and a server: an object store, or a
model server (tests only).

usage: faulty_proxy.py LISTEN_PORT UPSTREAM_PORT [--fail-every N] [--reset-every N]
       [--throttle-every N] [--slow-every N --slow-seconds S] [--drop-create-replies]
       [--down-after N]

--fail-every N        every N-th request is answered 503 SlowDown without reaching the store
--throttle-every N    every N-th request is answered 429 with `Retry-After: 1`
--reset-every N       every N-th request: the connection is closed with no reply
--slow-every N        every N-th request waits S seconds before it is forwarded
--drop-create-replies a conditional create (If-None-Match: *) reaches the store, then its
                      reply is dropped (the connection closed): the client cannot know it won
--down-after N        after N requests, every request is answered 503 (an outage)
Prints the port when listening; counts of injected faults go to stderr on exit.
"""
import argparse, http.client, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("listen", type=int)
    p.add_argument("upstream", type=int)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--reset-every", type=int, default=0)
    p.add_argument("--throttle-every", type=int, default=0)
    p.add_argument("--slow-every", type=int, default=0)
    p.add_argument("--slow-seconds", type=float, default=0.0)
    p.add_argument("--drop-create-replies", action="store_true")
    p.add_argument("--down-after", type=int, default=0)
    args = p.parse_args()
    lock = threading.Lock()
    state = {"n": 0, "faults": {}}

    def count(kind):
        state["faults"][kind] = state["faults"].get(kind, 0) + 1
        sys.stderr.write(f"faulty_proxy: {kind}\n")
        sys.stderr.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                state["n"] += 1
                n = state["n"]
            if args.down_after and n > args.down_after:
                count("outage-503")
                return self.reply(503, b"<Error><Code>ServiceUnavailable</Code></Error>")
            if args.fail_every and n % args.fail_every == 0:
                count("503")
                return self.reply(503, b"<Error><Code>SlowDown</Code></Error>")
            if args.throttle_every and n % args.throttle_every == 0:
                count("429")
                return self.reply(429, b'{"error": "rate limited"}', [("Retry-After", "1")])
            if args.reset_every and n % args.reset_every == 0:
                count("reset")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if args.slow_every and n % args.slow_every == 0:
                count("slow")
                time.sleep(args.slow_seconds)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            up = http.client.HTTPConnection("127.0.0.1", args.upstream, timeout=300)
            up.request(self.command, self.path, body=body, headers=headers)
            resp = up.getresponse()
            data = resp.read()
            create = self.headers.get("If-None-Match") == "*" and self.command == "PUT"
            if args.drop_create_replies and create and resp.status < 300:
                count("lost-create-reply")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    server = ThreadingHTTPServer(("127.0.0.1", args.listen), Handler)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    finally:
        sys.stderr.write(f"faulty_proxy: faults {state['faults']}\n")


if __name__ == "__main__":
    main()
