"""Plain helpers shared by the test modules: ``from tests.helpers import free_port``.

Tests run from the repository root (``python -m pytest``), so ``tests`` and ``cluster`` import from there.
Fixtures shared by the test modules live in ``conftest.py``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_local_cluster(state_dir: Path, **sizes: int) -> Iterator[Any]:
    """A ``cluster/local_cluster.py`` cluster with token authentication and its dashboard on a free loopback
    port, started for the block and stopped after it (``sizes``: ``workers``, ``head_cpus``, ``worker_cpus``)."""
    from cluster import local_cluster as lc

    cluster = lc.LocalCluster(state_dir=state_dir, dashboard_port=free_port(), token=True, **sizes)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also IPv4-mapped (::ffff:127.0.0.1, as Ray's gRPC servers bind)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def tiny_search_spec(name: str, storage: str | Path, *, seeds: Sequence[int], epochs: int = 1,
                     max_steps_per_epoch: int = 2, retries: int | None = None) -> str:  # fmt: skip
    """A spec text: one tiny DARTS cell search on the digits data set, a trial per seed, 1 CPU each."""
    retries_line = "" if retries is None else f"retries: {retries}\n"
    seed_list = ", ".join(str(s) for s in seeds)
    return f"""\
name: {name}
storage: {storage}
data: {{dataset: digits}}
resources: {{cpu: 1, gpu: 0}}
{retries_line}stages:
  - name: search
    kind: cell_search
    recipe: digits_search
    overrides:
      space: darts
      epochs: {epochs}
      init_channels: 4
      layers: 3
      max_steps_per_epoch: {max_steps_per_epoch}
      schedule: {{warmup_epochs: 0}}
    seeds: [{seed_list}]
"""


def tiny_ddp_spec(name: str, storage: str | Path, *, genotypes: Sequence[str], retries: int,
                  worker_retries: int, epochs: int, max_steps_per_epoch: int) -> str:  # fmt: skip
    """A spec text: one tiny retrain stage on the digits data set, each trial DDP over 2 workers."""
    genotype_list = ", ".join(genotypes)
    overrides = f"epochs: {epochs}, max_steps_per_epoch: {max_steps_per_epoch}, init_channels: 4, layers: 3"
    return f"""\
name: {name}
storage: {storage}
data: {{dataset: digits}}
retries: {retries}
stages:
  - name: retrain
    kind: retrain
    recipe: digits_retrain
    genotypes: [{genotype_list}]
    workers: 2
    worker_retries: {worker_retries}
    overrides: {{{overrides}, mid_channels: 4,
                 drop_path_prob: 0.0}}
"""


def search_config(epochs: int) -> Any:
    """A planned cell-search trial's typed config that trains ``epochs`` epochs."""
    from trainers.config import with_overrides
    from trainers.recipes import get_recipe

    return with_overrides(get_recipe("digits_search"), {"epochs": epochs, "schedule": {"warmup_epochs": 0}})
