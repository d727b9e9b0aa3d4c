"""Sweeps computed on a Ray cluster: an actor pool (one model and its SAEs per worker)
computes a sweep's chunks while the driver stays the only writer of the results store.

    from refusalscope.distributed import GridFileSetup, RayExecutor
    with RayExecutor(GridFileSetup("grid.yaml", model="default"), address="auto") as ex:
        run_sweep(chat, plan.grid, plan.tasks, "results.db", executor=ex)

A grid built in Python (what `refusalscope run` sweeps) runs on a pool started with
`ModelSetup(model spec, dtype)`: the driver sends its configurations and tasks, SAEs and
models by reference (`shipping.py`); `discover(..., executor=ex)` shards the attribution.

Ray is an optional extra (`pip install refusalscope[ray]`); importing this package does
not import Ray, only starting an executor does.
"""

from .pool import GridFileSetup, ModelSetup, RayExecutor, SweepWorker
from .shards import Shard, ShardLedger, to_shards

__all__ = ["GridFileSetup", "ModelSetup", "RayExecutor", "Shard", "ShardLedger", "SweepWorker", "to_shards"]
