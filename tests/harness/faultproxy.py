"""A TCP proxy on loopback that misbehaves on purpose: resets connections, delays them, and cuts responses after
the request went through (so the server processed it and the client never learns the answer)."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a dropped NAT entry or crashed middlebox would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # shutdown() also wakes the other pump thread blocked in recv() on this socket; close() alone would not.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    reset_rate: float = 0.1  # reset before forwarding anything
    delay_rate: float = 0.1  # hold the connection 50-300 ms first
    cut_rate: float = 0.15  # forward the request, then cut the response part-way
    seed: int = 1
    port: int = 0
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _pick(self) -> str:
        with self._lock:
            x = self._rng.random()
        if x < self.reset_rate:
            return "reset"
        if x < self.reset_rate + self.delay_rate:
            return "delay"
        if x < self.reset_rate + self.delay_rate + self.cut_rate:
            return "cut"
        return "pass"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        mode = self._pick()
        self.stats[mode] += 1
        if mode == "reset":
            _reset(client)
            return
        if mode == "delay":
            time.sleep(0.05 + self._rng.random() * 0.25)
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _reset(client)
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut_after = None
        if mode == "cut":
            with self._lock:
                cut_after = self._rng.choice([0, 1, 40, 200])  # bytes of the response let through
        up = threading.Thread(target=self._pump, args=(client, server, None), daemon=True)
        up.start()
        self._pump(server, client, cut_after)
        up.join(30)

    def _pump(self, src: socket.socket, dst: socket.socket, cut_after: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut_after is not None and sent + len(data) > cut_after:
                    dst.sendall(data[: max(0, cut_after - sent)])
                    self.stats["cut_done"] += 1
                    _reset(dst)
                    _reset(src)
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
