"""Real HTTP servers on 127.0.0.1 speaking the smart-plug APIs the fence devices use.

* Tasmota: ``GET /cm?[user=U&password=P&]cmnd=Power[N][%20On|%20Off]`` answering
  ``{"POWERN":"ON"}``; wrong credentials get HTTP 401 with Tasmota's ``WARNING`` body.
* Shelly Gen2: ``GET /rpc/Switch.Set?id=N&on=true|false`` (``{"was_on": ...}``) and
  ``/rpc/Switch.GetStatus?id=N`` (``{"id": N, "output": ...}``), with RFC 7616 SHA-256 digest
  authentication when a password is set. The digest check here is written independently of
  the client's code, from the RFC.

Faults: ``lie`` (the plug answers Power Off with ON and stays on), ``delay`` (every reply waits
that long, for timeouts), ``nonce_ttl`` (Shelly nonces expire after that many uses).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from appliance.lab.power_strip import send_json


@dataclass
class PlugState:
    outlets: dict[int, bool] = field(default_factory=lambda: {1: True, 2: True})
    user: str | None = None
    password: str | None = None
    lie: bool = False
    delay: float = 0.0
    nonce_ttl: int = 1000
    paths: list[str] = field(default_factory=list)
    """Every request's raw path, in order."""
    auth_headers: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    """Set at teardown so that delayed handlers stop waiting."""
    nonces: dict[str, int] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        st = self.server.plug
        st.paths.append(self.path)
        st.auth_headers.append(self.headers.get("Authorization"))
        if st.delay and st.release.wait(st.delay):
            return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/cm":
            self.tasmota(st, query)
        elif url.path.startswith("/rpc/"):
            self.shelly(st, url.path[len("/rpc/") :], query)
        else:
            self.reply(404, {"error": "not found"})

    def reply(self, status: int, doc: object, headers: dict[str, str] | None = None) -> None:
        send_json(self, status, doc, headers)

    # Tasmota ------------------------------------------------------------------------------

    def tasmota(self, st: PlugState, query: dict[str, str]) -> None:
        if st.password is not None and (
            query.get("user") != st.user or query.get("password") != st.password
        ):
            self.reply(401, {"WARNING": "Need user=<username>&password=<password>"})
            return
        m = re.fullmatch(r"(?i)power(\d*)(?: (on|off))?", query.get("cmnd", ""))
        if m is None:
            self.reply(200, {"Command": "Unknown"})
            return
        channel = int(m[1] or 1)
        if channel not in st.outlets:
            self.reply(200, {"Command": "Unknown"})
            return
        if m[2] is not None:
            want = m[2].lower() == "on"
            st.outlets[channel] = True if st.lie else want
        key = f"POWER{m[1]}"
        self.reply(200, {key: "ON" if st.outlets[channel] else "OFF"})

    # Shelly -------------------------------------------------------------------------------

    def shelly(self, st: PlugState, method: str, query: dict[str, str]) -> None:
        if st.password is not None and not self.digest_ok(st):
            nonce = secrets.token_hex(8)
            st.nonces[nonce] = 0
            challenge = (
                f'Digest qop="auth", realm="shellyplus1pm-test", nonce="{nonce}", algorithm=SHA-256'
            )
            self.reply(
                401, {"code": 401, "message": "unauthorized"}, {"WWW-Authenticate": challenge}
            )
            return
        try:
            sid = int(query["id"])
        except (KeyError, ValueError):
            self.reply(400, {"code": -103, "message": "Invalid argument 'id'"})
            return
        if sid not in st.outlets:
            self.reply(500, {"code": -105, "message": f"Argument 'id', value {sid} not found!"})
            return
        if method == "Switch.Set":
            was_on = st.outlets[sid]
            st.outlets[sid] = True if st.lie else query.get("on") == "true"
            self.reply(200, {"was_on": was_on})
        elif method == "Switch.GetStatus":
            self.reply(200, {"id": sid, "source": "http", "output": st.outlets[sid]})
        else:
            self.reply(404, {"code": 404, "message": f"No handler for {method}"})

    def digest_ok(self, st: PlugState) -> bool:
        header = self.headers.get("Authorization")
        if not header or not header.startswith("Digest "):
            return False
        params = dict(
            (m[1], m[2] if m[2] is not None else m[3])
            for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header[len("Digest ") :])
        )
        nonce = params.get("nonce", "")
        uses = st.nonces.get(nonce)
        if uses is None or uses >= st.nonce_ttl or params.get("uri") != self.path:
            return False
        st.nonces[nonce] = uses + 1

        def sha(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        ha1 = sha(f"admin:shellyplus1pm-test:{st.password}")
        ha2 = sha(f"GET:{self.path}")
        expected = sha(f"{ha1}:{nonce}:{params.get('nc')}:{params.get('cnonce')}:auth:{ha2}")
        return params.get("response") == expected


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    plug: PlugState


@contextmanager
def plug_server(state: PlugState | None = None) -> Iterator[tuple[str, PlugState]]:
    """A plug on 127.0.0.1; yields its base URL and its state."""
    st = state if state is not None else PlugState()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.plug = st
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", st
    finally:
        st.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
