"""Sweeps: run a grid of steering configurations over tasks, resumably, into a results store.

A grid (`evaluation.grid`) is a list of `Method`s (named steering factories `strength ->
interventions`, each run at some strengths, with the conditional gate off and/or on) plus,
by default, the unsteered model. Every (configuration, task) cell runs only the items the
store has no result for, in chunks written one transaction each, so a killed sweep resumes
where it stopped and nothing is computed twice.

    from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec
    from refusalscope.evaluation.summary import summarise
    from refusalscope.evaluation.sweep import run_sweep

    grid = Grid([Method.actadd(direction.raw, direction.layer, [1, 2, 4], conditional=(False, True))],
                gate=GateSpec(FeatureGate(sae, harm_latent), threshold=2.0))
    tasks = [TaskSpec(RefusalTask("jbb-harmful", "harmful/jailbreakbench"), limit=20),
             TaskSpec(RefusalTask("jbb-benign", "harmless/jailbreakbench", expect="answer"), limit=20)]
    run_sweep(chat, grid, tasks, "results.db", data_dir="../shared/data")
    print(summarise("results.db").table())      # per-cell estimates and Δs (evaluation.deltas)

Where things live: the grid model in `grid.py`, grid files in `grid_file.py`, Δs and its
dataset pairs in `deltas.py`, summaries in `summary.py`, the store in `store.py`; this
module is the runner (`run_sweep`) and the unit of work it hands out (`Chunk`,
`compute_chunk`), which `distributed/` runs on workers.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import RefusalScopeError
from .deltas import find_pairs
from .grid import Configuration, GateSpec, Grid, Method, TaskSpec, as_task_spec, item_id_of, task_judge, task_role
from .grid_file import load_grid_file
from .rows import read_tasks
from .store import ResultsStore
from .summary import summarise
from .tasks import ItemResult

if TYPE_CHECKING:
    from ..models import ChatModel
    from ..steering import Conditional

# the names this module exported before the grid, grid files and summaries had modules of their own
__all__ = [
    "Chunk",
    "ChunkResult",
    "GateSpec",
    "Grid",
    "Method",
    "SweepResult",
    "TaskSpec",
    "compute_chunk",
    "compute_group",
    "load_grid_file",
    "run_sweep",
    "shared_layers",
    "summarise",
]


@dataclass
class SweepResult:
    db_path: Path
    run_id: int
    computed: int  # items computed by this run
    skipped: int  # items already in the store
    seconds: float
    task_calls: int = 0


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _gate_prompts(task: Any, items: Sequence[Any]) -> list[str] | None:
    """The prompts a task feeds the model verbatim, where known (refusal tasks): then the
    gate's decision can be recorded per item."""
    verbatim = getattr(task, "gate_prompts", None)
    if verbatim is None:
        described = task.describe() if hasattr(task, "describe") else {}
        verbatim = isinstance(described, dict) and described.get("kind") == "refusal"
    if not verbatim:
        return None
    prompts = [getattr(it, "prompt", None) for it in items]
    texts = [p for p in prompts if isinstance(p, str)]
    return texts if len(texts) == len(prompts) else None


