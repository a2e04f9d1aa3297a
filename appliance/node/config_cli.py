"""``appliance config check FILE [--key KEY]``: validate a cluster file (and a key file)."""

from __future__ import annotations

import argparse
import sys

from appliance.node.config import ConfigError, load_config, load_key


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appliance config", description="Work with the cluster configuration file."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="validate FILE and report every problem",
        description="Validate FILE (and the key file, with --key) and report every problem "
        "as FILE:KEY: VALUE; expected WHAT. Exit status 0 if valid, 1 if not.",
    )
    check.add_argument("file", metavar="FILE", help="the cluster TOML file")
    check.add_argument(
        "--key",
        metavar="KEY",
        help="also check this key file (mode 0600, at least 16 bytes, hex or raw)",
    )
    return p


def config_main(args: list[str]) -> int:
    try:
        ns = _parser().parse_args(args)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else 2
    problems: list[str] = []
    cfg = None
    try:
        cfg = load_config(ns.file)
    except ConfigError as e:
        problems.extend(e.problems)
    key: bytes | None = None
    if ns.key is not None:
        try:
            key = load_key(ns.key)
        except ConfigError as e:
            problems.extend(e.problems)
    if cfg is not None and key is not None:
        try:
            cfg.protocol_config(key)
        except ValueError as e:
            problems.append(f"{ns.file}: {e}")
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        n = len(problems)
        print(f"{ns.file}: {n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
        return 1
    assert cfg is not None
    print(
        f"{ns.file}: ok ({len(cfg.nodes)} node{'s' if len(cfg.nodes) != 1 else ''}, "
        f"multicast {cfg.multicast_group}:{cfg.port}, replication {cfg.replication.value})"
    )
    if key is not None:
        print(f"{ns.key}: ok ({len(key)}-byte key)")
    return 0
