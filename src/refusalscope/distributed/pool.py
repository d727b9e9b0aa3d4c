"""An actor pool on Ray that computes a sweep's chunks: one model (and its SAEs) per worker.

Workers never receive weights. Each is given a `setup`, a small picklable recipe that
builds the model, the grid and the tasks where the worker runs (`GridFileSetup`: a grid
file and a model spec, what `refusalscope sweep --ray` uses), and then shards (ids and
prompts, `shards.py`). A worker builds its configurations from the recipe and checks that
their content-hash ids are the driver's, so a worker that loaded another model or another
grid stops the sweep instead of writing results under the wrong configuration.

A grid built in Python rather than read from a file (what `refusalscope run` sweeps after
discovery) reaches the workers another way: with `ModelSetup` a worker builds only its
model, and the driver sends each configuration and task once, pickled with models and SAEs
by reference (`shipping.py`); the worker recomputes each configuration's id from what it
received and the driver checks it. The same pool computes discovery's attribution
(`RayExecutor.attribution_scores`: the prompts sharded across the workers).

Results come back per shard as soon as each finishes (`ray.wait`), and the driver, the
only writer of the SQLite store, writes each in one transaction. A worker that dies (killed,
out of memory, its node lost) is replaced by a fresh actor and its shard retried; the
ledger's keys make sure a shard is written once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RefusalScopeError
from ..evaluation.grid import as_task_spec
from ..evaluation.sweep import Chunk, ChunkResult, compute_chunk
from .shards import Shard, ShardLedger, to_shards
from .shipping import References, dumps


def require_ray():
    """Ray, or one clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RefusalScopeError(
            "Ray is not installed; distributed sweeps need it",
            "pip install 'refusalscope[ray]' (with the CPU torch: "
            "pip install -c requirements/constraints.txt torch==2.13.0 'refusalscope[ray]')",
        ) from None
    return ray


@dataclass(frozen=True)
class GridFileSetup:
    """Build a worker's model, grid and tasks from a grid file and a model spec, exactly as
    `refusalscope sweep` does on the driver. Paths must be readable on every node (a shared
    file system, or the same layout on each machine)."""

    grid: str
    model: str | None = None
    dtype: str | None = None
    device: str = "auto"  # auto: the GPU Ray gave this worker (num_gpus), else the CPU
    data_dir: str | None = None  # the driver's --data-dir: capability tasks read their few-shot pool from it

    def __call__(self) -> tuple[Any, Any, list]:
        import torch

        from ..evaluation.grid_file import load_grid_file
        from ..models import load_model

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        plan = load_grid_file(self.grid)
        data_dir = self.data_dir or plan.data_dir
        for spec in plan.tasks:  # as run_sweep does on the driver: a task learns its data folder from items()
            if data_dir is not None:
                spec.task.items(data_dir=data_dir, limit=spec.limit, seed=spec.seed)
        chat = load_model(
            self.model or plan.model or "default", dtype=self.dtype or plan.dtype, device=device, progress=False
        )
        return chat, plan.grid, plan.tasks


@dataclass(frozen=True)
class ModelSetup:
    """Build only a worker's model; its configurations and tasks come from the driver
    (`RayExecutor` sends them, SAEs and models by reference): how `refusalscope run --ray`
    and any grid built in Python run on a pool. `model` must load the same weights on
    every node (an absolute folder, an embedded model, a hub id in the local cache)."""

    model: str
    dtype: str | None = None
    device: str = "auto"  # auto: the GPU Ray gave this worker (num_gpus), else the CPU
    device_map: str | None = None  # "auto": a model larger than one GPU, over the worker's GPUs (gpus_per_worker)

    def __call__(self) -> tuple[Any, None, list]:
        from ..models import load_model

        chat = load_model(
            self.model, dtype=self.dtype or "auto", device=self.device, device_map=self.device_map, progress=False
        )
        return chat, None, []


