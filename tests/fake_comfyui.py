"""A loopback fake of a ComfyUI server's HTTP and websocket API, for the ComfyUI backend's tests.

``POST /upload/image`` (multipart), ``POST /prompt``, ``GET /history/{id}``, ``GET /view``,
``POST /interrupt`` and the ``/ws?clientId=`` websocket (RFC 6455 framing written here: text frames
out, the client's close frame answered). A queued prompt "runs" in a thread: it sends
``execution_start``, one ``progress`` message per step (``steps`` from the graph's KSampler, else 3)
and ``executing`` with node null, then records an output image whose size and colour come from the
graph's EmptyLatentImage and seed. With ``hold`` set it stops after the first step until
``/interrupt`` arrives, then sends ``execution_interrupted``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from PIL import Image

from fake_providers import _multipart

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # fixed by RFC 6455


def _frame(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    head = bytes([0x81])  # FIN + text
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + data


def _read_exact(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock`` (TCP may deliver a frame in pieces); ConnectionError when it closes."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One client frame (RFC 6455: masked, any length): its opcode and unmasked payload."""
    first, second = _read_exact(sock, 2)
    length = second & 0x7F
    if length in (126, 127):
        length = int.from_bytes(_read_exact(sock, 2 if length == 126 else 8), "big")
    mask = _read_exact(sock, 4) if second & 0x80 else b"\0\0\0\0"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(_read_exact(sock, length)))
    return first & 0x0F, payload


class ComfyFake:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body or form field names)
        self.uploads: dict[str, bytes] = {}
        self.graphs: list[dict[str, Any]] = []
        self.prompt_ids: list[str] = []
        self.history: dict[str, Any] = {}
        self.outputs: dict[str, bytes] = {}
        self.sockets: dict[str, socket.socket] = {}
        self._send_lock = threading.Lock()
        self.connected = threading.Event()
        self.hold = False
        self.interrupted = threading.Event()
        self.reject: dict[str, Any] | None = None  # answer the next /prompt with HTTP 400 and this body
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.requests.append(("GET", url.path, query))
                if url.path == "/ws":
                    return self._websocket(query["clientId"])
                if url.path.startswith("/history/"):
                    pid = url.path.removeprefix("/history/")
                    body = {pid: fake.history[pid]} if pid in fake.history else {}
                    return self._reply(200, json.dumps(body).encode())
                if url.path == "/view" and query.get("filename") in fake.outputs:
                    return self._reply(200, fake.outputs[query["filename"]], "image/png")
                self._reply(404, b"{}")

            def _websocket(self, client_id: str) -> None:
                accept = base64.b64encode(
                    hashlib.sha1((self.headers["sec-websocket-key"] + WS_GUID).encode()).digest()
                ).decode()
                sock = self.connection
                # Known before the handshake's answer, so that a prompt queued as soon as the client
                # has it always finds this socket for its progress messages.
                fake.sockets[client_id] = sock
                with fake._send_lock:
                    self.send_response(101)
                    self.send_header("upgrade", "websocket")
                    self.send_header("connection", "Upgrade")
                    self.send_header("sec-websocket-accept", accept)
                    self.end_headers()
                    self.wfile.flush()
                    sock.sendall(_frame(json.dumps({"type": "status", "data": {"sid": client_id}})))
                fake.connected.set()
                try:  # until the client's close frame or a dropped connection
                    while (opcode_payload := _read_frame(sock))[0] != 0x8:
                        if opcode_payload[0] == 0x9:  # a ping: answered with a pong of its payload
                            fake._send_raw(sock, bytes([0x8A, len(opcode_payload[1])]) + opcode_payload[1])
                    fake._send_raw(sock, bytes([0x88, 0x02, 0x03, 0xE8]))  # close, 1000
                except OSError:
                    pass
                fake.sockets.pop(client_id, None)
                self.close_connection = True

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                path = urlparse(self.path).path
                content_type = self.headers.get("content-type", "")
                if path == "/upload/image":
                    form = _multipart(content_type, body)
                    filename, data = form["image"][0]
                    assert filename is not None
                    fake.uploads[filename] = data
                    fake.requests.append(("POST", path, sorted(form)))
                    return self._reply(
                        200, json.dumps({"name": filename, "subfolder": "", "type": "input"}).encode()
                    )
                payload = json.loads(body or b"{}")
                fake.requests.append(("POST", path, payload))
                if path == "/interrupt":
                    fake.interrupted.set()
                    return self._reply(200, b"")
                if path == "/prompt":
                    if fake.reject is not None:
                        rejected, fake.reject = fake.reject, None
                        return self._reply(400, json.dumps(rejected).encode())
                    pid = str(uuid.uuid4())
                    fake.graphs.append(payload["prompt"])
                    fake.prompt_ids.append(pid)
                    threading.Thread(target=fake._run, args=(pid, payload), daemon=True).start()
                    return self._reply(
                        200, json.dumps({"prompt_id": pid, "number": 1, "node_errors": {}}).encode()
                    )
                self._reply(404, b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        sock = self.sockets.get(client_id)
        if sock is not None:
            self._send_raw(sock, _frame(json.dumps({"type": kind, "data": data})))

    def _send_raw(self, sock: socket.socket, data: bytes) -> None:
        """One whole frame on ``sock``: the prompt's thread and the websocket's handler both send."""
        with self._send_lock:
            sock.sendall(data)

    def _run(self, pid: str, payload: dict[str, Any]) -> None:
        graph, client_id = payload["prompt"], payload["client_id"]
        inputs = {n["class_type"]: n["inputs"] for n in graph.values()}
        steps = int(inputs.get("KSampler", {}).get("steps", 3))
        latent = inputs.get("EmptyLatentImage", {"width": 64, "height": 64})
        seed = int(inputs.get("KSampler", {}).get("seed", 0))
        self._send(client_id, "execution_start", {"prompt_id": pid})
        for step in range(1, steps + 1):
            self._send(client_id, "progress", {"value": step, "max": steps, "prompt_id": pid, "node": "3"})
            if self.hold:
                self.interrupted.wait(10)
                self._send(client_id, "execution_interrupted", {"prompt_id": pid, "node_id": "3"})
                return
        buf = io.BytesIO()
        Image.new("RGB", (int(latent["width"]), int(latent["height"])), (seed % 256, 90, 30)).save(buf, "PNG")
        name = f"mmcp_{pid[:8]}_00001_.png"
        self.outputs[name] = buf.getvalue()
        self.history[pid] = {
            "prompt": [1, pid, graph, {}, ["9"]],
            "outputs": {"9": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
        }
        self._send(client_id, "executing", {"node": None, "prompt_id": pid})

    def stop(self) -> None:
        self.interrupted.set()
        self.server.shutdown()
        self.server.server_close()
