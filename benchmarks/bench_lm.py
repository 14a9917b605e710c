"""Small GPT-style LMs end to end: teacher → depth-pruned students distilled on next-token distributions →
KV-cache ONNX → dynamic INT8 / weight-only INT4 → decode tokens/s, cache vs recompute, held-out perplexity.

Usage (2 threads; the machine is shared, so every timing is paired and interleaved):

    PYTHONPATH=$PWD python benchmarks/bench_lm.py --out benchmarks/results/lm \\
        --teacher /path/to/hf_gpt2_dir            # a local HF causal LM trained on this corpus's tokenizer
    PYTHONPATH=$PWD python benchmarks/bench_lm.py --out /tmp/lm --teacher-arch gpt2 --teacher-seconds 600

Without ``--teacher`` a teacher (``--teacher-arch``, 4 layers × 256) is trained from scratch for
``--teacher-seconds``. Students keep ``--student-layers`` of the teacher's blocks (the ones whose removal costs
least validation loss) and are distilled (forward KL at temperature ``--temperature`` + cross-entropy) for
``--kd-seconds`` each. Writes ``results.json`` and ``results.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgekit._io import write_json_atomic
from edgekit.bench.decode import (
    OrtDecoder,
    TorchDecoder,
    cache_vs_recompute,
    decode_speed,
    greedy,
    load_note,
    markdown_table,
    perplexity,
    ratios,
)
from edgekit.data.text_lm import load_lm_corpus
from edgekit.errors import ConfigError
from edgekit.export.causal_lm import (
    build_causal_lm,
    check_kv_parity,
    export_causal_lm,
    load_causal_lm,
    prepare_for_export,
)
from edgekit.techniques.quantize.int4 import quantize_dynamic_int8, quantize_int4

logger = logging.getLogger("bench_lm")


def blocks_of(model):
    """The decoder's list of blocks (GPT-2 ``transformer.h``, Llama/Qwen ``model.layers``)."""
    base = getattr(model, "transformer", None) or getattr(model, "model", None)
    for attr in ("h", "layers"):
        if hasattr(base, attr):
            return base, attr
    raise ConfigError(f"{type(model).__name__}: no transformer.h / model.layers block list")


def keep_layers(model, keep):
    """A copy of ``model`` with only the blocks ``keep`` (renumbered for the cache)."""
    m = copy.deepcopy(model)
    base, attr = blocks_of(m)
    blocks = getattr(base, attr)
    new = torch.nn.ModuleList([blocks[i] for i in keep])
    for j, b in enumerate(new):
        for mod in b.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = j
    setattr(base, attr, new)
    m.config.num_hidden_layers = len(keep)
    if getattr(m.config, "layer_types", None):
        m.config.layer_types = [m.config.layer_types[i] for i in keep]
    return m


