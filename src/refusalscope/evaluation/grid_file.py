"""Grid files: the YAML or JSON file `refusalscope sweep --spec` reads, checked strictly.

The file is parsed by PyYAML's `safe_load` (or as JSON) through `paths.read_json_or_yaml`;
everything after that is validation, so a typo or an out-of-range number is one clear
error naming where it is (`methods[1]: unknown key 'strenghts' (did you mean ...)`), found
before a model is loaded. `load_grid_file` documents the layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..errors import RefusalScopeError
from ..types import DtypeName, choices
from .grid import GateSpec, Grid, Method, TaskSpec

GRID_KEYS = {
    "model",
    "dtype",
    "data_dir",
    "batch_size",
    "chunk_size",
    "max_new_tokens",
    "judge",
    "unsteered",
    "gate",
    "methods",
    "tasks",
    "pairs",
    "note",
}
METHOD_KEYS = {"name", "method", "spec", "strengths", "conditional", "gate", "description"}
TASK_KEYS = {
    "name",
    "dataset",
    "capability",
    "split",
    "expect",
    "limit",
    "seed",
    "max_new_tokens",
    "judge",
    "requests",
    "role",
    "options",
}
_ANSWER = {"xstest/safe"}


@dataclass
class SweepPlan:
    """A grid file, read: what `refusalscope sweep` runs."""

    grid: Grid
    tasks: list[TaskSpec]
    model: str | None = None
    dtype: DtypeName = "auto"
    data_dir: Path | None = None
    batch_size: int = 16
    chunk_size: int | None = None
    pairs: list[dict[str, str]] = field(default_factory=list)  # {name, harmful, benign}: task names
    note: str | None = None


def _read_mapping(path: Path) -> dict[str, Any]:
    from ..paths import read_json_or_yaml

    data = read_json_or_yaml(path, "grid file")
    if not isinstance(data, dict):
        raise RefusalScopeError(
            f"{path}: a grid file is a mapping with 'methods' and 'tasks'",
            "see `refusalscope sweep --help` and evaluation/grid_file.py:load_grid_file for the layout",
        )
    return data


def _unknown(where: str, keys: Iterable[str], allowed: set[str]) -> None:
    from ..checks import check_keys

    check_keys(dict.fromkeys(keys), allowed, where)


def _opt_number(data: dict[str, Any], key: str, where: str, **limits: Any) -> Any:
    """data[key] checked (type, range, finiteness) where the grid is read, or None if absent."""
    from ..checks import number

    value = data.get(key)
    return None if value is None else number(value, f"{where}: {key}", **limits)


def _opt_text(data: dict[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RefusalScopeError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _conditional_setting(value: Any, where: str) -> tuple[bool, ...]:
    if value in (None, False, "off"):
        return (False,)
    if value in (True, "on"):
        return (True,)
    if value == "both":
        return (False, True)
    if isinstance(value, list) and all(isinstance(v, bool) for v in value) and value:
        return tuple(value)
    raise RefusalScopeError(
        f"{where}: conditional must be false, true, 'both' or a list like [false, true], got {value!r}"
    )


GATE_KEYS = {"spec", "probe", "sae"}


def _gate(value: Any, where: str, rel: Callable[[Any], Path]) -> GateSpec:
    """A `gate:` entry: a steering spec file with one conditional (its gate and threshold),
    a probe folder from `refusalscope probes` (`gate-probe/`: a probe gate at the probe's
    validation threshold), or a mapping {spec: file} / {probe: folder, sae: folder}."""
    if isinstance(value, str):
        path = rel(value)
        value = {"probe": value} if path.is_dir() else {"spec": value}
    if not isinstance(value, dict):
        raise RefusalScopeError(
            f"{where}: a gate is a steering spec file, a probe folder, or {{spec: file}} / {{probe: folder}}",
            "e.g. gate: runs/probes/gate-probe  or  gate: {spec: gate.json}",
        )
    _unknown(where, value, GATE_KEYS)
    for key in GATE_KEYS:
        _opt_text(value, key, where)
    if ("spec" in value) == ("probe" in value):
        raise RefusalScopeError(f"{where}: a gate names exactly one of 'spec' and 'probe'")
    if "spec" in value:
        if "sae" in value:
            raise RefusalScopeError(f"{where}: 'sae' goes with 'probe' (a spec file names its own SAEs)")
        path = rel(value["spec"])
        if not path.is_file():
            raise RefusalScopeError(
                f"{where}: the gate spec file {path} does not exist", "write it with `Steering.save` or name a probe"
            )
        return GateSpec.from_spec(path)
    path = rel(value["probe"])
    if not path.is_dir():
        raise RefusalScopeError(
            f"{where}: the probe folder {path} does not exist",
            "run `refusalscope probes -o FOLDER` and name FOLDER/gate-probe",
        )
    try:
        return GateSpec.from_probe(path, str(rel(value["sae"])) if value.get("sae") else None)
    except RefusalScopeError as exc:
        raise RefusalScopeError(f"{where}: {exc.problem}", exc.fix) from None


def _judge(name: str | None, where: str) -> Any:
    if name in (None, "substring"):
        from ..judges import SubstringJudge

        return SubstringJudge()
    raise RefusalScopeError(f"{where}: judge '{name}' cannot be named in a grid file", "use 'substring' (the default)")


def _default_expect(dataset: str, split: str | None) -> str:
    if (
        dataset.startswith("harmless/")
        or dataset in _ANSWER
        or (dataset == "builtin/minimal-pairs" and split == "benign")
    ):
        return "answer"
    return "refuse"


def _capability_task(name: str, entry: dict[str, Any], defaults: dict[str, Any], where: str) -> Any:
    """A capability task by its short name (`evaluation.capability.capability_task`)."""
    from .capability import capability_task

    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise RefusalScopeError(f"{where}: options is a mapping of capability_task's keyword arguments")
    options = dict(options)
    _unknown(
        f"{where}.options", options, {"chat", "system", "gsm8k_max_new_tokens", "triviaqa_max_new_tokens", "window"}
    )
    for key in ("gsm8k_max_new_tokens", "triviaqa_max_new_tokens", "window"):
        _opt_number(options, key, f"{where}.options", integer=True, minimum=1)
    if not isinstance(options.get("chat", True), bool):
        raise RefusalScopeError(f"{where}.options: chat must be true or false")
    _opt_text(options, "system", f"{where}.options")
    options.setdefault("data_dir", defaults.get("data_dir"))
    try:
        task = capability_task(name, **options)
    except TypeError as exc:
        raise RefusalScopeError(f"{where}: {exc}", "see refusalscope.evaluation.capability.capability_task") from None
    if entry.get("name") and entry["name"] != name:
        task.name = entry["name"]
    return task


def _task_from_entry(entry: Any, index: int, defaults: dict[str, Any]) -> TaskSpec:
    from ..data import REGISTRY, load_dataset
    from .capability import CAPABILITY_TASKS
    from .tasks import RefusalTask

    where = f"tasks[{index}]"
    if isinstance(entry, str):
        entry = {"dataset": entry} if entry in REGISTRY else {"capability": entry}
    if not isinstance(entry, dict):
        raise RefusalScopeError(f"{where}: a task is a dataset name, a capability task name, or a mapping")
    _unknown(where, entry, TASK_KEYS)
    limit = _opt_number(entry, "limit", where, integer=True, minimum=1)
    seed = _opt_number(entry, "seed", where, integer=True, minimum=0) or 0
    max_new_tokens = _opt_number(entry, "max_new_tokens", where, integer=True, minimum=1)
    for key in ("name", "dataset", "capability", "split", "expect", "role"):
        _opt_text(entry, key, where)
    dataset = entry.get("dataset")
    capability = entry.get("capability")
    if capability is None and dataset is None and entry.get("name"):
        base = re.sub(r"-\d+shot$", "", str(entry["name"]))
        if base in CAPABILITY_TASKS:
            capability = entry["name"]
    if capability is not None:
        task = _capability_task(str(capability), entry, defaults, where)
    elif dataset is not None:
        spec = REGISTRY.get(dataset)
        if spec is None:
            from ..checks import did_you_mean

            raise RefusalScopeError(
                f"{where}: unknown dataset '{dataset}'{did_you_mean(dataset, REGISTRY)}",
                "`refusalscope datasets` lists them",
            )
        if spec.kind != "prompts":
            raise RefusalScopeError(
                f"{where}: '{dataset}' is a {spec.kind} dataset, not prompts to judge for refusal",
                f"name capability benchmarks with `capability:` ({', '.join(CAPABILITY_TASKS)})",
            )
        split = entry.get("split")
        requests: tuple[str, ...] = ()
        if entry.get("requests"):
            req = entry["requests"]
            req = {"dataset": req} if isinstance(req, str) else req
            if not isinstance(req, dict) or not isinstance(req.get("dataset"), str):
                raise RefusalScopeError(f"{where}: requests is a dataset name or {{dataset: ..., split, limit, seed}}")
            _unknown(f"{where}.requests", req, {"dataset", "split", "limit", "seed"})
            requests = tuple(
                load_dataset(
                    req["dataset"],
                    _opt_text(req, "split", where),
                    data_dir=defaults.get("data_dir"),
                    limit=_opt_number(req, "limit", f"{where}.requests", integer=True, minimum=1) or 5,
                    seed=_opt_number(req, "seed", f"{where}.requests", integer=True, minimum=0) or 0,
                ).prompts
            )
        name = entry.get("name") or (dataset + (f":{split}" if split else ""))
        task = RefusalTask(
            name,
            dataset,
            split,
            expect=entry.get("expect") or _default_expect(dataset, split),
            max_new_tokens=max_new_tokens or defaults.get("max_new_tokens") or 32,
            judge=_judge(entry.get("judge", defaults.get("judge")), where),
            template_requests=requests,
        )
    else:
        raise RefusalScopeError(
            f"{where}: a task needs `dataset:` (refusal prompts) or `capability:` (a benchmark)",
            f"capability benchmarks: {', '.join(CAPABILITY_TASKS)}",
        )
    if entry.get("role"):
        try:
            task.role = entry["role"]
        except AttributeError:
            raise RefusalScopeError(f"{where}: this task's role cannot be set") from None
    return TaskSpec(task, limit, seed)


def load_grid_file(path: str | Path) -> SweepPlan:
    """Read a grid file (YAML or JSON); paths in it are relative to the file.

        model: default                 # optional (--model overrides)
        data_dir: ../shared/data       # optional
        batch_size: 8
        max_new_tokens: 32             # refusal tasks' default
        gate: gate.json                # steering spec with one conditional: its gate and threshold,
                                       # or a probe folder (`refusalscope probes` -o F: F/gate-probe)
        methods:
          - {name: features, method: "features:cossim+ig", spec: features.json,
             strengths: [0.5, 1, 2, 4], conditional: both}
          - {name: actadd, method: "dense:actadd", spec: actadd.json, strengths: [1, 2, 4], conditional: both}
        tasks:
          - {name: jbb-harmful, dataset: harmful/jailbreakbench, limit: 20}
          - {name: jbb-benign, dataset: harmless/jailbreakbench, limit: 20}
          - {capability: mmlu, limit: 40}        # evaluation.capability.capability_task('mmlu')
          - {capability: gsm8k, limit: 10, options: {gsm8k_max_new_tokens: 128}}
        pairs: [{name: jbb, harmful: jbb-harmful, benign: jbb-benign}]   # optional (name too), beyond deltas.DATASET_PAIRS

    A method may bring its own gate (`gate:` in the method, same forms as above), so one
    grid compares gates on the same steering: e.g. `{name: dir-gated, spec: s.json,
    conditional: true, gate: gate.json}` beside `{name: probe-gated, spec: s.json,
    conditional: true, gate: {probe: runs/probes/gate-probe}}`
    (`evaluation.gate_comparison` tabulates what each gate does).

    A method's strengths multiply the magnitudes in its spec file (feature values, ActAdd
    coefficients, clamp values); the unsteered model is included unless `unsteered: false`.
    """
    from ..checks import choice, number

    path = Path(path)
    data = _read_mapping(path)
    _unknown(str(path), data, GRID_KEYS)
    where = str(path)
    batch_size = _opt_number(data, "batch_size", where, integer=True, minimum=1)
    chunk_size = _opt_number(data, "chunk_size", where, integer=True, minimum=1)
    max_new_tokens = _opt_number(data, "max_new_tokens", where, integer=True, minimum=1)
    for key in ("model", "data_dir", "note", "judge"):
        _opt_text(data, key, where)
    dtype = cast(DtypeName, choice(data.get("dtype", "auto"), f"{where}: dtype", choices(DtypeName)))
    if not isinstance(data.get("unsteered", True), bool):
        raise RefusalScopeError(f"{where}: unsteered must be true or false")
    pairs = data.get("pairs") or []
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise RefusalScopeError(f"{where}: pairs is a list of {{name, harmful, benign}} mappings")
    for i, p in enumerate(pairs):
        _unknown(f"pairs[{i}]", p, {"name", "harmful", "benign"})
        for key in ("harmful", "benign"):
            if not isinstance(p.get(key), str):
                raise RefusalScopeError(
                    f"pairs[{i}]: {key} must be a task name, got {p.get(key)!r}",
                    "e.g. pairs: [{name: jbb, harmful: jbb-harmful, benign: jbb-benign}]",
                )
        _opt_text(p, "name", f"pairs[{i}]")
    base = path.parent

    def rel(p):
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else base / q

    gate = _gate(data["gate"], f"{where}: gate", rel) if data.get("gate") is not None else None
    methods = []
    raw_methods = data.get("methods") or []
    if not isinstance(raw_methods, list):
        raise RefusalScopeError(f"{path}: 'methods' is a list")
    for i, m in enumerate(raw_methods):
        where = f"methods[{i}]"
        if not isinstance(m, dict):
            raise RefusalScopeError(f"{where}: a method is a mapping with at least 'spec'")
        _unknown(where, m, METHOD_KEYS)
        if not m.get("spec") or not isinstance(m["spec"], str):
            raise RefusalScopeError(f"{where}: a method needs a steering 'spec' file")
        for key in ("name", "method", "description"):
            _opt_text(m, key, where)
        strengths = m.get("strengths", [1.0])
        strengths = strengths if isinstance(strengths, list) else [strengths]
        if not strengths:
            raise RefusalScopeError(f"{where}: strengths is empty", "list at least one strength, e.g. [1, 2]")
        strengths = [number(x, f"{where}: strength") for x in strengths]
        methods.append(
            Method.from_steering(
                rel(m["spec"]),
                strengths,
                name=m.get("name"),
                method=m.get("method"),
                conditional=_conditional_setting(m.get("conditional"), where),
                gate=_gate(m["gate"], f"{where}.gate", rel) if m.get("gate") is not None else None,
                **({"description": m["description"]} if m.get("description") else {}),
            )
        )
    data_dir = rel(data["data_dir"]) if data.get("data_dir") else None
    defaults = {"data_dir": data_dir, "max_new_tokens": max_new_tokens, "judge": data.get("judge")}
    raw_tasks = data.get("tasks") or []
    if not raw_tasks or not isinstance(raw_tasks, list):
        raise RefusalScopeError(
            f"{path}: no tasks", "list tasks, e.g. tasks: [{dataset: harmful/jailbreakbench, limit: 20}]"
        )
    tasks = [_task_from_entry(t, i, defaults) for i, t in enumerate(raw_tasks)]
    pairs = [
        {"name": p.get("name") or f"{p['harmful']} − {p['benign']}", "harmful": p["harmful"], "benign": p["benign"]}
        for p in pairs
    ]
    return SweepPlan(
        Grid(methods, gate=gate, unsteered=data.get("unsteered", True)),
        tasks,
        model=data.get("model"),
        dtype=dtype,
        data_dir=data_dir,
        batch_size=batch_size or 16,
        chunk_size=chunk_size,
        pairs=list(pairs),
        note=data.get("note"),
    )