def run_sweep(
    chat: ChatModel,
    grid: Grid,
    tasks: Sequence[Any],
    db_path: str | Path,
    *,
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    chunk_size: int | None = None,
    pairs: Sequence[tuple[str, str] | dict[str, str]] | None = None,
    gate_items: bool = True,
    progress: bool = True,
    note: str | None = None,
    executor: Any = None,
    share: bool = True,
) -> SweepResult:
    """Run every configuration of `grid` on every task, writing each chunk of items to the
    results store at `db_path` as soon as it is computed; items already stored are skipped.

    `tasks`: Tasks or TaskSpec(task, limit, seed). `batch_size` is passed to each task's
    run (prompts per forward); `chunk_size` (default: batch_size) is the number of items
    computed and committed together. `pairs`: extra (harmful task, benign task) names,
    or {"name", "harmful", "benign"} dicts, whose Δs the summary reports beside the
    dataset pairs it finds itself (`evaluation.deltas.DATASET_PAIRS`). With a conditional gate, its fire rate is recorded per
    chunk, and per item for refusal tasks when `gate_items` (a forward to the gate's layer).

    `executor`: where the chunks are computed. None computes them here with `chat`; an
    object with `compute(chunks, batch_size=, gate_items=)` yielding one `ChunkResult`
    per `Chunk`, in any order, computes them elsewhere (e.g. `distributed.RayExecutor`,
    an actor pool). Either way this process stays the only writer of the store.

    `share`: computed here, the chunks run one task's items under every configuration
    in turn, sharing work between the configurations: the decoder layers below the
    earliest layer any of them steers or gates run once (`shared_layers`,
    `ChatModel.share_lower_layers`; bit-identical results), and refusal tasks decode
    their replies for all configurations in one batch (`compute_group`; the same replies,
    and a gate's fire rate counted once per prompt). False computes chunk by chunk,
    every layer for every configuration (e.g. to measure the saving).
    """
    from ..provenance import environment

    started = time.time()
    if batch_size < 1:
        raise RefusalScopeError(f"batch_size must be at least 1, got {batch_size}")
    chunk_size = int(chunk_size or batch_size)
    specs = [as_task_spec(t) for t in tasks]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RefusalScopeError(f"task names repeat: {dup}", "give every task its own name")
    configs = grid.configurations(chat)

    with ResultsStore(db_path) as db:
        model = {**chat.info.to_dict(), "id": chat.info.id}
        grid_info = {
            **grid.describe(),
            "tasks": [{"name": s.name, "limit": s.limit, "seed": s.seed} for s in specs],
            "batch_size": batch_size,
            "chunk_size": chunk_size,
        }
        interrupted = db.mark_interrupted_runs()  # runs killed before they could say so
        run_id = db.start_run(model, environment(), grid_info, note)
        computed = skipped = calls = 0
        status = "failed"
        bar = None
        try:
            for cfg in configs:
                db.add_config(cfg.to_store())
            loaded = []
            for spec in specs:
                task = spec.task
                items = list(task.items(data_dir=data_dir, limit=spec.limit, seed=spec.seed))
                ids = [item_id_of(it, spec.name) for it in items]
                if len(set(ids)) != len(ids):
                    raise RefusalScopeError(
                        f"task '{spec.name}' has repeated item ids", "item ids must be unique within a task"
                    )
                db.add_task(
                    spec.name,
                    dataset=getattr(task, "dataset", None),
                    split=getattr(task, "split", None),
                    primary=task.primary,
                    higher_is_better=bool(task.higher_is_better),
                    role=task_role(task),
                    judge=task_judge(task),
                    describe=task.describe(),
                    limit=spec.limit,
                    seed=spec.seed,
                )
                loaded.append((spec, list(zip(ids, items))))
            stored = read_tasks(db)
            for found in find_pairs(stored):
                db.add_pair(found.name, found.harmful_task, found.benign_task)
            known = {t.name for t in stored}
            for pair in pairs or ():
                name, harm, ben = (
                    (pair["name"], pair["harmful"], pair["benign"])
                    if isinstance(pair, dict)
                    else (f"{pair[0]} − {pair[1]}", pair[0], pair[1])
                )
                missing = [t for t in (harm, ben) if t not in known]
                if missing:
                    raise RefusalScopeError(f"pair '{name}' names tasks not in this sweep: {missing}")
                db.add_pair(name, harm, ben)

            plan = []
            for cfg in configs:
                for spec, items in loaded:
                    done = db.done_items(cfg.config_id, spec.name)
                    todo = [(i, it) for i, it in items if i not in done]
                    skipped += len(items) - len(todo)
                    plan.append((cfg, spec, items, {i for i, _ in todo}))
            total = sum(len(todo) for *_, todo in plan)
            if progress and skipped:
                was = f" (run {', '.join(map(str, interrupted))} was interrupted)" if interrupted else ""
                print(
                    f"resuming: {skipped:,} of {skipped + total:,} items stored in {db_path}{was}; {total:,} to compute",
                    file=sys.stderr,
                    flush=True,
                )
            bar = _progress(total, progress)
            chunks = _plan_chunks(plan, chunk_size)
            if executor is None:
                done_chunks = (
                    _compute_here(
                        chat,
                        chunks,
                        shared_layers(chat, configs),
                        batch_size=batch_size,
                        gate_items=gate_items,
                        bar=bar,
                    )
                    if share
                    else (compute_chunk(chat, c, batch_size=batch_size, gate_items=gate_items, bar=bar) for c in chunks)
                )
            else:
                if bar is not None:
                    bar.set_description(str(getattr(executor, "label", type(executor).__name__)), refresh=False)
                done_chunks = executor.compute(chunks, batch_size=batch_size, gate_items=gate_items)
            for out in done_chunks:
                calls += 1
                computed += db.write_batch(out.config_id, out.task, out.results, run_id, gate=out.gate, extra=out.extra)
                if bar is not None:
                    bar.update(len(out.results))
            status = "complete"
            _warn_first_token_disagreement(db)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if bar is not None:
                bar.close()
            db.finish_run(run_id, status, computed, skipped)
    return SweepResult(Path(db_path), run_id, computed, skipped, time.time() - started, calls)


