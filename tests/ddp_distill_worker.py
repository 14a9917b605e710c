"""One rank of a tiny 2-process distillation job (run by tests/test_distill_ddp.py under torchrun, gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 ... tests/ddp_distill_worker.py OUT_DIR [N_TRAIN]

Each rank writes ``OUT_DIR/rank<R>.json`` with sha256 digests of the student's parameters, buffers and
hint adapters, before and after training, so the test can check that all ranks end identical.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    out_dir, n_train = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 256
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from edgekit.core.train import evaluate, fit
    from edgekit.data import load_data
    from edgekit.models import create_model
    from edgekit.techniques.distill.distill import kd_loss_fn

    s = load_data({"name": "digits", "channels": 3}, seed=0)  # 3×8×8
    torch.manual_seed(0)
    teacher = create_model("resnet_cifar", depth=8, width=0.5, num_classes=10, in_channels=3)
    torch.manual_seed(100 + rank)  # different per rank on purpose: DDP must broadcast rank 0's weights
    student = create_model("resnet_cifar", depth=8, width=0.25, num_classes=10, in_channels=3)
    train = s.train.take(n_train)
    loss_fn = kd_loss_fn(teacher, temperature=4.0, alpha=0.7, student=student, sample=train.x[:2],
                         attention={"weight": 1.0}, hints={"weight": 0.5}, cache_inputs=None, seed=0)
    init = digest(sorted(student.state_dict().items()))
    result = fit(student, train, s.val, {"epochs": 2, "batch_size": 32, "lr": 0.05}, seed=0, loss_fn=loss_fn,
                 extra_parameters=loss_fn.extra_parameters)
    loss_fn.close()
    record = {
        "rank": rank, "world": dist.get_world_size(), "init_state": init,
        "params": digest(sorted(student.named_parameters())),
        "buffers": digest(sorted(student.named_buffers())),
        "adapters": digest(sorted(loss_fn.adapters.named_parameters())),
        "val_accuracy": evaluate(student, s.val), "best_val_accuracy": result.best_val_accuracy,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
