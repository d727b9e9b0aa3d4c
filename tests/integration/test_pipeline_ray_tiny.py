"""`run --ray` on a tiny random model: `run_pipeline` with a 2-worker local Ray pool writes
the same results database (rows, verdicts, gate counters, configurations) and selects
the same latents as the in-process run. Discovery's attribution runs on the pool too: the
in-process run shares the stage cache (SAEs, direction, gate: a configuration's id names
its SAE's file, so both runs must use the same one) but not discovery's cached scores, so
it computes the attribution itself. (A random model never refuses; as in
test_pipeline_tiny.py the test names its refusal first tokens and judges replies by
generation + substring.)"""

import pytest

from refusalscope.evaluation.store import ResultsStore
from refusalscope.pipeline import Profile, run_pipeline
from refusalscope.testing import save_tiny_model, tiny_chat_model, tiny_sae_preset

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'refusalscope[ray]'")

PROFILE = Profile(
    name="tiny-ray",
    description="toy sizes for the Ray pipeline test",
    sae_preset=tiny_sae_preset(),
    direction={"n_train": 12, "n_val": 6, "layer_stride": 1, "n_screen": 2, "n_finalists": 2},
    discovery={"ig_steps": 2, "n_attribution": 6, "n_activation": 8, "baselines": ()},
    k=4,
    clamp_strengths=(1.0,),
    actadd_strengths=(1.0,),
    first_token=False,
    judge="substring",
    example_prompts=0,
    max_new_tokens=4,
    refusal_limits={"jailbreakbench": 3, "xstest": 3, "pairs": 3, "jailbreak": 0, "gcg": 0},
    capability={"mmlu": 3},
    batch_size=4,
)


@pytest.fixture
def tiny_model_dir(tmp_path, monkeypatch, data_dir):
    from refusalscope import direction
    from refusalscope.data import load_dataset
    from refusalscope.judges.first_token import RefusalTokens

    chat = tiny_chat_model("llama", n_layers=4)
    harmful = load_dataset("harmful/refusal-direction", "train", data_dir=data_dir, limit=16).prompts
    ids = chat.next_token_logits(harmful).float().mean(0).topk(64).indices.tolist()
    tokens = RefusalTokens(ids, [chat.tokenizer.decode([i]) for i in ids])
    monkeypatch.setattr(direction, "find_refusal_tokens", lambda *args, **kwargs: tokens)
    return save_tiny_model(chat, tmp_path / "tiny-llama")


def content(db):
    with ResultsStore(db, create=False) as s:
        rows = sorted(tuple(r.values()) for r in s.rows())
        gates = sorted(tuple(r) for r in s.conn.execute("SELECT config_id, task, batch, fired, seen FROM gates"))
        configs = sorted((c["config_id"], c["label"]) for c in s.configs())
    return rows, gates, configs


@pytest.mark.filterwarnings("ignore::UserWarning")  # a random model's direction fails the filters
def test_run_on_a_two_worker_pool_matches_the_in_process_run(tiny_model_dir, tmp_path, data_dir, monkeypatch):
    from refusalscope.discovery import scoring
    from refusalscope.distributed import ModelSetup, RayExecutor

    calls = []  # the driver must not compute attribution itself when it has a pool
    real = scoring.attribution_scores
    monkeypatch.setattr(scoring, "attribution_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    import refusalscope.discovery.pipeline as discovery_pipeline

    monkeypatch.setattr(discovery_pipeline, "attribution_scores", scoring.attribution_scores)

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with RayExecutor(ModelSetup(str(tiny_model_dir), "float32"), address=None, workers=2) as ex:
            on_pool = run_pipeline(
                str(tiny_model_dir), PROFILE, tmp_path / "ray", data_dir, "float32", progress=False, executor=ex
            )
            assert ex.shipped and len(ex.worker_configs) == 4 and ex.replaced == 0
    finally:
        ray.shutdown()
    assert calls == []

    import shutil

    shutil.rmtree(tmp_path / "cache" / "discovery")  # the scores the pool computed (and the prompts chosen)
    here = run_pipeline(str(tiny_model_dir), PROFILE, tmp_path / "here", data_dir, "float32", progress=False)
    assert calls == [1]  # IG computed in this process this time (no scores cached from the Ray run)
    assert on_pool["selected"] == here["selected"] and len(here["selected"]) == PROFILE.k
    assert on_pool["sweep"] == here["sweep"] and here["sweep"]["computed"] == 4 * (5 * 3 + 3)
    assert content(tmp_path / "ray" / "results.db") == content(tmp_path / "here" / "results.db")
