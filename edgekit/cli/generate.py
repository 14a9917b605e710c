"""The ``edgekit generate`` sub-command (wired into the CLI by ``add_commands``).

Example:
    $ edgekit generate runs/text_gpt/r/stages/04-int4/pruned-int4.onnx "The list type" --max-new-tokens 24
    $ edgekit generate lm.onnx 5,17,42 --ids --backend openvino --top-k 20 --seed 1 --json
"""
from __future__ import annotations

import argparse
import json

from edgekit.cli._args import bounded_int
from edgekit.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` to an argparse sub-parser set; it sets ``func=handler``.

    Example:
        >>> parser = argparse.ArgumentParser(prog="edgekit")
        >>> add_commands(parser.add_subparsers(dest="command"))
        >>> args = parser.parse_args(["generate", "lm.onnx", "def main", "--max-new-tokens", "8"])
    """
    from edgekit.backends import causal_lm_backends

    backends = causal_lm_backends(device=None)
    p = subparsers.add_parser(
        "generate", help="continue a prompt with an exported KV-cache causal LM (greedy or top-k)",
        description="Run a KV-cache causal-LM ONNX graph (export_causal_lm, or the .onnx files of a causal-LM "
                    "recipe run) with its cache and print the continuation. A text prompt is encoded with "
                    "--tokenizer, else with the tokenizer.json of the artifact's run directory.")
    p.add_argument("artifact", metavar="ARTIFACT", help="a KV-cache causal-LM .onnx file")
    p.add_argument("prompt", metavar="PROMPT", help="prompt text (or comma-separated token ids with --ids)")
    p.add_argument("--max-new-tokens", type=bounded_int("--max-new-tokens", 1, 1_000_000), default=32,
                   help="tokens to generate (default 32)")
    p.add_argument("--backend", choices=backends, default=None,
                   help=f"backend that decodes with the cache (default: {backends[0] if backends else 'none'})")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer.json (or a directory holding one); default: the run directory's")
    p.add_argument("--top-k", type=bounded_int("--top-k", 1, 10_000_000), default=None,
                   help="sample among the k most likely tokens (default: greedy)")
    p.add_argument("--seed", type=bounded_int("--seed", 0, 2**32 - 1), default=0, help="sampling seed (default 0)")
    p.add_argument("--threads", type=bounded_int("--threads", 1, 1024), default=2,
                   help="intra-op CPU threads (default 2)")
    p.add_argument("--ids", action="store_true", help="PROMPT is comma-separated token ids, e.g. 5,17,42")
    p.add_argument("--json", action="store_true", help="print the result (token ids, text, backend) as JSON")
    p.set_defaults(func=handler)


def _token_ids(text: str) -> list:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise ConfigError(f"--ids: PROMPT must be comma-separated non-negative token ids like 5,17,42; got "
                          f"'{text[:40]}'")
    return [int(t) for t in parts]


def handler(args: argparse.Namespace) -> int:
    """Generate and print the continuation (its text, or its token ids without a tokenizer)."""
    from edgekit.bench.generation import generate

    prompt = _token_ids(args.prompt) if args.ids else args.prompt
    out = generate(args.artifact, prompt, args.max_new_tokens, backend=args.backend, tokenizer=args.tokenizer,
                   top_k=args.top_k, seed=args.seed, threads=args.threads)
    if args.json:
        print(json.dumps(out.to_dict(), indent=2))
    else:
        print(out.text if out.text is not None else " ".join(str(t) for t in out.tokens))
    return 0