@dataclass
class Chunk:
    """Items of one (configuration, task) cell computed and written together: the unit a
    sweep hands to whatever computes it (here, or a worker elsewhere)."""

    config: Configuration
    spec: TaskSpec
    ids: list[str]
    items: list[Any]
    cell: int = 1  # which (configuration, task) cell, 1-based, of `cells`
    cells: int = 1
    group: int = 0  # chunks of one group hold the same items of one task, under different configurations


def _plan_chunks(plan: Sequence[tuple[Configuration, TaskSpec, list, set]], chunk_size: int) -> list[Chunk]:
    """The chunks of a sweep, grouped so that one task's same items run under every
    configuration one after another: the k-th chunk of a task holds the to-do items among
    its k-th `chunk_size` items for every configuration, so on a fresh sweep all
    configurations of a group see the very same prompts, and `shared_layers` can share the
    layers below the first steered one (on a resumed sweep a group's chunks may differ;
    that only costs the sharing)."""
    out: list[Chunk] = []
    cells = len(plan)
    tasks = list(dict.fromkeys(spec.name for _, spec, _, _ in plan))
    group = 0
    for name in tasks:
        cells_of_task = [(k, cell) for k, cell in enumerate(plan, 1) if cell[1].name == name]
        n_items = max(len(items) for _, (_, _, items, _) in cells_of_task)
        for start in range(0, n_items, chunk_size):
            for k, (cfg, spec, items, todo) in cells_of_task:
                part = [(i, it) for i, it in items[start : start + chunk_size] if i in todo]
                if part:
                    out.append(Chunk(cfg, spec, [i for i, _ in part], [it for _, it in part], k, cells, group))
            group += 1
    return out


def shared_layers(chat: ChatModel, configs: Sequence[Configuration]) -> int | None:
    """The deepest decoder layer below which no configuration changes or reads anything
    (their earliest hook point, gates included), or None when sharing is pointless (one
    configuration) or impossible (an edit at the embedding, or an intervention that does
    not say where it acts). `ChatModel.share_lower_layers` then computes layers 0..that
    layer once per group of chunks: at that layer the hooks see the unchanged output."""
    if len(configs) < 2:
        return None
    earliest: list[int] = []
    for cfg in configs:
        for item in cfg.steering.interventions:
            try:
                points = item.points(chat)
            except NotImplementedError:
                return None
            if any(not isinstance(p, int) for p in points):
                return None
            earliest.extend(int(p) for p in points)
    return min(earliest) if earliest else None


def _compute_here(
    chat: ChatModel, chunks: Sequence[Chunk], upto: int | None, *, batch_size: int, gate_items: bool, bar: Any
) -> Iterator[ChunkResult]:
    """Compute the chunks in this process, a group at a time (`compute_group`), sharing
    layers 0..`upto` between the configurations of a group (`upto` None: every
    configuration runs every layer)."""
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and groups[-1][0].group == c.group:
            groups[-1].append(c)
        else:
            groups.append([c])
    with contextlib.ExitStack() as stack:
        memo = stack.enter_context(chat.share_lower_layers(upto)) if upto is not None else None
        for group in groups:
            if memo is not None:
                memo.clear()  # the next items: nothing recorded so far will be asked for again
            if _together(group):
                yield from compute_group(chat, group, batch_size=batch_size, gate_items=gate_items, bar=bar)
            else:  # one chunk at a time, so a killed sweep keeps every chunk finished
                for c in group:
                    yield compute_chunk(chat, c, batch_size=batch_size, gate_items=gate_items, bar=bar)


def compute_group(
    chat: ChatModel, chunks: Sequence[Chunk], *, batch_size: int = 16, gate_items: bool = True, bar: Any = None
) -> list[ChunkResult]:
    """Chunks that hold the same items of one task under different configurations.

    A task with `run_many` (refusal tasks) runs them together: its replies (examples, the
    first-token judge's checks, or all replies) are decoded for all configurations in one
    batch (`ChatModel.generate_each`, each configuration prefilled on its own, so a gate
    counts and decides exactly as in `compute_chunk`). Otherwise, or when two
    configurations share a gate object (its counters would mix), each chunk runs alone."""
    first = chunks[0]
    task = first.spec.task
    if not _together(chunks):
        return [compute_chunk(chat, c, batch_size=batch_size, gate_items=gate_items, bar=bar) for c in chunks]
    if bar is not None:
        bar.set_description(
            f"[{first.cell}/{first.cells}] {len(chunks)} configurations · {first.spec.name}", refresh=False
        )
    for chunk in chunks:
        for c in chunk.config.conditionals:
            c.reset_stats()
    run_many = cast(Any, task).run_many  # optional: tasks.Task does not require it
    runs = run_many(chat, first.items, [c.config.interventions for c in chunks], batch_size=batch_size)
    out = []
    for chunk, results in zip(chunks, runs):
        _check_ids(chunk, results)
        out.append(_chunk_result(chat, chunk, results, batch_size, gate_items))
    return out


