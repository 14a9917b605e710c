"""Where trials run: a local pool of worker processes (default) or tasks on a Ray cluster (``--ray ADDRESS``).

Both take a job (a plain dict, see :func:`edgekit.search.trial.run_rung`) and return its metrics; the Optuna study
stays in the driver process, which asks for parameters, sends each rung to a worker and tells the result.

Example:
    >>> with local_pool(workers=2) as run:
    ...     metrics = run(job)
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, Iterator, Optional

from edgekit.errors import BackendUnavailableError, ConfigError

RunFn = Callable[[dict], dict]


def _init_worker() -> None:
    # as `edgekit` main sets it: idle MKL threads must not spin into the timing of the next runner
    os.environ.setdefault("KMP_BLOCKTIME", "0")


@contextlib.contextmanager
def local_pool(workers: int) -> Iterator[RunFn]:
    """Run jobs in ``workers`` separate processes (spawned: no state shared with the driver)."""
    from edgekit.search.trial import run_rung

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        yield lambda job: pool.submit(run_rung, job).result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast (within ``timeout_s``) when nothing listens at ``host:port``; nothing is started."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        host, sep, port = address[len("ray://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), got '{address}'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise BackendUnavailableError(
            f"--ray {address}: no Ray head answers there ({reason} after at most {timeout_s:.0f} s); start one with "
            f"`ray start --head --port {port}` on that machine, or run without --ray for local workers. "
            "Nothing was started.") from None


def _ray_import() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError("--ray needs Ray: pip install 'edgekit[distributed]'") from None
    return ray


@contextlib.contextmanager
def ray_pool(address: str, resources: Optional[Dict[str, float]] = None) -> Iterator[RunFn]:
    """Run each job as a Ray task on the cluster at ``address`` (1 CPU each, plus ``resources`` such as a device
    label, so latency is measured on the node that has that device)."""
    check_ray_address(address)
    if address.rpartition(":")[0] in ("127.0.0.1", "localhost", "ray://127.0.0.1", "ray://localhost"):
        # a cluster started on the loopback address: otherwise Ray rewrites 127.0.0.1 to this host's network
        # address, where such a cluster does not listen (read when ray is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray_import()
    env = {k: os.environ[k] for k in ("PYTHONPATH", "KMP_BLOCKTIME") if k in os.environ}
    ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env} if env else None,
             ignore_reinit_error=True)
    try:
        from edgekit.search.trial import run_rung

        task = ray.remote(num_cpus=1, resources=dict(resources or {}) or None, max_retries=0)(run_rung)
        yield lambda job: ray.get(task.remote(job))
    finally:
        ray.shutdown()


__all__ = ["check_ray_address", "local_pool", "ray_pool"]
