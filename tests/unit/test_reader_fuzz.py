"""Fuzzing the file readers: whatever a steering spec, sweep grid, prompt file, SAE
cfg.json or lm-eval CSV holds, reading it gives a valid object or one RefusalScopeError,
never another exception (which the CLI would have to report as a bug).

Inputs are built from the readers' own field names mixed with random ones, and values of
every JSON type (NaN and infinities included), so the examples reach the checks behind
the key check instead of stopping at the first unknown field. Example counts are bounded
so the whole file runs in seconds.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from refusalscope.errors import RefusalScopeError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, -1, 8, 0.5, "all", "prompt", "set", "scale", "add", "max", "embed", "s", "x", ""]),
    st.text(max_size=8),
)


def mostly(usual, odd):
    """`usual` three times in four, else `odd`."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else usual)


def values(keys: list[str]):
    """JSON-like values whose mappings use `keys` (the reader's field names) most of the time."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=6)) if keys else st.text(max_size=6)
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=6)),
        max_leaves=20,
    )


@pytest.fixture(scope="module")
def sae():
    from refusalscope.sae.model import SAE, SAEConfig

    return SAE.random(SAEConfig(d_in=2, d_sae=6, architecture="topk", k=2, layer=1))


SPEC_FIELDS = [
    "kind",
    "sae",
    "layer",
    "features",
    "mode",
    "value",
    "positions",
    "keep_error",
    "direction",
    "layers",
    "coefficient",
    "normalize",
    "feature",
    "bias",
    "gate",
    "interventions",
    "threshold",
    "reduce",
    "skip_first",
    "weights",
    "source",
    "values",
    "file",
    "key",
    "sha256",
]
KINDS = st.sampled_from(["feature", "ablation", "actadd", "clamp", "conditional", "direction", "probe", "teleport"])


def interventions():
    field = values(SPEC_FIELDS)
    direction = st.one_of(st.fixed_dictionaries({"values": st.lists(SCALARS, max_size=3)}), field)
    item = st.fixed_dictionaries(
        {"kind": KINDS},
        optional={
            "sae": st.one_of(st.just({"source": "s"}), field),
            "layer": field,
            "features": field,
            "mode": field,
            "value": field,
            "positions": field,
            "direction": direction,
            "coefficient": field,
            "feature": field,
            "gate": st.fixed_dictionaries(
                {"kind": KINDS}, optional={"threshold": field, "direction": direction, "layer": field, "sae": field}
            ),
            "interventions": st.lists(field, max_size=2),
            "bias": field,
        },
    )
    return st.lists(item, max_size=3)


@FUZZ
@given(items=interventions(), extra=values(["name", "version", "model", "id", "metadata"]))
def test_steering_spec_reader(items, extra, sae):
    from refusalscope.steering import Steering

    data = {"format": "refusalscope-steering", "interventions": items}
    if isinstance(extra, dict):
        data.update({k: v for k, v in extra.items() if k not in ("format", "interventions")})
    try:
        steering = Steering.from_dict(data, saes={"s": sae})
    except RefusalScopeError as exc:
        event(_kind(exc))
        return
    event("valid")
    for item in steering.interventions:  # what was accepted is well-formed
        assert item.to_dict()["kind"] in ("feature", "ablation", "actadd", "clamp", "conditional")
    for number in _numbers([i.to_dict() for i in steering.interventions]):
        assert math.isfinite(number)


def _kind(exc: RefusalScopeError) -> str:
    """The error's wording without its specifics, for --hypothesis-show-statistics."""
    return "error: " + re.sub(r"'[^']*'|\d+|\S*/\S*", "_", exc.problem)[:60]


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


GRID_FIELDS = [
    "model",
    "dtype",
    "data_dir",
    "batch_size",
    "chunk_size",
    "max_new_tokens",
    "judge",
    "unsteered",
    "methods",
    "tasks",
    "pairs",
    "note",
    "name",
    "method",
    "spec",
    "strengths",
    "conditional",
    "dataset",
    "capability",
    "split",
    "expect",
    "limit",
    "seed",
    "requests",
    "role",
    "options",
    "harmful",
    "benign",
]


@pytest.fixture(scope="module")
def grid_dir():
    with tempfile.TemporaryDirectory() as d:
        spec = {
            "format": "refusalscope-steering",
            "interventions": [{"kind": "actadd", "layer": 0, "direction": {"values": [1.0, 0.0]}, "coefficient": 1.0}],
        }
        (Path(d) / "spec.json").write_text(json.dumps(spec))
        yield Path(d)


