"""Sweeps computed on a Ray cluster: an actor pool (one model and its SAEs per worker)
computes a sweep's chunks while the driver stays the only writer of the results store.

    from refusalscope.distributed import GridFileSetup, RayExecutor
    with RayExecutor(GridFileSetup("grid.yaml", model="default"), address="auto") as ex:
        run_sweep(chat, plan.grid, plan.tasks, "results.db", executor=ex)

Ray is an optional extra (`pip install refusalscope[ray]`); importing this package does
not import Ray, only starting an executor does.
"""

from .pool import GridFileSetup, RayExecutor, SweepWorker
from .shards import Shard, ShardLedger, to_shards

__all__ = ["GridFileSetup", "RayExecutor", "Shard", "ShardLedger", "SweepWorker", "to_shards"]