def _together(chunks: Sequence[Chunk]) -> bool:
    """Whether `compute_group` can run these chunks together (see there)."""
    first = chunks[0]
    gates = [id(c) for chunk in chunks for c in chunk.config.conditionals]
    return (
        len(chunks) > 1
        and hasattr(first.spec.task, "run_many")
        and all(c.spec.name == first.spec.name and c.ids == first.ids for c in chunks)
        and len(gates) == len(set(gates))
    )


def _check_ids(chunk: Chunk, results: Sequence[ItemResult]) -> None:
    got = [str(r.item_id) for r in results]
    if sorted(got) != sorted(chunk.ids):
        raise RefusalScopeError(
            f"task '{chunk.spec.name}' returned results for items {sorted(set(got) ^ set(chunk.ids))[:5]} "
            "that differ from the items it was given",
            "a task's run() returns exactly one ItemResult per item, with the item's id",
        )


@dataclass
class ChunkResult:
    """What the store writes for a chunk: one ItemResult per item, the gate's counters
    (fired, seen) and per-item gate metrics where the configuration is conditional."""

    config_id: str
    task: str
    results: list[ItemResult]
    gate: tuple[int, int] | None = None
    extra: dict[str, dict[str, float]] | None = None


def compute_chunk(
    chat: ChatModel, chunk: Chunk, *, batch_size: int = 16, gate_items: bool = True, bar: Any = None
) -> ChunkResult:
    """Run one chunk on `chat`: the task's results (checked to be exactly one per item)
    plus the gate's decisions. Pure computation, no store: a sweep's driver and its remote
    workers run the same function, so a distributed sweep computes what a local one does."""
    cfg, spec, items = chunk.config, chunk.spec, chunk.items
    if bar is not None:
        bar.set_description(f"[{chunk.cell}/{chunk.cells}] {cfg.label} · {spec.name}", refresh=False)
    conds = cfg.conditionals
    for c in conds:
        c.reset_stats()
    results = list(spec.task.run(chat, items, interventions=cfg.interventions, batch_size=batch_size))
    _check_ids(chunk, results)
    return _chunk_result(chat, chunk, results, batch_size, gate_items)


def _chunk_result(
    chat: ChatModel, chunk: Chunk, results: list[ItemResult], batch_size: int, gate_items: bool
) -> ChunkResult:
    """The chunk's results with its gates' counters (fired, seen) and, for refusal tasks
    when `gate_items`, each item's gate decision."""
    gate = extra = None
    conds = chunk.config.conditionals
    if conds:
        gate = (sum(c.fired for c in conds), sum(c.seen for c in conds))
        prompts = _gate_prompts(chunk.spec.task, chunk.items) if gate_items else None
        if prompts is not None:
            extra = _gate_metrics(chat, conds, chunk.ids, prompts, batch_size)
    return ChunkResult(chunk.config.config_id, chunk.spec.name, results, gate, extra)


def _warn_first_token_disagreement(db: ResultsStore) -> None:
    """Flag configurations where the first-token judge disagrees with judged full replies
    (tasks with check_every; see evaluation/first_token_check.py)."""
    import warnings

    from .first_token_check import AGREEMENT_FLOOR, first_token_agreement

    low = [a for a in first_token_agreement(db) if a.flagged]
    if low:
        cells = "; ".join(f"{a.label} · {a.task}: {a.agreement}" for a in low)
        warnings.warn(
            f"first-token judge agrees with judged replies below {AGREEMENT_FLOOR:.0%} in {cells}; "
            "do not trust its refusal rate there (rerun those cells with generated replies)",
            stacklevel=3,
        )


def _gate_metrics(
    chat: ChatModel, conds: Sequence[Conditional], ids: Sequence[str], prompts: list[str], batch_size: int
) -> dict[str, dict[str, float]]:
    return _item_metrics([c.decisions(chat, prompts, batch_size) for c in conds], ids)


def _item_metrics(decided: Sequence[Any], ids: Sequence[str]) -> dict[str, dict[str, float]]:
    out = {}
    for row, item_id in enumerate(ids):
        metrics = {"gate_fired": float(any(bool(d.fired[row]) for d in decided))}
        if len(decided) == 1:
            metrics["gate_score"] = float(decided[0].scores[row])
        out[item_id] = metrics
    return out


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