@FUZZ
@given(
    grid=values(GRID_FIELDS),
    methods=st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {"spec": st.just("spec.json")},
                optional={"strengths": values([]), "conditional": values([]), "name": SCALARS},
            ),
            values(GRID_FIELDS),
        ),
        max_size=2,
    ),
    tasks=st.lists(
        st.one_of(
            st.sampled_from(["harmful/jailbreakbench", "mmlu", "nope"]),
            values(GRID_FIELDS),
            st.fixed_dictionaries(
                {"dataset": st.sampled_from(["harmful/advbench", "xstest/safe"])},
                optional={"limit": SCALARS, "seed": SCALARS, "max_new_tokens": SCALARS},
            ),
        ),
        max_size=2,
    ),
)
def test_grid_reader(grid, methods, tasks, grid_dir):
    from refusalscope.evaluation.grid_file import load_grid_file

    data = dict(grid) if isinstance(grid, dict) else {}
    data.setdefault("methods", methods)
    data.setdefault("tasks", tasks)
    path = grid_dir / "grid.json"
    path.write_text(json.dumps(data))
    try:
        plan = load_grid_file(path)
    except RefusalScopeError as exc:
        event(_kind(exc))
        return
    event("valid")
    assert plan.batch_size >= 1 and plan.tasks
    for method in plan.grid.methods:
        assert all(s is None or math.isfinite(s) for s in method.strengths)


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=60),
        values(["prompt"]).map(lambda v: json.dumps(v).encode()),
        st.lists(values(["prompt"]), max_size=4).map(lambda items: "\n".join(json.dumps(i) for i in items).encode()),
    ),
    suffix=st.sampled_from([".txt", ".json", ".jsonl"]),
)
def test_prompt_file_reader(content, suffix):
    from refusalscope.commands._app import read_prompts

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"prompts{suffix}"
        path.write_bytes(content)
        try:
            prompts = read_prompts([], path)
        except RefusalScopeError as exc:
            event(_kind(exc))
            return
    event("valid")
    assert prompts and all(isinstance(p, str) and p.strip() for p in prompts)


SAE_FIELDS = [
    "d_in",
    "d_sae",
    "architecture",
    "k",
    "hook_name",
    "hook_layer",
    "dtype",
    "model_name",
    "metadata",
    "activation_fn",
    "activation_fn_kwargs",
    "normalize_activations",
    "norm_scaling_factor",
    "apply_b_dec_to_input",
    "rescale_acts_by_decoder_norm",
    "sae_lens_version",
    "refusalscope",
    "layer",
    "reshape_activations",
    "hook_head_index",
]


@FUZZ
@given(
    cfg=values(SAE_FIELDS),
    base=st.fixed_dictionaries(
        {},
        optional={
            "d_in": mostly(st.sampled_from([8, 16, 8.0]), SCALARS),
            "d_sae": mostly(st.sampled_from([16, 32]), SCALARS),
            "k": mostly(st.sampled_from([1, 4]), SCALARS),
            "architecture": st.sampled_from(["topk", "jumprelu", "standard", "x"]),
            "hook_name": st.sampled_from(["blocks.3.hook_resid_post", "blocks.0.hook_resid_pre", "hook_embed", "x"]),
        },
    ),
)
def test_saelens_cfg_reader(cfg, base):
    from refusalscope.sae.saelens import cfg_from_saelens

    raw = {**cfg, **base} if isinstance(cfg, dict) else dict(base)
    try:
        parsed, _ = cfg_from_saelens(raw, "cfg.json")
    except RefusalScopeError as exc:
        event(_kind(exc))
        return
    event("valid")
    assert parsed.d_in >= 1 and parsed.d_sae >= 1 and math.isfinite(parsed.input_scale)


CSV_CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            "m",
            "sae_lens",
            "sparsify",
            "add",
            "clamp",
            "layers.1",
            "1",
            "0",
            "-1",
            "nan",
            "inf",
            "2.5",
            "x",
            "blocks.1.hook_resid_post",
        ]
    ),
    st.text(max_size=5),
)


COLUMNS = [
    "loader",
    "action",
    "sparse_model",
    "hookpoint",
    "feature_index",
    "steering_coefficient",
    "sae_id",
    "description",
    "extra",
]


CELL_BY_COLUMN = {  # each column mostly valid, so whole rows get past the early checks
    "loader": mostly(st.sampled_from(["sae_lens", "sparsify", ""]), st.sampled_from(["x", "SAE"])),
    "action": mostly(st.sampled_from(["add", "clamp", ""]), st.sampled_from(["x", "ablate"])),
    "sparse_model": mostly(st.just("m"), st.sampled_from(["", "q"])),
    "hookpoint": mostly(
        st.sampled_from(["layers.1", "", "blocks.1.hook_resid_post"]), st.sampled_from(["embed_tokens", "x"])
    ),
    "feature_index": mostly(st.sampled_from(["0", "1", "5", "2.0"]), st.sampled_from(["6", "-1", "1.5", "nan", "x"])),
    "steering_coefficient": mostly(
        st.sampled_from(["1", "-2.5", "0", "1e3"]),
        st.one_of(st.sampled_from(["nan", "inf", "-inf", "x", ""]), st.floats().map(repr)),
    ),
}


def csv_tables():
    """A header (mostly the real columns) and rows of exactly its width with plausible cells,
    plus now and then a ragged row of arbitrary cells."""
    header = mostly(st.just(COLUMNS[:8]), st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=9, unique=True))

    def rows(h):
        plausible = st.tuples(*[CELL_BY_COLUMN.get(c, CSV_CELLS) for c in h]).map(list)
        return st.lists(mostly(plausible, st.lists(CSV_CELLS, max_size=9)), min_size=1, max_size=3)

    return header.flatmap(lambda h: st.tuples(st.just(h), rows(h)))


@FUZZ
@given(table=csv_tables())
def test_lm_eval_csv_reader(table, sae):
    header, rows = table
    import csv
    import io

    from refusalscope.steering import import_lm_eval

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "steer.csv"
        path.write_text(buffer.getvalue())
        try:
            steering = import_lm_eval(path, saes={"m": sae})
        except RefusalScopeError as exc:
            event(_kind(exc))
            return
    event("valid")
    for number in _numbers([i.to_dict() for i in steering.interventions]):
        assert math.isfinite(number)
