"""The ``edgekit search`` sub-command (wired into the CLI by ``add_commands``).

Example:
    $ edgekit search recipes/digits_search.yaml --trials 12 --workers 2
    $ edgekit search recipes/digits_search.yaml --resume          # after an interruption
    $ edgekit search recipes/digits_search.yaml --ray 10.0.0.5:6379 --workers 8
"""
from __future__ import annotations

import argparse

from edgekit.cli._args import bounded_float, bounded_int
from edgekit.errors import ConfigError
from edgekit.search.strategies import STRATEGIES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``search`` to an argparse sub-parser set; it sets ``func=handler``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="edgekit")
        >>> add_commands(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["search", "recipes/digits_search.yaml", "--trials", "4"])
    """
    p = subparsers.add_parser(
        "search", help="search a recipe's stage fields for the fastest model within its constraints",
        description="Joint search over the fields the recipe's search.space names (student size, pruning target, "
                    "INT8 settings, KD weights ...): TPE over short fine-tunes first by default (a trial that already "
                    "cannot win stops there); "
                    "every trial is measured on the target backend (validation accuracy, latency as a paired "
                    "ratio vs the float model). Writes search.json/.csv, pareto.md/.png (re-measured on the test "
                    "split with CIs) and chosen/ (the fastest model within the constraints + a recipe that "
                    "reproduces it).")
    p.add_argument("recipe", help="a recipe YAML with a search: section")
    p.add_argument("--out", default=None, help="search directory (default: runs/<recipe name>/search)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out: finished trials are kept")
    p.add_argument("--trials", type=bounded_int("--trials", 1, 10_000_000), default=None,
                   help="override search.budget.trials")
    p.add_argument("--wall-time", type=bounded_float("--wall-time", 0, 1e7), default=None,
                   help="override search.budget.wall_time_s")
    p.add_argument("--workers", type=bounded_int("--workers", 1, 10_000_000), default=None,
                   help="trials at once (override search.workers); local processes, or Ray tasks with --ray")
    p.add_argument("--strategy", default=None, choices=STRATEGIES.names(), help="override search.strategy")
    p.add_argument("--seed", type=int, default=None,
                   help="sampler seed (override search.seed; the recipe's seed still drives data and training)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run trials on the Ray cluster at HOST:PORT (pip install 'edgekit[distributed]')")
    p.add_argument("--cache", default=None, help="stage cache directory shared by trials (default: <out>/cache)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=ARTIFACT",
                   help="also re-measure this artifact with the Pareto set (e.g. a hand-written recipe's result)")
    p.set_defaults(func=handler)


def _compare(items: list) -> dict:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--compare: expected NAME=ARTIFACT, got '{item}'")
        out[name] = path
    return out


def handler(args: argparse.Namespace) -> int:
    """Run the search described by parsed ``args``; print where everything went; return the exit code."""
    from edgekit.search import run_search

    result = run_search(args.recipe, out_dir=args.out, resume=args.resume, ray_address=args.ray,
                        cache_dir=args.cache, compare=_compare(args.compare), trials=args.trials,
                        wall_time_s=args.wall_time, workers=args.workers, strategy=args.strategy, seed=args.seed)
    print(f"search directory: {result.search_dir}")
    for line in result.summary:
        print(line)
    print(f"tables: {result.search_dir / 'search.csv'}, {result.search_dir / 'pareto.md'}; plot: "
          f"{result.search_dir / 'pareto.png'}")
    return 0
