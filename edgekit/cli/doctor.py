"""The ``edgekit doctor`` sub-command (wired into the CLI by ``add_commands``)."""
from __future__ import annotations

import argparse
import json
import sys


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``doctor`` to an argparse sub-parser set; it sets ``func=handler``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="edgekit")
        >>> add_commands(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["doctor", "--json"]); args.func(args)
    """
    p = subparsers.add_parser("doctor", help="which backends run here (and why not), GPU, CPU and versions",
                              description="Probe every registered backend and report its availability (with the "
                                          "reason when unavailable, version and devices when available), GPU, "
                                          "driver, optional runtimes, CPU ISA and versions.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--require", action="append", default=[], metavar="BACKEND",
                   help="exit with status 1 unless this backend is available (repeatable)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Print the doctor report; 0, or 1 when a ``--require``d backend is unavailable."""
    from edgekit.bench.doctor import doctor_report, format_report
    from edgekit.errors import ConfigError, did_you_mean

    report = doctor_report()
    status = {b["name"]: b for b in report["backends"]}
    for name in args.require:
        if name not in status:
            raise ConfigError(f"--require: unknown backend '{name}'{did_you_mean(name, status)}; "
                              f"valid: {', '.join(status)}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    missing = [n for n in args.require if not status[n]["available"]]
    for name in missing:
        print(f"required backend '{name}' is unavailable: {status[name]['reason']}", file=sys.stderr)
    return 1 if missing else 0
