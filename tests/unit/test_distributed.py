"""Distributed sweeps on a local 2-CPU Ray cluster: the results database is identical
(rows, verdicts, gate counters) to the single-process sweep's, a killed worker is
replaced and its shard retried, and a rerun computes only what is missing."""

from __future__ import annotations

import pytest
import torch

from refusalscope import RefusalScopeError
from refusalscope.distributed import GridFileSetup, RayExecutor, Shard, ShardLedger
from refusalscope.evaluation.grid_file import load_grid_file
from refusalscope.evaluation.store import ResultsStore
from refusalscope.evaluation.sweep import run_sweep
from refusalscope.models import load_model
from refusalscope.steering import ActAdd, Conditional, DirectionGate, Steering
from refusalscope.testing import save_tiny_model, tiny_chat_model

try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="Ray is an optional extra: pip install 'refusalscope[ray]'")


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    """A tiny model saved to a folder and a grid over it: ActAdd at 2 strengths, gated and
    not, plus the unsteered model, on 6+6 minimal-pair prompts (generated and judged)."""
    tmp = tmp_path_factory.mktemp("dist")
    chat = tiny_chat_model("llama")
    folder = save_tiny_model(chat, tmp / "model")
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(0))
    Steering([ActAdd(direction, 2, 4.0)], name="push").save(tmp / "actadd.json")
    Steering([Conditional(ActAdd(direction, 2, 4.0), DirectionGate(direction, 1), 0.0)]).save(tmp / "gate.json")
    (tmp / "grid.yaml").write_text(
        f"model: {folder}\ndtype: float32\nbatch_size: 2\nmax_new_tokens: 3\ngate: gate.json\n"
        "methods:\n  - {name: actadd, method: 'dense:actadd', spec: actadd.json, strengths: [1, 3], conditional: both}\n"
        "tasks:\n  - {name: mp-harm, dataset: builtin/minimal-pairs, split: harmful, limit: 6}\n"
        "  - {name: mp-ben, dataset: builtin/minimal-pairs, split: benign, limit: 6}\n"
    )
    return tmp / "grid.yaml"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def sweep(grid_file, db, executor=None):
    plan = load_grid_file(grid_file)
    chat = load_model(plan.model, dtype=plan.dtype, progress=False)
    return run_sweep(chat, plan.grid, plan.tasks, db, batch_size=plan.batch_size, progress=False, executor=executor)


def content(db):
    """Every stored row but timestamps and run ids: items with outputs, verdicts and gate counters."""
    with ResultsStore(db, create=False) as s:
        rows = sorted(tuple(r.values()) for r in s.rows())
        gates = sorted(tuple(r) for r in s.conn.execute("SELECT config_id, task, batch, fired, seen FROM gates"))
        configs = sorted(c["config_id"] for c in s.configs())
    return rows, gates, configs


@pytest.fixture(scope="module")
def single(grid_file, tmp_path_factory):
    db = tmp_path_factory.mktemp("single") / "single.db"
    result = sweep(grid_file, db)
    assert result.computed == 5 * 12  # none + actadd ×1, ×3, each gated and not = 5 configurations
    return content(db)


@needs_ray
def test_two_worker_sweep_matches_single_process_and_reruns_nothing(grid_file, cluster, single, tmp_path):
    rows, gates, configs = single
    assert {r[3] for r in rows} >= {"refused"} and len(configs) == 5
    assert len(gates) == 2 * 2 * 3  # gated configurations × tasks × chunks of 2 items
    with RayExecutor(GridFileSetup(str(grid_file)), address=None, workers=2) as ex:
        pids = set(ray.get([a.pid.remote() for a in ex.actors]))
        result = sweep(grid_file, tmp_path / "ray.db", ex)
        assert len(pids) == 2 and ex.replaced == 0
        assert result.computed == 60 and result.task_calls == 30
        assert content(tmp_path / "ray.db") == single
        again = sweep(grid_file, tmp_path / "ray.db", ex)
        assert again.computed == 0 and again.skipped == 60 and again.task_calls == 0
        # a cell lost (as if its run was killed): the rerun computes exactly its 6 items, on the cluster
        with ResultsStore(tmp_path / "ray.db") as s:
            cfg = next(c["config_id"] for c in s.configs() if c["conditional"])
            for table in ("items", "metrics", "gates"):
                s.conn.execute(f"DELETE FROM {table} WHERE config_id=? AND task='mp-harm'", (cfg,))
        resumed = sweep(grid_file, tmp_path / "ray.db", ex)
        assert resumed.computed == 6 and resumed.skipped == 54 and resumed.task_calls == 3
    assert content(tmp_path / "ray.db") == single


