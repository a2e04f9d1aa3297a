"""The ``appliance`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: appliance sim [--seed N | --seeds N] [--trace]")
        print("  sim   deterministic simulation of the protocol core under random faults")
        print("  config check FILE [--key KEY]   validate the cluster file (and the key file)")
        print("  agent --config FILE [--key KEY] [--node NAME] [--log-level LEVEL]   run a node")
        print("  lab up|status|pull-power|power-on|freeze|thaw|down   the cluster on this machine")
        return 0
    if args[0] == "config":
        from appliance.node.config_cli import config_main

        return config_main(args[1:])
    if args[0] == "agent":
        from appliance.node.agent import agent_main

        return agent_main(args[1:])
    if args[0] == "lab":
        from appliance.lab.cli import lab_main

        return lab_main(args[1:])
    if args[0] == "sim":
        from appliance.sim.runner import main as sim_main

        return sim_main(args[1:])
    print(f"appliance: unknown command {args[0]!r} (try --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
