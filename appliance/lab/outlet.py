"""The lab's fence device: switch one outlet of the emulated power strip, then exit.

Run by the agents as a ``command`` fence device (``outlet.py HOST:PORT NAME=CHANNEL,...
NODE off|on``), so it is kept to the standard library and started with ``python -S``: it sits on
the failover path, and importing the whole appliance would cost a few hundred milliseconds.
Exit status 0 once the strip confirms the outlet is in the requested state.
"""

import json
import sys
import urllib.parse
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[3] not in ("off", "on"):
        print("usage: outlet.py HOST:PORT NAME=CHANNEL,... NODE off|on", file=sys.stderr)
        return 2
    strip, mapping, node, action = argv
    channels = dict(item.split("=", 1) for item in mapping.split(","))
    if node not in channels:
        print(f"outlet.py: no outlet for node {node!r}", file=sys.stderr)
        return 2
    word = "On" if action == "on" else "Off"
    query = urllib.parse.urlencode({"cmnd": f"Power{channels[node]} {word}"})
    url = f"http://{strip}/cm?{query}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            reply = json.loads(resp.read())
    except (OSError, ValueError) as e:
        print(f"outlet.py: {url}: {e}", file=sys.stderr)
        return 1
    if reply.get(f"POWER{channels[node]}") != word.upper():
        print(f"outlet.py: the strip answered {reply}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