@needs_ray
def test_killed_worker_is_replaced_and_its_shard_retried(grid_file, cluster, single, tmp_path):
    killed = []

    def kill_once(executor, actor, shard):
        if len(killed) < 1 and len(shard.ids) == 2:
            killed.append(shard)
            ray.kill(actor, no_restart=True)  # mid-shard: sent, not yet answered

    db = tmp_path / "ray.db"
    with RayExecutor(GridFileSetup(str(grid_file)), address=None, workers=2, on_dispatch=kill_once) as ex:
        result = sweep(grid_file, db, ex)
        assert ex.replaced == 1 and ex.retried == 1
        assert len(ex.actors) == 2 and killed
    assert result.computed == 60
    assert content(db) == single
    with ResultsStore(db, create=False) as s:
        assert s.count_items() == 60 and [r["status"] for r in s.runs()] == ["complete"]


@needs_ray
def test_workers_must_build_the_drivers_configurations(grid_file, cluster, tmp_path):
    other = grid_file.parent / "other.yaml"
    other.write_text(grid_file.read_text().replace("strengths: [1, 3]", "strengths: [2]"))
    with RayExecutor(GridFileSetup(str(other)), address=None, workers=1) as ex:
        with pytest.raises(RefusalScopeError, match="other configurations than the driver"):
            sweep(grid_file, tmp_path / "x.db", ex)
    with pytest.raises(RefusalScopeError, match="does not exist|no such|not found"):
        RayExecutor(GridFileSetup(str(tmp_path / "missing.yaml")), address=None, workers=1).start()


def test_ledger_retries_a_shard_then_gives_up_and_never_finishes_one_twice():
    a, b = Shard("cfg-a", "t", ("1", "2"), ("p1", "p2")), Shard("cfg-a", "t", ("3",), ("p3",))
    ledger = ShardLedger([a, b], max_attempts=2)
    first = ledger.take()
    assert first == a
    ledger.failed(first, "worker died")
    assert ledger.take() == a  # retried first
    assert ledger.finished(a) and not ledger.finished(a)
    assert ledger.take() == b and not ledger.complete
    ledger.failed(b, "worker died")
    assert ledger.take() == b
    with pytest.raises(RefusalScopeError, match="failed on 2 workers"):
        ledger.failed(b, "worker died")