def val_loss(model, windows):
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(windows)
        logits = model(input_ids=x[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).item()


def layer_order(model, windows):
    """Blocks sorted by how little validation loss rises when the block alone is removed (least important first)."""
    n = len(getattr(*blocks_of(model)))
    cost = {i: val_loss(keep_layers(model, [j for j in range(n) if j != i]), windows) for i in range(n)}
    logger.info(f"loss without each block: {cost}")
    return sorted(cost, key=cost.get)


def train(student, corpus, seconds, *, teacher=None, temperature=2.0, alpha=0.5, lr=5e-4, batch=16, seed=0):
    """Next-token training for ``seconds`` (time budget; linear lr decay); with ``teacher``: forward KL at
    ``temperature`` (weight ``alpha``) + cross-entropy (1 - ``alpha``). Returns the loss history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(student.parameters(), lr, weight_decay=0.1, betas=(0.9, 0.95))
    attn = student.config._attn_implementation
    student.config._attn_implementation = "sdpa"  # faster to train; export needs eager again (restored below)
    student.train()
    t0, step, hist = time.perf_counter(), 0, []
    while (elapsed := time.perf_counter() - t0) < seconds:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (1 - 0.9 * elapsed / seconds)
        x = torch.from_numpy(corpus.random_windows(batch, rng))
        inp, tgt = x[:, :-1], x[:, 1:]
        s_logits = student(input_ids=inp).logits
        loss = F.cross_entropy(s_logits.flatten(0, 1), tgt.flatten())
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(input_ids=inp).logits
            kd = F.kl_div(F.log_softmax(s_logits / temperature, -1).flatten(0, 1),
                          F.log_softmax(t_logits / temperature, -1).flatten(0, 1), log_target=True,
                          reduction="batchmean") * temperature ** 2
            loss = alpha * kd + (1 - alpha) * loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        if step % 25 == 0:
            hist.append({"step": step, "loss": round(loss.item(), 4), "s": round(elapsed, 1)})
            logger.info(f"step {step} loss {loss.item():.3f} ({elapsed:.0f}s)")
    student.config._attn_implementation = attn
    student.eval()
    return hist


def make_teacher(args, corpus):
    if args.teacher:
        teacher = load_causal_lm(args.teacher)
        if teacher.config.vocab_size != corpus.vocab_size:
            raise ConfigError(f"{args.teacher}: vocab_size {teacher.config.vocab_size} does not match the corpus "
                              f"tokenizer's {corpus.vocab_size}; train the teacher on this tokenizer")
        return teacher, {"source": args.teacher}
    teacher = build_causal_lm(args.teacher_arch, vocab_size=corpus.vocab_size, n_layer=4, n_embd=256, n_head=4,
                              n_positions=corpus.block_size, eos_id=corpus.eos_id, seed=args.seed)
    hist = train(teacher, corpus, args.teacher_seconds, lr=1e-3, seed=args.seed)
    teacher.save_pretrained(Path(args.out) / "teacher")
    return teacher, {"source": f"{args.teacher_arch} trained {args.teacher_seconds}s", "history": hist}


def build_variants(args, corpus, out):
    """Teacher + students in torch, their ONNX graphs and quantised graphs; returns (torch models, onnx paths, info)."""
    teacher, info = make_teacher(args, corpus)
    prepare_for_export(teacher)
    torch_models = {"teacher": teacher}
    order = layer_order(teacher, corpus.blocks("val")[:8])
    info["layer_order"] = order
    n = teacher.config.num_hidden_layers
    for k in args.student_layers:
        keep = sorted(order[n - k:])
        student = keep_layers(teacher, keep)
        hist = train(student, corpus, args.kd_seconds, teacher=teacher, temperature=args.temperature,
                     alpha=args.alpha, lr=args.kd_lr, seed=args.seed)
        torch_models[f"student{k}"] = student
        info[f"student{k}"] = {"keep": keep, "history": hist}
        student.save_pretrained(out / f"student{k}")
    onnx_paths, parity = {}, {}
    for name, m in torch_models.items():
        p = out / f"{name}.onnx"
        export_causal_lm(m, p)
        parity[name] = check_kv_parity(m, p, prompt_len=16, steps=4)
        onnx_paths[f"{name} ort fp32"] = p
        onnx_paths[f"{name} ort int8"] = quantize_dynamic_int8(p, out_path=out / f"{name}.int8.onnx").artifact
        r = quantize_int4(p, {"block_size": args.block_size}, out_path=out / f"{name}.int4.onnx")
        onnx_paths[f"{name} ort int4"] = r.artifact
        info[f"{name}_int4"] = {**r.metrics, **r.sidecar}
    info["parity"] = parity
    return torch_models, onnx_paths, info


def measure(args, corpus, torch_models, onnx_paths):
    """Perplexity, decode tokens/s (paired vs the eager teacher) and cache vs recompute for every variant."""
    decoders = {"teacher torch fp32": TorchDecoder(torch_models["teacher"], args.threads)}
    limit = decoders["teacher torch fp32"].max_positions
    decoders.update({k: OrtDecoder(p, args.threads, limit) for k, p in onnx_paths.items()})
    rows = {k: {"variant": k, "MB": round(Path(p).stat().st_size / 2 ** 20, 2)} for k, p in onnx_paths.items()}
    rows["teacher torch fp32"] = {"variant": "teacher torch fp32"}
    for split in ("val", "test"):
        blocks = corpus.blocks(split)
        for k, d in decoders.items():
            r = perplexity(d, blocks, corpus.n_bytes[split], len(corpus.ids[split]))
            rows[k][f"{split}_ppl"] = r["ppl"]
            rows[k][f"{split}_bpb"] = r["bits_per_byte"]
    prompt = corpus.blocks("test")[0][None, :args.prompt]
    ms = decode_speed(decoders, prompt, args.new_tokens, rounds=args.rounds)
    for base, col in (("teacher torch fp32", "vs_torch"), ("teacher ort fp32", "vs_ort")):
        for k, r in ratios(ms, base).items():
            rows[k][col] = f"{r['median']:.2f} ({r['p10']:.2f}–{r['p90']:.2f})"
            rows[k][f"{col}_median"], rows[k][f"{col}_p10"] = r["median"], r["p10"]
            rows[k]["ms_per_token"] = r["ms"]
            rows[k]["tokens_per_s"] = 1000.0 / r["ms"]
    past = min(args.past, limit - 1) if limit else args.past
    cache = {}
    for k in ("teacher torch fp32", "teacher ort fp32", args.final):
        c = cache_vs_recompute(decoders[k], past, rounds=args.rounds)
        r = c["cache"] / c["recompute"]
        cache[k] = {"past": past, "cache_ms": float(np.median(c["cache"])),
                    "recompute_ms": float(np.median(c["recompute"])), "ratio": float(np.median(r)),
                    "ratio_p10": float(np.percentile(r, 10)), "ratio_p90": float(np.percentile(r, 90))}
    gens = {k: greedy(decoders[k], prompt, 24) for k in ("teacher torch fp32", "teacher ort int4", args.final)}
    return list(rows.values()), cache, gens


def report(out, rows, cache, gens, info, corpus, args):
    cols = ["variant", "MB", "val_ppl", "test_ppl", "val_bpb", "ms_per_token", "tokens_per_s", "vs_torch", "vs_ort"]
    md = [f"# LM decode benchmark\n\nbatch 1, {args.threads} threads, prompt {args.prompt}, {args.new_tokens} new "
          f"tokens, {args.rounds} interleaved rounds; ratios = median (p10–p90) of per-round speedups. "
          f"load {load_note()}\n", markdown_table(rows, cols), "\n## KV cache vs recompute (per token)\n",
          markdown_table([{"variant": k, **v} for k, v in cache.items()],
                         ["variant", "past", "cache_ms", "recompute_ms", "ratio", "ratio_p10", "ratio_p90"]),
          "\n## Greedy continuations (24 tokens)\n"]
    md += [f"- **{k}**: `{corpus.tokenizer.decode(v)!r}`" for k, v in gens.items()]
    (out / "results.md").write_text("\n".join(md) + "\n")
    write_json_atomic(out / "results.json", {"rows": rows, "cache": cache, "generations": gens, "info": info,
                                             "args": vars(args), "load": load_note()})
    print("\n".join(md))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", help="local HF causal-LM directory (trained on this corpus's tokenizer)")
    ap.add_argument("--teacher-arch", default="gpt2", choices=["gpt2", "llama"])
    ap.add_argument("--teacher-seconds", type=float, default=600)
    ap.add_argument("--student-layers", type=int, nargs="+", default=[2])
    ap.add_argument("--kd-seconds", type=float, default=300)
    ap.add_argument("--kd-lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--final", default=None, help="variant whose cache/recompute is measured (default: last int4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="training / KD sampling seed")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="document split seed (keep the teacher's: a local teacher was trained on its train split)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.final = args.final or f"student{min(args.student_layers)} ort int4"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_lm_corpus({"block_size": 128}, seed=args.data_seed)
    corpus.save_tokenizer(out / "tokenizer.json")
    t0 = time.perf_counter()
    torch_models, onnx_paths, info = build_variants(args, corpus, out)
    rows, cache, gens = measure(args, corpus, torch_models, onnx_paths)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    report(out, rows, cache, gens, info, corpus, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
