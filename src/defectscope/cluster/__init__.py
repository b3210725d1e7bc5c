"""Scale-out on Ray (optional extra ``defectscope[ray]``): many categories at once, one category's
fit in shards, and batch predictions with Ray Data.

The serial tool never imports Ray. :class:`RayExecutor` is an executor in the sense of
:mod:`defectscope.engine.fitting.sharding`: the engine's workflows hand it plain-data jobs and get
the results back in order, so a Ray run computes exactly what a serial one does.

Every worker reads the images and writes model files by path: on a multi-machine cluster the
data and project folders must be mounted at the same path on every node (shared storage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from defectscope.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

#: what ``pip`` needs for the Ray paths
INSTALL = "pip install 'defectscope[ray]'"


def require_ray():
    """The ``ray`` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed here: {INSTALL}"
        ) from exc
    return ray


class RayExecutor:
    """Runs jobs as Ray tasks (one task per item) and yields their results in item order.

    Use as a context manager: it connects to ``address`` (``"auto"``: the cluster this machine
    belongs to; ``"ray://host:10001"``: a remote one) or, with no address, starts a private Ray
    on this machine with ``local_cpus`` CPUs (default: all) and stops it at the end.

    Args:
        task_cpus: CPUs each task declares (Ray also limits its threads to them).
        task_memory_gb: memory each task declares, so that Ray never packs more tasks on a node
            than its memory holds; None: no memory is declared.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        task_cpus: float = 1.0,
        task_memory_gb: float | None = None,
        local_cpus: int | None = None,
    ) -> None:
        if task_cpus <= 0:
            raise ConfigError(f"--task-cpus must be positive, got {task_cpus}")
        if task_memory_gb is not None and task_memory_gb <= 0:
            raise ConfigError(f"--task-memory-gb must be positive, got {task_memory_gb}")
        self.address = address
        self.task_cpus = task_cpus
        self.task_memory_gb = task_memory_gb
        self.local_cpus = local_cpus
        self._started = False

    def __repr__(self) -> str:
        where = self.address or "a local Ray"
        memory = f", {self.task_memory_gb:g} GB" if self.task_memory_gb else ""
        return f"Ray ({where}; {self.task_cpus:g} CPU{memory} per task)"

    def __str__(self) -> str:
        return repr(self)

    def __enter__(self) -> RayExecutor:
        start_ray(self.address, self.local_cpus)
        self._started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            stop_ray()
            self._started = False

    def options(self) -> dict[str, Any]:
        """Resources each task declares (``ray.remote(...).options(**options)``)."""
        out: dict[str, Any] = {"num_cpus": self.task_cpus, "max_retries": 0}
        if self.task_memory_gb:
            out["memory"] = int(self.task_memory_gb * 2**30)
        return out

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        ray = require_ray()
        if not ray.is_initialized():
            raise ConfigError("RayExecutor.map outside `with RayExecutor(...)`")
        remote = ray.remote(fn).options(**self.options())
        refs = [remote.remote(item) for item in items]
        taken = 0
        try:
            for ref in refs:
                result = ray.get(ref)
                taken += 1
                yield result
        finally:
            # an interrupted driver stops what is still queued or running. Only those: a
            # forced cancel of a task whose result was already taken races Ray's own
            # bookkeeping of its completion, and under load that aborts the driver (Ray 2.60,
            # task_manager.cc "Tried to complete task that was not pending").
            left = refs[taken:]
            if left:
                _, running = ray.wait(left, num_returns=len(left), timeout=0)
                for ref in running:
                    ray.cancel(ref, force=True)


_owned = False


def start_ray(address: str | None, local_cpus: int | None = None) -> None:
    """Connect to ``address``, or start a private local Ray (stopped by :func:`stop_ray`);
    nothing if Ray is already initialised in this process."""
    global _owned
    ray = require_ray()
    if ray.is_initialized():
        _quiet_data()
        return
    # workers' own log lines stay in Ray's log files: the driver says what finished
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "configure_logging": True,
        "log_to_driver": False,
    }
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = local_cpus
        kwargs["_node_ip_address"] = "127.0.0.1"  # a private Ray: this machine only
    kwargs["logging_level"] = logging.ERROR  # start-up chatter (token set-up) on every command
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
    logging.getLogger("ray").setLevel(logging.WARNING)
    _owned = True
    _quiet_data()


def _quiet_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Ray Data logs every execution's start and end, and that bars are off (no terminal)
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def stop_ray() -> None:
    global _owned
    if _owned:
        require_ray().shutdown()
        _owned = False


__all__ = ["INSTALL", "RayExecutor", "require_ray", "start_ray", "stop_ray"]
