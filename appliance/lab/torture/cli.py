"""``appliance lab torture``: a seeded fault run against a fresh lab, with its report.

The short run ``make test`` does is ``--count`` faults of every kind; a soak is
``--duration 1800``. The schedule, the replay command and the verdicts are printed, and the
report (JSON) and the history (JSON lines) are written to ``--out``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from appliance.lab import netns
from appliance.lab.torture.nemesis import PROCESS_FAULTS, Fault

__all__ = ["add_arguments", "parse_faults", "torture"]


def parse_faults(text: str, netns_lab: bool) -> tuple[Fault, ...]:
    """``all``, ``process`` or a comma-separated list of fault names."""
    if text == "all":
        return tuple(Fault) if netns_lab else PROCESS_FAULTS
    if text == "process":
        return PROCESS_FAULTS
    out = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        try:
            f = Fault(name)
        except ValueError:
            known = ", ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {name!r} (known: all, process, {known})") from None
        if f.needs_netns and not netns_lab:
            raise ValueError(f"fault {name} needs a netns lab: add --netns (as root)")
        out.append(f)
    if not out:
        raise ValueError("--faults names no fault")
    return tuple(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    p.add_argument(
        "--faults",
        default="all",
        help="all (netns ones with --netns), process, or a list such as "
        "pull-power-primary,freeze-primary",
    )
    p.add_argument(
        "--count", type=int, default=None, help="faults in the run (default: 2 per kind)"
    )
    p.add_argument("--duration", type=float, default=None, help="soak: seconds of faults")
    p.add_argument("--replication", choices=["semi-active", "semi-passive"], default="semi-active")
    p.add_argument("--netns", action="store_true", help="nodes in network namespaces (root)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="where report.json and history go")


def torture(args: argparse.Namespace) -> int:
    from appliance.lab.torture.runner import RunConfig, run

    if args.netns and (why := netns.available()) is not None:
        raise ValueError(why)
    faults = parse_faults(args.faults, args.netns)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    config = RunConfig(
        seed=seed,
        faults=faults,
        count=args.count if args.count is not None else 2 * len(faults),
        replication=args.replication,
        netns=args.netns,
        nodes=args.nodes,
        duration_s=args.duration,
        out_dir=args.out,
    )
    report = run(config, log=lambda line: print(line, flush=True))
    print()
    print(report.render())
    print(f"\nreport: {report.report_path}\nhistory: {report.history_path}")
    return 0 if report.ok else 1
