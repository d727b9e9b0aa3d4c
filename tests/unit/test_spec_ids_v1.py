"""Saved steering specs keep their ids: files written by the version-1 code load unchanged.

`tests/fixtures/specs_v1/` holds one spec per intervention and gate kind (and one with all
of them, in JSON and YAML), the two tiny SAEs they reference (SAELens layout) and the
null-space tensors, all written by the code as it was before steering/ was reorganised
(issue #14), with `expected.json` recording each file's id and `describe()` text.

A spec's id is what results link to (sweep rows, reports, the playground's spec folder), so
any change to how an intervention writes its spec dict would silently orphan every stored
result. Two checks per file: reading it back gives the stored id and the same spec dict, and
building the same steering in code today gives the same id, dict and description.

Regenerate (only for a deliberate, versioned format change):
    python tests/unit/test_spec_ids_v1.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refusalscope.sae import SAE, SAEConfig, load_sae, save_sae
from refusalscope.steering import (
    ActAdd,
    Conditional,
    DirectionAblation,
    DirectionClamp,
    DirectionGate,
    FeatureGate,
    FeatureSteer,
    LearnedNullSpaceSteer,
    NullSpaceProjection,
    ProbeGate,
    Steering,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "specs_v1"
MODEL = {"name": "tiny-llama", "sha256": None, "spec": "tiny-llama", "n_layers": 4, "d_model": 64}
D_MODEL = 64


def make_saes() -> dict[str, SAE]:
    """The two SAEs the specs reference, built deterministically (seeds, no training)."""
    jumprelu = SAE.random(
        SAEConfig(d_in=D_MODEL, d_sae=32, architecture="jumprelu", layer=1, model_name="tiny-llama"), seed=5
    )
    topk = SAE.random(
        SAEConfig(d_in=D_MODEL, d_sae=32, architecture="topk", k=4, layer=2, model_name="tiny-llama"), seed=6
    )
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        jumprelu.threshold.fill_(0.2)
        jumprelu.b_dec.copy_(0.1 * torch.randn(D_MODEL, generator=gen))
        topk.b_enc.copy_(0.05 * torch.randn(32, generator=gen))
    return {"sae-jumprelu": jumprelu, "sae-topk": topk}


def build(saes: dict[str, SAE]) -> dict[str, Steering]:
    """Every spec case: name -> Steering (SAEs referenced by their folder beside the spec)."""
    jr = dict(sae=saes["sae-jumprelu"], sae_source="sae-jumprelu")
    tk = dict(sae=saes["sae-topk"], sae_source="sae-topk")
    gen = torch.Generator().manual_seed(0)

    def d() -> torch.Tensor:
        return torch.randn(D_MODEL, generator=gen)

    basis = torch.eye(D_MODEL)[[0, 5, 9]]  # exactly orthonormal rows, no SVD round-off
    matrix = 0.01 * torch.randn(D_MODEL, D_MODEL, generator=gen)

    def feature(src, *args, **kwargs):
        return FeatureSteer(src["sae"], *args, sae_source=src["sae_source"], **kwargs)

    cases: dict[str, list] = {
        "feature_set": [feature(jr, [3, 9], "set", [4.0, 2.0], positions="prompt")],
        "feature_scale_topk": [feature(tk, [1, 5, 7], "scale", -3.0, positions="post_instruction")],
        "feature_add": [feature(jr, [2], "add", 1.5, positions=[0, -1])],
        "feature_reconstruction": [feature(tk, [4], "set", 2.0, keep_error=False, positions="generated")],
        "ablation_all": [DirectionAblation(d(), positions="generated")],
        "ablation_layers": [DirectionAblation(d(), layers=["embed", 0, 2])],
        "actadd": [ActAdd(d(), 2, 3.0, positions=[-1])],
        "actadd_normalized": [ActAdd(d(), "embed", -2.5, normalize=True)],
        "clamp_direction": [DirectionClamp(d(), 3, 0.5, bias=d())],
        "clamp_no_bias": [DirectionClamp(d(), 0, -1.0, positions="prompt")],
        "clamp_sae": [DirectionClamp.from_sae_feature(jr["sae"], 7, 1.5, sae_source=jr["sae_source"])],
        "gate_feature": [
            Conditional(
                [ActAdd(d(), 2, 10.0), feature(jr, [1], "scale", -3.0)],
                FeatureGate(jr["sae"], 4, sae_source=jr["sae_source"]),
                0.1,
                reduce="mean",
            )
        ],
        "gate_feature_topk": [
            Conditional(feature(tk, [6], "set", 3.0), FeatureGate(tk["sae"], 3, sae_source=tk["sae_source"]), 0.25)
        ],
        "gate_direction": [
            Conditional(
                ActAdd(d(), 3, 1.0),
                DirectionGate(d(), 1, normalize=False),
                2.0,
                reduce="last",
                positions="post_instruction",
                skip_first=False,
            )
        ],
        "gate_probe_dense": [
            Conditional(ActAdd(d(), 3, 1.0), ProbeGate(d(), 0.3, 2), -0.5, positions="post_instruction")
        ],
        "gate_probe_latents": [
            Conditional(
                feature(tk, [0], "add", 1.0),
                ProbeGate(torch.tensor([1.0, -0.5]), 0.25, sae=jr["sae"], features=[2, 5], sae_source=jr["sae_source"]),
                0.0,
                positions=[-2, -1],
            )
        ],
        "nullspace_actadd": [
            NullSpaceProjection(ActAdd(d(), 2, 4.0), basis, fit={"variance": 0.99, "rank": 3, "n": 10})
        ],
        "nullspace_feature": [NullSpaceProjection(feature(jr, [3], "set", 2.0), basis)],
        "nullspace_learned": [LearnedNullSpaceSteer(matrix, 1, 0.5, positions="prompt", fit={"rank": 3})],
    }
    out = {name: Steering(items, name=name, model=dict(MODEL)) for name, items in cases.items()}
    every = [item for steering in out.values() for item in steering.interventions]
    out["everything"] = Steering(
        every, name="everything", description="one of each kind", model=dict(MODEL), metadata={"note": "fixture"}
    )
    return out


def spec_files() -> list[Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.iterdir() if p.suffix in (".json", ".yaml") and p.name != "expected.json")


def canonical(obj):
    return json.loads(json.dumps(obj))


def expected() -> dict[str, dict[str, str]]:
    return json.loads((FIXTURES / "expected.json").read_text())


def test_the_fixture_covers_every_kind():
    kinds, gates = set(), set()

    def walk(items):
        for item in items:
            kinds.add(item["kind"])
            if "gate" in item:
                gates.add(item["gate"]["kind"])
            walk(item.get("interventions", []))
            if "intervention" in item:
                walk([item["intervention"]])

    walk(json.loads((FIXTURES / "everything.json").read_text())["interventions"])
    assert kinds == {"feature", "ablation", "actadd", "clamp", "conditional", "nullspace", "nullspace_learned"}
    assert gates == {"feature", "direction", "probe"}
    assert {p.name for p in spec_files()} >= {"everything.yaml", "feature_set.json", "nullspace_learned.json"}


@pytest.mark.parametrize("path", spec_files(), ids=lambda p: p.name)
def test_saved_specs_load_with_the_same_id_and_spec(path):
    want = expected()[path.name]
    stored = json.loads(path.read_text()) if path.suffix == ".json" else __import__("yaml").safe_load(path.read_text())
    loaded = Steering.load(path)
    assert stored["id"] == want["id"]
    assert loaded.id == want["id"]
    assert canonical(loaded.to_dict()["interventions"]) == canonical(stored["interventions"])
    assert loaded.describe() == want["describe"]


def test_building_the_specs_today_gives_the_saved_ids():
    saes = {name: load_sae(FIXTURES / name) for name in ("sae-jumprelu", "sae-topk")}
    built = make_saes()
    for name in saes:  # the stored SAE files are exactly the deterministic ones
        assert saes[name].content_hash() == built[name].content_hash()
    want = expected()
    for name, steering in build(built).items():
        stored = json.loads((FIXTURES / f"{name}.json").read_text())
        assert steering.id == want[f"{name}.json"]["id"], name
        assert canonical(steering.content()["interventions"]) == canonical(stored["interventions"]), name
        assert steering.describe() == want[f"{name}.json"]["describe"], name


def write_fixtures() -> None:
    """Write the fixture folder with the code as it is now (see the module docstring)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    saes = make_saes()
    for name, sae in saes.items():
        save_sae(sae, FIXTURES / name)
    record = {}
    for name, steering in build(saes).items():
        suffixes = (".json", ".yaml") if name == "everything" else (".json",)
        for suffix in suffixes:
            steering.save(FIXTURES / f"{name}{suffix}")
            record[f"{name}{suffix}"] = {"id": steering.id, "describe": steering.describe()}
    (FIXTURES / "expected.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    write_fixtures()
