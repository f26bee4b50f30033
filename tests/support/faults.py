"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real server (the S3 server in tests): each request takes
the next fault of a schedule (reset the connection, answer 503, stall, cut the body short) or passes through.

Written by hand because the faults must hit real sockets between a real client (s3fs/botocore) and a real
server; a mock of either side would not show how the client's retries and our cache behave.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAULTS = ("ok", "reset", "503", "stall", "truncate")


@dataclass
class Schedule:
    """Faults for the requests that match `path_contains` (others pass), consumed in order, then `rest` for the
    matching requests after them."""

    faults: list[str]
    path_contains: str = ""
    rest: str = "ok"
    stall_s: float = 5.0
    seen: list[tuple[str, str]] = field(default_factory=list)  # (request line, fault applied)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, request_line: str) -> str:
        """The fault for this request (recorded)."""
        with self.lock:
            fault = "ok"
            if self.path_contains in request_line:
                fault = self.faults.pop(0) if self.faults else self.rest
            self.seen.append((request_line, fault))
            return fault


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Bytes up to the end of an HTTP head, and what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _length(head: bytes) -> int:
    """The Content-Length of an HTTP head (0 when absent)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _recv_exact(sock: socket.socket, have: bytes, n: int) -> bytes:
    while len(have) < n:
        chunk = sock.recv(min(65536, n - len(have)))
        if not chunk:
            break
        have += chunk
    return have


def _close_header(head: bytes) -> bytes:
    """The head with `Connection: close` (each request gets its own upstream connection and client reply)."""
    lines = [x for x in head.rstrip(b"\r\n").split(b"\r\n") if not x.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _serve(client: socket.socket, upstream: tuple[str, int], schedule: Schedule) -> None:
    """One client connection: one request, with its fault."""
    try:
        head, rest = _read_head(client)
        if not head:
            return
        body = _recv_exact(client, rest, _length(head))
        line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        fault = schedule.next(line)
        if fault == "reset":
            _reset(client)
            return
        if fault == "503":
            msg = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: "
                           + str(len(msg)).encode() + b"\r\nConnection: close\r\n\r\n" + msg)
            return
        if fault == "stall":
            time.sleep(schedule.stall_s)
        with socket.create_connection(upstream, timeout=30) as up:
            up.sendall(_close_header(head) + body)
            reply_head, reply_rest = _read_head(up)
            n = _length(reply_head)
            if fault == "truncate" and n > 1:
                client.sendall(reply_head + _recv_exact(up, reply_rest, n // 2)[: n // 2])
                _reset(client)
                return
            client.sendall(_close_header(reply_head) + reply_rest)
            while chunk := up.recv(65536):
                client.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            client.close()
        except OSError:
            pass


@contextmanager
def fault_proxy(upstream_url: str, schedule: Schedule) -> Iterator[str]:
    """A proxy on a free 127.0.0.1 port in front of `upstream_url`; yields its URL, stopped on exit."""
    target = urlsplit(upstream_url)
    upstream = (target.hostname or "127.0.0.1", target.port or 80)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(30)
            threading.Thread(target=_serve, args=(client, upstream, schedule), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