@needs_ray
def test_sweep_command_on_ray_writes_the_same_database(grid_file, cluster, single, tmp_path):
    from typer.testing import CliRunner

    from refusalscope.cli import app

    runner = CliRunner()
    args = ["sweep", "--spec", str(grid_file), "-o", str(tmp_path / "cli.db"), "--no-progress"]
    result = runner.invoke(app, [*args, "--ray", "local", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "60 items computed, 0 reused" in result.output
    assert content(tmp_path / "cli.db") == single
    bad = runner.invoke(app, [*args, "--workers", "2"])
    assert bad.exit_code == 2 and "--workers needs --ray" in bad.output


def test_worker_without_ray_computes_what_the_driver_computes(grid_file):
    """SweepWorker is plain Python: the same chunk through it and through compute_chunk on
    the driver's model gives the same results; a setup that fails is reported by ready()
    and run(), with its own error, not at construction (where Ray would lose its type)."""
    from refusalscope.distributed import SweepWorker
    from refusalscope.evaluation.sweep import Chunk, compute_chunk

    plan = load_grid_file(grid_file)
    chat = load_model(plan.model, dtype=plan.dtype, progress=False)
    cfg = plan.grid.configurations(chat)[-1]  # gated ActAdd ×3
    spec = plan.tasks[0]
    items = list(spec.task.items(limit=2))
    ids = [it.id for it in items]
    worker = SweepWorker(GridFileSetup(str(grid_file)), threads=1)
    assert worker.ready()["dtype"] == "float32" and cfg.config_id in worker.ready()["configs"]
    remote = worker.run(Shard(cfg.config_id, spec.name, tuple(ids), tuple(items)), 2, True)
    local = compute_chunk(chat, Chunk(cfg, spec, ids, items), batch_size=2)
    assert [(r.item_id, r.metrics, r.output) for r in remote.results] == [
        (r.item_id, r.metrics, r.output) for r in local.results
    ]
    assert remote.gate == local.gate and remote.extra == local.extra and remote.extra
    broken = SweepWorker(GridFileSetup(str(grid_file.parent / "missing.yaml")))
    for call in (broken.ready, lambda: broken.run(Shard(cfg.config_id, spec.name, tuple(ids), tuple(items)), 2, True)):
        with pytest.raises(RefusalScopeError):
            call()


# ---------------------------------------------------------------------- grids built in Python (run --ray)


@pytest.fixture(scope="module")
def python_grid(tmp_path_factory):
    """A tiny model in a folder, a random SAE saved to a folder, and a grid built in Python
    (no grid file): the SAE's latents clamped and scaled, gated and not, plus ActAdd."""
    from refusalscope.evaluation.grid import GateSpec, Grid, Method, TaskSpec
    from refusalscope.evaluation.tasks import RefusalTask
    from refusalscope.sae import SAE, SAEConfig
    from refusalscope.sae.io import load_sae, save_sae
    from refusalscope.steering import DirectionGate

    tmp = tmp_path_factory.mktemp("python-grid")
    folder = save_tiny_model(tiny_chat_model("llama"), tmp / "model")
    chat = load_model(str(folder), dtype="float32", progress=False)
    sae = SAE.random(SAEConfig(d_in=chat.d_model, d_sae=512, architecture="standard", layer=1), seed=3)
    sae = load_sae(save_sae(sae, tmp / "sae"))  # an SAE with a source: workers load it by reference
    direction = torch.randn(chat.d_model, generator=torch.Generator().manual_seed(1))
    gate = GateSpec(DirectionGate(direction, 1), 0.0, reduce="mean")
    grid = Grid(
        [
            Method.features(sae, [3, 7, 11], [2.0, 1.5, 3.0], [1.0, 4.0], conditional=(False, True)),
            Method.actadd(direction, 2, [3.0]),
        ],
        gate=gate,
    )
    tasks = [
        TaskSpec(RefusalTask("mp-harm", "builtin/minimal-pairs", "harmful", max_new_tokens=3), 6),
        TaskSpec(RefusalTask("mp-ben", "builtin/minimal-pairs", "benign", expect="answer", max_new_tokens=3), 6),
    ]
    return folder, chat, sae, grid, tasks


class ModelJudge:
    """A judge that holds a loaded model, as the learned judge does once it has judged."""

    name = "holds-a-model"

    def __init__(self, chat):
        self.chat = chat


def test_shipping_sends_saes_and_models_by_reference(python_grid, tmp_path):
    """What the driver pickles for a worker holds no SAE or model weights: the worker
    reloads the SAE from its source (hash checked), substitutes its own model for the
    driver's, and rebuilds every configuration under the driver's id."""
    from dataclasses import replace

    from refusalscope.distributed.shipping import References, dumps
    from refusalscope.evaluation.grid import Grid, Method
    from refusalscope.evaluation.tasks import RefusalTask
    from refusalscope.sae import SAE
    from refusalscope.sae.io import save_sae

    folder, chat, sae, grid, tasks = python_grid
    configs = grid.configurations(chat)
    judged = RefusalTask("mp", "builtin/minimal-pairs", "harmful", judge=ModelJudge(chat))
    blob = dumps((configs, [*tasks, judged]))
    weights = sum(t.numel() * t.element_size() for t in sae.state_dict().values())
    assert len(blob) < weights / 8  # the 512-latent SAE alone would not fit, nor the model
    worker_chat = load_model(str(folder), dtype="float32", progress=False)
    sent_configs, sent_tasks = References(worker_chat).loads(blob)
    sent_ids = []
    for cfg in sent_configs:
        cfg.__dict__.pop("config_id")  # recomputed from the worker's own objects
        sent_ids.append(cfg.config_id)
    assert sent_ids == [c.config_id for c in configs]
    steered = sent_configs[1].steering.interventions[0]
    assert steered.sae is not sae and torch.equal(steered.sae.W_enc, sae.W_enc)
    assert sent_tasks[-1].judge.chat is worker_chat
    # an SAE file replaced behind the driver's back is one clear error on the worker
    other = SAE.random(replace(sae.cfg, provenance={}), seed=9)
    save_sae(other, tmp_path / "sae")
    other.cfg.provenance["source"] = str(tmp_path / "sae")
    blob = dumps(Grid([Method.features(other, [1], [1.0], [1.0])], unsteered=False).configurations(chat))
    save_sae(SAE.random(replace(sae.cfg, provenance={}), seed=10), tmp_path / "sae")
    with pytest.raises(RefusalScopeError, match="read another SAE"):
        References(worker_chat).loads(blob)


@needs_ray
def test_python_grid_on_a_model_setup_pool_matches_single_process(python_grid, cluster, tmp_path):
    """`run --ray`'s path: workers load only the model; the driver sends the configurations
    and tasks it built in Python. Same database as the single-process sweep, also when a
    worker is killed mid-shard (its replacement is sent what the pool was sent)."""
    from refusalscope.distributed import ModelSetup

    folder, chat, _, grid, tasks = python_grid
    run_sweep(chat, grid, tasks, tmp_path / "single.db", batch_size=2, progress=False)
    killed = []

    def kill_once(executor, actor, shard):
        if not killed and len(executor.registered) == 1:
            killed.append(shard)
            ray.kill(actor, no_restart=True)

    with RayExecutor(ModelSetup(str(folder), "float32"), address=None, workers=2, on_dispatch=kill_once) as ex:
        assert ex.shipped and ex.worker_configs == set()
        result = run_sweep(chat, grid, tasks, tmp_path / "ray.db", batch_size=2, progress=False, executor=ex)
        assert killed and ex.replaced == 1 and ex.retried == 1
        assert len(ex.worker_configs) == 6 and ex.worker_tasks == {"mp-harm", "mp-ben"}
    assert result.computed == 6 * 12
    assert content(tmp_path / "ray.db") == content(tmp_path / "single.db")


@needs_ray
def test_attribution_sharded_across_the_pool_matches_single_process(python_grid, cluster):
    """Discovery's IG attribution with the prompts sharded over 2 workers: the same
    per-prompt scores, error-node attributions and metrics as one process (float32,
    within 1e-5 relative to the largest score), in prompt order."""
    from dataclasses import replace

    from refusalscope.discovery.scoring import attribution_scores
    from refusalscope.distributed import ModelSetup
    from refusalscope.sae import SAE
    from refusalscope.steering import DirectionAblation

    folder, chat, sae, _, _ = python_grid
    saes = {1: sae, 2: SAE.random(replace(sae.cfg, layer=2, provenance={}), seed=4)}  # one by reference, one inline
    prompts = [f"How do I {verb} a {thing}?" for verb in ("pick", "open", "build") for thing in ("lock", "door")]
    ablation = DirectionAblation(torch.randn(chat.d_model, generator=torch.Generator().manual_seed(2)))
    tokens = list(range(5, 40))
    here = attribution_scores(chat, saes, prompts, ablation, tokens, "ig", steps=2, batch_size=2, progress=False)
    with RayExecutor(ModelSetup(str(folder), "float32"), address=None, workers=2) as ex:
        there = ex.attribution_scores(
            chat, saes, prompts, ablation, tokens, "ig", steps=2, batch_size=2, progress=False
        )
        wrong = load_model(str(folder), dtype="bfloat16", progress=False)
        with pytest.raises(RefusalScopeError, match="discovery runs on"):
            ex.attribution_scores(wrong, saes, prompts, ablation, tokens, progress=False)
    assert there.prompts == prompts
    for layer in saes:
        scale = here.per_prompt[layer].abs().max()
        assert scale > 0
        torch.testing.assert_close(there.per_prompt[layer], here.per_prompt[layer], atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(there.mean[layer], here.mean[layer], atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(
            there.error[layer], here.error[layer], atol=1e-5 * here.error[layer].abs().max(), rtol=0
        )
        assert there.error_share(layer) == pytest.approx(here.error_share(layer), abs=1e-5)
    torch.testing.assert_close(there.metric_clean, here.metric_clean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(there.metric_patched, here.metric_patched, atol=1e-5, rtol=1e-5)


def test_run_command_ray_options_are_checked_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from refusalscope.cli import app

    result = CliRunner().invoke(app, ["run", "--model", str(tmp_path / "nowhere"), "--workers", "2"])
    assert result.exit_code == 2 and "--workers needs --ray" in result.output
    result = CliRunner().invoke(app, ["run", "--ray", "local", "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output