class SweepWorker:
    """What one Ray actor holds: a model, its configurations by id, the tasks by name.
    A plain class (Ray wraps it in `RayExecutor`), so it can be tested without Ray."""

    def __init__(self, setup: Callable[[], tuple[Any, Any, Sequence]], threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.failure: BaseException | None = None
        try:
            chat, grid, tasks = setup()
            self.chat = chat
            self.shipped = grid is None  # ModelSetup: configurations and tasks arrive with register()
            self.configs = {} if grid is None else {c.config_id: c for c in grid.configurations(chat)}
            self.specs = {s.name: s for s in (as_task_spec(t) for t in tasks)}
            self.references = References(chat)
        except Exception as exc:  # kept for ready(): Ray would drop an __init__ error's type and fix
            self.failure = exc

    def ready(self) -> dict:
        """What the driver checks before sending work: this worker's configuration ids
        (or the error that stopped it building its model and grid)."""
        if self.failure is not None:
            raise self.failure
        return {
            "pid": os.getpid(),
            "model": self.chat.info.id,
            "dtype": str(self.chat.dtype).replace("torch.", ""),
            "device": str(self.chat.device),
            "configs": sorted(self.configs),
            "tasks": sorted(self.specs),
            "shipped": self.shipped,
        }

    def register(self, blob: bytes) -> dict:
        """Configurations and task specs the driver sent (`shipping.dumps` of the two lists).
        Each configuration's id is recomputed here from the steering as this worker rebuilt
        it (its SAEs loaded from their sources), so the driver sees whether they agree."""
        if self.failure is not None:
            raise self.failure
        configs, specs = self.references.loads(blob)
        ids = []
        for cfg in configs:
            cfg.__dict__.pop("config_id", None)  # a cached_property: recomputed from this worker's objects
            cfg.steering.check(self.chat)
            self.configs[cfg.config_id] = cfg
            ids.append(cfg.config_id)
        for spec in specs:
            self.specs[spec.name] = spec
        return {"configs": ids, "tasks": [s.name for s in specs]}

    def attribute(self, shard: Shard, blob: bytes) -> Any:
        """Discovery's attribution (`discovery.scoring.attribution_scores`) of one shard of
        prompts; `blob` holds the SAEs (by reference), the ablation and the settings."""
        if self.failure is not None:
            raise self.failure
        from ..discovery.scoring import attribution_scores

        request = self.references.loads(blob)
        return attribution_scores(self.chat, prompts=list(shard.items), progress=False, **request)

    def pid(self) -> int:
        return os.getpid()

    def run(self, shard: Shard, batch_size: int, gate_items: bool) -> ChunkResult:
        if self.failure is not None:  # a replacement worker that could not build its model
            raise self.failure
        cfg = self.configs.get(shard.config_id)
        spec = self.specs.get(shard.task)
        if cfg is None or spec is None:
            raise RefusalScopeError(
                f"worker has no {'configuration ' + shard.config_id if cfg is None else 'task ' + shard.task}",
                "every worker must load the same model and grid as the driver",
            )
        return compute_chunk(
            self.chat,
            Chunk(cfg, spec, list(shard.ids), list(shard.items)),
            batch_size=batch_size,
            gate_items=gate_items,
        )


class RayExecutor:
    """Compute a sweep's chunks on a pool of Ray actors (pass as `run_sweep(..., executor=)`).

    `address`: "auto" (a running cluster, e.g. started with `ray start --head`), a
    "ray://host:port" or "host:port" address, or "local" (start a Ray instance in this
    process). `workers`: actors in the pool (default: the cluster's CPUs ÷ cpus_per_worker,
    or its GPUs ÷ gpus_per_worker when it has GPUs; gpus_per_worker defaults to 1 there,
    0 on a CPU cluster). A worker loads its model on the GPU Ray assigns it (GridFileSetup's
    device "auto"); pass the driver's resolved dtype so every replica computes alike. `max_attempts`: tries per shard before the
    sweep stops. `on_dispatch(executor, actor, shard)` is called after each shard is sent
    (the fault tests kill a worker there). Use as a context manager, or call close().
    """

    def __init__(
        self,
        setup: Callable[[], tuple[Any, Any, Sequence]],
        *,
        address: str | None = "auto",
        workers: int | None = None,
        cpus_per_worker: float = 1,
        gpus_per_worker: float | None = None,
        max_attempts: int = 3,
        init_kwargs: dict | None = None,
        on_dispatch: Callable[[RayExecutor, Any, Shard], None] | None = None,
    ):
        if workers is not None and workers < 1:
            raise RefusalScopeError(f"workers must be at least 1, got {workers}")
        self.setup = setup
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_attempts = max_attempts
        self.init_kwargs = dict(init_kwargs or {})
        self.on_dispatch = on_dispatch
        self.actors: list = []
        self.worker_info: list[dict] = []  # per worker at start: pid, model, dtype, device, configuration ids
        self.worker_configs: set[str] = set()
        self.worker_tasks: set[str] = set()
        self.registered: list = []  # object refs of what _ship sent, for replacement workers
        self.replaced = 0  # workers that died and were replaced
        self.retried = 0  # shards sent again after their worker died
        self._started_ray = False
        self._actor_class = None

    @property
    def label(self) -> str:
        return f"ray · {len(self.actors) or self.workers or '?'} workers"

    # ------------------------------------------------------------ pool
    def start(self) -> RayExecutor:
        """Connect to (or start) Ray and start the pool; fails here, with the worker's
        error, if a worker cannot build the model or the grid."""
        ray = require_ray()
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address not in (None, "local"):
                kwargs["address"] = self.address
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise RefusalScopeError(
                    f"cannot reach a Ray cluster at {self.address!r} ({exc})",
                    "start one with `ray start --head`, or pass --ray local to run one here",
                ) from None
            self._started_ray = True
        resources = ray.cluster_resources()
        if self.gpus_per_worker is None:  # a GPU cluster: one GPU per model replica
            self.gpus_per_worker = 1 if resources.get("GPU", 0) >= 1 else 0
        if self.workers is None:
            if self.gpus_per_worker:
                self.workers = max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
            else:
                self.workers = max(1, int(resources.get("CPU", 1) // self.cpus_per_worker))
        self._actor_class = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=0)(
            SweepWorker
        )
        self.actors = [self._new_actor() for _ in range(self.workers)]
        try:
            infos = self._get(ray, [a.ready.remote() for a in self.actors])
        except BaseException:
            self.close()  # no half-started pool left holding the cluster's CPUs
            raise
        self.worker_info = infos
        self.worker_configs = set.intersection(*(set(i["configs"]) for i in infos))
        self.worker_tasks = set.intersection(*(set(i["tasks"]) for i in infos))
        return self

    def _new_actor(self):
        threads = max(1, int(self.cpus_per_worker))
        return self._actor_class.remote(self.setup, threads)

    def _get(self, ray, refs):
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise _cause(exc) from None
        except ray.exceptions.RayActorError as exc:
            raise RefusalScopeError(
                f"a Ray worker failed to start: {str(exc).strip().splitlines()[-1]}",
                "check that every node can read the model and the grid's files",
            ) from None

    def close(self) -> None:
        if not self.actors and not self._started_ray:
            return
        ray = require_ray()
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead
                pass
        self.actors = []
        self.registered, self.worker_configs, self.worker_tasks = [], set(), set()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self.start() if not self.actors else self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ work
    def compute(
        self, chunks: Sequence[Chunk], *, batch_size: int = 16, gate_items: bool = True
    ) -> Iterator[ChunkResult]:
        """Yield one ChunkResult per chunk as shards finish (in any order); at most one shard
        in flight per worker, so a killed worker loses one shard of work."""
        if not self.actors:
            self.start()
        ray = require_ray()
        if self.shipped:
            self._ship(ray, chunks)
        shards = to_shards(chunks)
        unknown = sorted({s.config_id for s in shards} - self.worker_configs)
        if unknown:
            raise RefusalScopeError(
                f"the Ray workers built other configurations than the driver (missing {unknown[:3]})",
                "workers and driver must load the same model (same weights) and the same grid",
            )
        for _, out in self._map(ray, shards, lambda actor, shard: actor.run.remote(shard, batch_size, gate_items)):
            yield out

    @property
    def shipped(self) -> bool:
        """Whether the workers take their configurations and tasks from the driver (`ModelSetup`)."""
        return bool(self.worker_info) and all(i.get("shipped") for i in self.worker_info)

    def _ship(self, ray, chunks: Sequence[Chunk]) -> None:
        """Send every worker the configurations and tasks of `chunks` it does not hold yet,
        and check that each rebuilt every configuration under the driver's id."""
        configs = {c.config.config_id: c.config for c in chunks if c.config.config_id not in self.worker_configs}
        specs = {c.spec.name: c.spec for c in chunks if c.spec.name not in self.worker_tasks}
        if not configs and not specs:
            return
        ref = ray.put(dumps((list(configs.values()), list(specs.values()))))
        self.registered.append(ref)
        answers = self._get(ray, [a.register.remote(ref) for a in self.actors])
        for answer in answers:
            if sorted(answer["configs"]) != sorted(configs):
                wrong = sorted(set(configs) - set(answer["configs"]))
                raise RefusalScopeError(
                    f"a Ray worker rebuilt configurations {wrong[:3]} under other ids than the driver's",
                    "every node must load the same model and SAE files as the driver",
                )
        self.worker_configs |= set(configs)
        self.worker_tasks |= set(specs)

    def attribution_scores(
        self,
        chat: Any,
        saes: Any,
        prompts: Sequence[str],
        ablation: Any,
        refusal_token_ids: Sequence[int],
        method: str = "ig",
        steps: int = 10,
        batch_size: int = 4,
        progress: bool = True,
    ) -> Any:
        """`discovery.scoring.attribution_scores` with the prompts sharded across the pool.

        Every prompt's attribution depends on that prompt alone, so shards of
        `batch_size` prompts each give the per-prompt scores the single process gives
        (the same within floating-point tolerance: a prompt may share its batch with other
        prompts; see docs/scale.md); the driver puts them back in prompt order and averages.
        `chat` must be the model the workers loaded (it is checked by identity)."""
        from tqdm.auto import tqdm

        from ..discovery.scoring import merge_attributions

        if not self.actors:
            self.start()
        ray = require_ray()
        prompts = list(prompts)
        if not prompts:
            raise RefusalScopeError("no prompts to attribute", "pass harmful prompts the model refuses")
        models = {(i["model"], i["dtype"]) for i in self.worker_info}
        here = (chat.info.id, str(chat.dtype).replace("torch.", ""))
        if models != {here}:
            raise RefusalScopeError(
                f"the Ray workers hold {sorted(models)}, discovery runs on {here}",
                "start the pool with the model discovery uses (ModelSetup(the same spec and dtype))",
            )
        request = dict(
            saes=dict(saes),
            ablation=ablation,
            refusal_token_ids=list(refusal_token_ids),
            method=method,
            steps=steps,
            batch_size=batch_size,
        )
        ref = ray.put(dumps(request))
        size = max(1, batch_size)
        shards = [
            Shard(
                f"attribution-{method}",
                "attribution",
                tuple(map(str, range(i, min(i + size, len(prompts))))),
                tuple(prompts[i : i + size]),
                f"attribution ({method}) prompts {i}-{min(i + size, len(prompts)) - 1}",
            )
            for i in range(0, len(prompts), size)
        ]
        parts = {}
        with tqdm(total=len(prompts), desc=f"attribution ({method}) on {self.label}", disable=not progress) as bar:
            for shard, part in self._map(ray, shards, lambda actor, shard: actor.attribute.remote(shard, ref)):
                parts[int(shard.ids[0])] = part
                bar.update(len(shard.ids))
        return merge_attributions([parts[k] for k in sorted(parts)])

    def _map(self, ray, shards: Sequence[Shard], call: Callable[[Any, Shard], Any]) -> Iterator[tuple[Shard, Any]]:
        """(shard, result) for every shard as it finishes; `call(actor, shard)` sends one. A
        worker that dies is replaced and its shard sent again (the ledger gives up after
        max_attempts); a shard finished twice is yielded once."""
        ledger = ShardLedger(shards, self.max_attempts)
        idle = list(self.actors)
        inflight: dict = {}
        while not ledger.complete:
            while idle:
                shard = ledger.take()
                if shard is None:
                    break
                actor = idle.pop()
                inflight[call(actor, shard)] = (actor, shard)
                if self.on_dispatch is not None:
                    self.on_dispatch(self, actor, shard)
            if not inflight:
                raise RefusalScopeError(
                    "no Ray worker is left to compute the remaining shards"
                )  # not reached: dead ones are replaced
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor, shard = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise _cause(exc) from None
                except ray.exceptions.RayActorError as exc:
                    idle.append(self._replace(ray, actor))
                    ledger.failed(shard, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    self.retried += 1
                    continue
                idle.append(actor)
                if ledger.finished(shard):
                    yield shard, out

    def _replace(self, ray, dead):
        """A fresh actor in place of a dead one (it builds its model while others work)."""
        try:
            ray.kill(dead)
        except Exception:  # already gone
            pass
        fresh = self._new_actor()
        for ref in self.registered:  # what the driver sent the pool so far (actor calls run in order)
            fresh.register.remote(ref)
        self.actors = [fresh if a is dead else a for a in self.actors]
        self.replaced += 1
        return fresh


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception (a RefusalScopeError stays one: the CLI prints it cleanly)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
