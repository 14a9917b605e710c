"""``edgekit.generate``: continue a prompt with an exported KV-cache causal LM, greedy or seeded top-k.

The artifact is what :func:`edgekit.export.causal_lm.export_causal_lm` writes (a causal-LM recipe writes them under
``runs/<name>/<run>/stages/...``, with the run's ``tokenizer.json`` in the run directory). It runs with its cache on
any backend with a ``causal_lm`` session hook (``edgekit.backends.causal_lm_backends()``: ONNX Runtime CPU by
default, OpenVINO), through the same decoding loop as the benchmarks (:func:`edgekit.bench.decode.generate`).

Everything a user can get wrong is checked before a session opens: the backend, the file (an ONNX KV-cache LM
graph), the tokenizer (found, and with the model's vocabulary), the prompt (token ids inside the vocabulary, not
empty), ``max_new_tokens`` > 0 and the prompt plus the new tokens within the model's context.

Example:
    >>> out = edgekit.generate("runs/text_gpt/r/stages/04-int4/pruned-int4.onnx", "The list type", 24)
    >>> out.text                      # the tokenizer.json of the run directory decodes the new tokens
    >>> edgekit.generate("lm.onnx", [5, 17, 42], 8, top_k=20, seed=1).tokens
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from edgekit.errors import ConfigError, InputFileError, ShapeError

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
RUN_MARKER = "manifest.json"  # a run directory holds one; the tokenizer search stops there


@dataclass(frozen=True)
class Generation:
    """What :func:`generate` returns: the new token ids and, when a tokenizer is known, their text."""

    tokens: List[int]
    text: Optional[str]
    prompt_tokens: List[int]
    backend: str
    artifact: str
    tokenizer: Optional[str]  # the tokenizer.json used (None: token ids in and out)

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready)."""
        return asdict(self)


