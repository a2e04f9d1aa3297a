"""Two versions of the appliance side by side: is a change faster, on this noisy machine?

``python -m benchmarks.ab REV_A [REV_B] [--nodes 3] [--writes 1000] [--rounds 8]`` checks
each revision out in a temporary git worktree (``REV_B`` defaults to the working tree), starts
one lab of each at once, and alternates batches of sequential ``SET``s between them (A then B,
then B then A, ...), so that whatever else the shared cores are doing falls on both alike. It
prints each batch's p50 and each version's median of them, and the agents' CPU per write
(all the lab's agents, from ``/proc``), and writes the figures as JSON with ``--out``.

A difference smaller than the spread of the batches is noise: run it again before believing
it (``docs/performance.md`` records what the A/B runs of past changes showed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.client import connect, sequential_writes
from benchmarks.lab import Lab
from benchmarks.resources import cpu_while

__all__ = ["compare", "main"]

WARM_UP = 300
"""Writes to each lab before the first batch (connections, caches, the first views)."""


@contextlib.contextmanager
def checkout(rev: str | None, workdir: Path) -> Iterator[Path]:
    """The source tree of ``rev`` (a temporary worktree), or of the working tree if None."""
    root = Path(__file__).resolve().parent.parent
    if rev is None:
        yield root
        return
    path = workdir / f"rev-{rev.replace('/', '_')}"
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", "-f", str(path), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )


def _lab(tree: Path, workdir: Path, nodes: int, replication: str) -> Lab:
    """A lab whose agents import the appliance from ``tree`` (they inherit PYTHONPATH)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)
    try:
        return Lab(workdir, nodes, replication)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def compare(
    trees: dict[str, Path], nodes: int, writes: int, rounds: int, replication: str
) -> dict[str, Any]:
    """Alternating batches on one lab per tree; each version's p50s and CPU per write."""
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        labs: dict[str, Lab] = {}
        try:
            for name, tree in trees.items():
                labs[name] = _lab(tree, Path(tmp), nodes, replication)
            clients = {}
            for name, lab in labs.items():
                clients[name] = connect("127.0.0.1", lab.port(lab.wait_formed()))
                sequential_writes(clients[name], WARM_UP, "ab-warm")
            p50: dict[str, list[float]] = {name: [] for name in labs}
            cpu: dict[str, list[float]] = {name: [] for name in labs}
            order = list(labs)
            for i in range(rounds):
                for name in order if i % 2 == 0 else order[::-1]:
                    lat, spent, _ = cpu_while(
                        labs[name].agent_pids(),
                        functools.partial(sequential_writes, clients[name], writes, f"ab-{i}"),
                    )
                    p50[name].append(round(statistics.median(lat) * 1000, 3))
                    cpu[name].append(round(sum(spent.values()) / writes * 1000, 3))
        finally:
            for lab in labs.values():
                lab.close()
    return {
        name: {
            "p50_ms_per_batch": p50[name],
            "p50_ms": round(statistics.median(p50[name]), 3),
            "cpu_ms_per_write": round(statistics.median(cpu[name]), 3),
        }
        for name in trees
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    p.add_argument("a", metavar="REV_A", help="a git revision (A)")
    p.add_argument("b", metavar="REV_B", nargs="?", help="another (B; default: the working tree)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--writes", type=int, default=1000, help="sequential SETs per batch")
    p.add_argument("--rounds", type=int, default=8, help="batches per version")
    p.add_argument("--replication", default="semi-active")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.writes < 1 or args.rounds < 1:
        p.error("--nodes, --writes and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ab-trees-") as tmp, contextlib.ExitStack() as stack:
        try:
            trees = {
                f"A {args.a}": stack.enter_context(checkout(args.a, Path(tmp))),
                f"B {args.b or 'working tree'}": stack.enter_context(checkout(args.b, Path(tmp))),
            }
        except subprocess.CalledProcessError as e:
            print(f"cannot check out {e.cmd[-1]}: {e.stderr.decode().strip()}", file=sys.stderr)
            return 2
        result = compare(trees, args.nodes, args.writes, args.rounds, args.replication)
    for name, r in result.items():
        batches = " ".join(f"{x:.3f}" for x in r["p50_ms_per_batch"])
        print(
            f"{name}: p50 {r['p50_ms']:.3f} ms (batches {batches}), "
            f"agent CPU {r['cpu_ms_per_write']:.3f} ms per write"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
