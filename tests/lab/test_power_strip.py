"""The emulated strip's Tasmota command set, which the lab and the system test's strip share."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from appliance.lab.power_strip import tasmota_command, tasmota_handler


class Outlets:
    """Two outlets, both on; every switch is recorded."""

    def __init__(self) -> None:
        self.on = {1: True, 2: True}
        self.switched: list[tuple[int, bool]] = []

    def command(self, cmnd: str) -> dict[str, str]:
        return tasmota_command(cmnd, 2, self.on.__getitem__, self.switch)

    def switch(self, index: int, on: bool) -> None:
        self.on[index] = on
        self.switched.append((index, on))


@pytest.mark.parametrize(
    ("cmnd", "reply", "switched"),
    [
        ("Power1", {"POWER1": "ON"}, []),
        ("Power", {"POWER": "ON"}, []),  # a single-relay plug's spelling: outlet 1
        ("Power2 Off", {"POWER2": "OFF"}, [(2, False)]),
        ("power2 0", {"POWER2": "OFF"}, [(2, False)]),
        ("Power1 Toggle", {"POWER1": "OFF"}, [(1, False)]),
        ("Power1 On", {"POWER1": "ON"}, [(1, True)]),
        ("Power3 Off", {"Command": "Unknown"}, []),
        ("Power0", {"Command": "Unknown"}, []),
        ("Powerx", {"Command": "Unknown"}, []),
        ("Power1 Blink", {"Command": "Unknown"}, []),
        ("Status", {"Command": "Unknown"}, []),
    ],
)
def test_commands_answer_as_tasmota(
    cmnd: str, reply: dict[str, str], switched: list[tuple[int, bool]]
) -> None:
    outlets = Outlets()
    assert outlets.command(cmnd) == reply
    assert outlets.switched == switched


def test_toggle_switches_an_off_outlet_on() -> None:
    outlets = Outlets()
    outlets.on[2] = False
    assert outlets.command("Power2 2") == {"POWER2": "ON"}
    assert outlets.switched == [(2, True)]


def test_handler_serves_commands_views_and_404s() -> None:
    outlets = Outlets()
    handler = tasmota_handler(outlets.command, {"/lab/state": lambda: {"outlets": 2}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path: str) -> tuple[int, str, object]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], json.loads(e.read())

    try:
        assert get("/cm?cmnd=Power1%20Off") == (200, "application/json", {"POWER1": "OFF"})
        assert get("/lab/state") == (200, "application/json", {"outlets": 2})
        assert get("/nope") == (404, "application/json", {"error": "no such path /nope"})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