def generate(artifact: str | os.PathLike, prompt: Any, max_new_tokens: int, *, backend: Optional[str] = None,
             tokenizer: Optional[str | os.PathLike] = None, top_k: Optional[int] = None, seed: int = 0,
             threads: Optional[int] = 2) -> Generation:
    """Continue ``prompt`` with the KV-cache causal-LM graph ``artifact`` on ``backend``.

    Args:
        artifact: a KV-cache ONNX file (``export_causal_lm``; fp32, dynamic INT8 or INT4).
        prompt: text (needs a tokenizer) or token ids (a list or array, ``[s]`` or ``[1, s]``).
        max_new_tokens: tokens to generate (> 0; prompt + new tokens within the model's context).
        backend: a backend of ``edgekit.backends.causal_lm_backends()``; None = the default (ONNX Runtime CPU).
        tokenizer: a ``tokenizer.json`` (or a directory holding one); None = the ``tokenizer.json`` of the
            artifact's run directory (the nearest parent folder holding one), required only for a text prompt
            (with token ids, one found with another vocabulary is ignored: no text, a warning).
        top_k: None = greedy; k = sample among the k most likely tokens, seeded by ``seed``.
        threads: intra-op CPU threads.

    Returns:
        A :class:`Generation` (``tokens``, ``text`` when a tokenizer is known, ``prompt_tokens``, ``backend``...).

    Raises:
        ConfigError: bad ``max_new_tokens`` / ``top_k`` / ``threads``, an unknown backend (the message lists the
            allowed ones), a tokenizer whose vocabulary differs from the model's, a prompt longer than the context.
        InputFileError: a missing artifact or tokenizer, a file that is not ONNX.
        ShapeError: not a KV-cache LM graph; token ids outside the vocabulary or not a 1-D sequence.

    Example:
        >>> generate("lm.int4.onnx", "def main", 16, top_k=20, seed=1).text
    """
    from edgekit.backends import causal_lm_spec
    from edgekit.bench.decode import OnnxDecoder
    from edgekit.bench.decode import generate as decode_tokens
    from edgekit.export.causal_lm import read_kv_layout

    _check_numbers(max_new_tokens, top_k, threads)
    spec = causal_lm_spec(backend)
    path = _onnx_file(artifact)
    layout = read_kv_layout(path)
    tok, tok_path = _tokenizer(path, tokenizer, required=isinstance(prompt, str))
    if tok is not None and tok.get_vocab_size() != layout.vocab_size:
        what = (f"tokenizer {tok_path} has {tok.get_vocab_size()} tokens but {path.name} has a vocabulary of "
                f"{layout.vocab_size}; the tokenizer does not belong to this model")
        if tokenizer is not None or isinstance(prompt, str):
            raise ConfigError(f"{what} (pass the tokenizer.json of the run or model that made it)")
        logger.warning(f"{what}; returning token ids only")  # found by the search, not needed for an id prompt
        tok, tok_path = None, None
    ids = _prompt_ids(prompt, tok, layout.vocab_size)
    _check_context(len(ids), max_new_tokens, layout.max_positions)
    decoder = OnnxDecoder(path, threads, layout.max_positions, backend=spec.name, layout=layout)
    new = decode_tokens(decoder, ids[None], max_new_tokens, top_k=top_k, seed=seed)
    return Generation(tokens=new, text=tok.decode(new) if tok is not None else None, prompt_tokens=ids.tolist(),
                      backend=spec.name, artifact=str(path), tokenizer=str(tok_path) if tok_path else None)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_numbers(max_new_tokens: Any, top_k: Any, threads: Any) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be an integer > 0, got {max_new_tokens!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 (or None for greedy), got {top_k!r}")
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1 (or None for the backend's default), got {threads!r}")


def _onnx_file(artifact: Any) -> Path:
    from edgekit._io import require_file
    from edgekit.backends import artifact_kind

    path = require_file(artifact, "causal-LM artifact")
    kind = artifact_kind(path)
    if kind != "onnx":
        raise InputFileError(f"{path} is a {kind} artifact; generate runs a KV-cache causal-LM ONNX graph "
                             "(export_causal_lm, or the .onnx files of a causal-LM recipe run)")
    return path


def find_tokenizer(artifact: str | os.PathLike) -> Tuple[Optional[Path], List[Path]]:
    """The ``tokenizer.json`` of ``artifact``'s run: the nearest parent folder holding one, looking no higher than
    the run directory (the first folder with a ``manifest.json``). Returns (path or None, the folders searched).

    Example:
        >>> find_tokenizer("runs/text_gpt/r/stages/04-int4/pruned-int4.onnx")[0]
        PosixPath('/home/me/runs/text_gpt/r/tokenizer.json')
    """
    looked: List[Path] = []
    for folder in Path(artifact).resolve().parents:
        looked.append(folder)
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE, looked
        if (folder / RUN_MARKER).is_file():
            break
    return None, looked


def _tokenizer(path: Path, given: Optional[str | os.PathLike], required: bool) -> Tuple[Any, Optional[Path]]:
    """(tokenizer or None, its file): the given one, else the run's; a text prompt without one is an error."""
    from edgekit.data.text import load_tokenizer

    if given is not None:
        p = Path(given)
        return load_tokenizer(str(p), "tokenizer"), (p / TOKENIZER_FILE if p.is_dir() else p)
    found, looked = find_tokenizer(path)
    if found is not None:
        return load_tokenizer(str(found), f"tokenizer of {path.name}"), found
    if required:
        where = str(looked[0]) if len(looked) == 1 else f"{looked[0]} and its parents up to {looked[-1]}"
        raise InputFileError(f"the prompt is text but no tokenizer was given, and there is no {TOKENIZER_FILE} in "
                             f"{where} (a causal-LM recipe saves one in its run directory); pass a tokenizer "
                             "(tokenizer=PATH, --tokenizer PATH) or the prompt as token ids")
    return None, None


def _prompt_ids(prompt: Any, tok: Any, vocab: int) -> np.ndarray:
    """The prompt as 1-D int64 token ids inside ``[0, vocab)``."""
    if isinstance(prompt, str):
        ids = np.asarray(tok.encode(prompt).ids, np.int64)
        if ids.size == 0:
            raise ConfigError("the prompt is empty (its text encodes to no tokens); give at least one token")
        return ids
    if isinstance(prompt, (bytes, dict)) or prompt is None:
        raise ConfigError("prompt must be text or token ids (a list or array of integers), got "
                          f"{type(prompt).__name__}")
    arr = np.asarray(prompt)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ShapeError("prompt token ids must be one non-empty sequence ([s] or [1, s]), got shape "
                         f"{list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"prompt token ids must be integers, got {arr.dtype} values")
    bad = arr[(arr < 0) | (arr >= vocab)]
    if bad.size:
        raise ShapeError(f"prompt token id {int(bad[0])} is outside the model's vocabulary 0..{vocab - 1}")
    return arr.astype(np.int64)


def _check_context(prompt_len: int, max_new_tokens: int, context: int) -> None:
    if not context:
        return  # the file records no context (an export from before edgekit wrote it); the runtime decides
    if prompt_len >= context:
        raise ConfigError(f"the prompt has {prompt_len} tokens but the model's context is {context} positions; "
                          f"shorten it to at most {context - 1} tokens (one position is left for a new token)")
    if prompt_len + max_new_tokens > context:
        raise ConfigError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
                          f"{prompt_len + max_new_tokens} exceeds the model's context of {context} positions; at "
                          f"most {context - prompt_len} new tokens fit after this prompt")


__all__ = ["Generation", "find_tokenizer", "generate"]
