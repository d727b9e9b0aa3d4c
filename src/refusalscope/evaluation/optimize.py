"""Trade-off search: the steering configuration with the best Δs inside a capability budget.

Clamping refusal latents raises refusal of harmful requests and of benign ones, and costs
text loss; a grid at a few strengths rarely lands on the best trade-off. This searches
over latent subsets (a prefix of a ranked candidate list: the top k), strength (× each
latent's clamp value), positions (prompt only / all) and an optional gate threshold with
Optuna's TPE sampler, maximising Δs = refusal(harmful) − refusal(benign) on a
*validation* split subject to a capability budget (relative text-loss increase and
multiple-choice accuracy drop against the unsteered model). The chosen configuration is
then measured once on a disjoint *test* split, so the reported numbers are not selected
on the data that chose them.

The study lives in an SQLite file (e.g. beside the sweep): rerunning with the same
file and study name resumes it and only runs the trials still missing. A study records the
settings it was started with (`settings=`); resuming it with others is refused, since trials
measured on other splits or budgets cannot be compared.

`compare` runs one study per *method family* (SAE latents, gated latents, latents and the
dense direction projected off the benign subspace, the learned null-space map: see
`evaluation/families.py`) in the same file, against one unsteered baseline, so every
family is tuned with the same budget and number of trials and measured on the same test
split; `evaluation/pareto.py` draws the trade-off and the headline table from it.

Refusal is decided by `refused(prompts, steering) -> [bool]`; the default reads the
first-token refusal log-odds (> 0 is a refusal), one forward per prompt and no
generation — a proxy whose agreement with the judge refusalscope checks elsewhere
(`evaluation/first_token_check.py`); pass a judge-backed function for final numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RefusalScopeError
from ..stats import Estimate, bootstrap, difference, rate

if TYPE_CHECKING:
    from ..steering.kinds import Intervention

POSITIONS = ("prompt", "all")


@dataclass
class Split:
    """What one measurement runs on. Validation and test splits must not share inputs."""

    harmful: list[str]
    benign: list[str]
    texts: list[str]
    mc_task: Any = None  # a capability task with .run(chat, items, interventions) (e.g. MMLU, ARC)
    mc_items: list = field(default_factory=list)

    def keys(self) -> set[str]:
        return (
            set(self.harmful) | set(self.benign) | set(self.texts) | {str(getattr(i, "id", i)) for i in self.mc_items}
        )


@dataclass
class Budget:
    """How much capability a configuration may cost, against the unsteered model."""

    max_loss_increase: float = 0.02  # relative: 0.02 = text loss at most 2% higher
    max_mc_drop: float = 0.05  # absolute accuracy points (0.05 = 5 points)


@dataclass
class Measurement:
    harmful_refusal: Estimate
    benign_refusal: Estimate
    delta_s: Estimate
    text_loss: Estimate
    mc_accuracy: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if v is None else v.to_dict()) for k, v in self.__dict__.items()}


def choose_gate(trial, items: list, gate: Callable | None, gated: bool | None, thresholds: tuple[float, float]) -> list:
    """Wrap `items` in the gate when the trial (or the family) says so.

    `gated`: None searches 'none' vs 'gated' (a categorical parameter), True always gates,
    False never does; a gated trial also chooses the threshold within `thresholds`."""
    if gate is None or gated is False:
        return items
    if gated is None and trial.suggest_categorical("gate", ["none", "gated"]) == "none":
        return items
    threshold = trial.suggest_float("threshold", *thresholds)
    return [gate(items, threshold)]


def _check_common(name: str, strengths: tuple[float, float], positions: Sequence[str], gate, gated) -> None:
    lo, hi = strengths
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise RefusalScopeError(f"strengths must satisfy 0 < low <= high, got {strengths}")
    if not positions:
        raise RefusalScopeError(f"the '{name}' search space allows no positions", f"use {' and/or '.join(POSITIONS)}")
    for p in positions:
        if p not in POSITIONS:
            raise RefusalScopeError(f"unknown positions '{p}' in the search space", f"use {' or '.join(POSITIONS)}")
    if gated and gate is None:
        raise RefusalScopeError(
            f"the '{name}' family is always gated but has no gate", "pass gate=… (a threshold -> Conditional factory)"
        )


@dataclass
class SearchSpace:
    """Which SAE-latent steerings a trial may build.

    `candidates`: (layer, feature) pairs, best first (e.g. a selective or CosSim+IG order);
    `values`: each candidate's clamp value at strength 1 (e.g. its peak activation);
    `gate`: an optional factory (interventions, threshold) -> gate-wrapped steering, searched
    over `gate_thresholds` (low, high); `gated` None searches 'no gate' too, True always
    gates, False never; `basis`: {layer: benign basis} projects each layer's clamp off the
    benign subspace (null-space steering, `steering/nullspace.py`).
    """

    saes: dict[int, Any]
    candidates: list[tuple[int, int]]
    values: list[float]
    max_latents: int = 20
    strengths: tuple[float, float] = (0.1, 2.0)
    positions: tuple[str, ...] = POSITIONS
    gate: Callable[[list, float], Any] | None = None
    gate_thresholds: tuple[float, float] = (-1.0, 1.0)
    name: str = "features"
    gated: bool | None = None
    basis: dict[int, Any] | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise RefusalScopeError("the search space has no candidate latents", "pass ranked (layer, feature) pairs")
        if len(self.values) != len(self.candidates):
            raise RefusalScopeError(f"{len(self.values)} clamp values for {len(self.candidates)} candidates")
        _check_common(self.name, self.strengths, self.positions, self.gate, self.gated)
        if self.basis is not None:
            missing = sorted({layer for layer, _ in self.candidates} - set(self.basis))
            if missing:
                raise RefusalScopeError(
                    f"no benign basis for layer(s) {missing} of the candidates", "estimate one per steered layer"
                )
        self.max_latents = max(1, min(int(self.max_latents), len(self.candidates)))

    def build(self, trial) -> list:
        """The interventions for an Optuna trial (or a FixedTrial of chosen parameters)."""
        from ..steering import FeatureSteer, NullSpaceProjection

        k = trial.suggest_int("k", 1, self.max_latents)
        strength = trial.suggest_float("strength", *self.strengths, log=True)
        positions = trial.suggest_categorical("positions", list(self.positions))
        by_layer: dict[int, tuple[list[int], list[float]]] = {}
        for (layer, feature), value in zip(self.candidates[:k], self.values[:k]):
            feats, vals = by_layer.setdefault(layer, ([], []))
            feats.append(feature)
            vals.append(value * strength)
        items: list[Intervention] = [
            FeatureSteer(self.saes[layer], feats, "set", vals, positions=positions, layer=layer)
            for layer, (feats, vals) in sorted(by_layer.items())
        ]
        if self.basis is not None:
            basis = self.basis
            items = [NullSpaceProjection(item, basis[layer]) for item, layer in zip(items, sorted(by_layer))]
        return choose_gate(trial, items, self.gate, self.gated, self.gate_thresholds)


@dataclass
class ScaledSpace:
    """A family with one magnitude: `make(strength, positions)` builds its interventions
    (a dense ActAdd, its null-space projection, the learned null-space map); a trial
    chooses the strength (log scale), the positions and, as for `SearchSpace`, a gate."""

    name: str
    make: Callable[[float, str], list]
    strengths: tuple[float, float] = (0.1, 2.0)
    positions: tuple[str, ...] = POSITIONS
    gate: Callable[[list, float], Any] | None = None
    gate_thresholds: tuple[float, float] = (-1.0, 1.0)
    gated: bool | None = None

    def __post_init__(self) -> None:
        _check_common(self.name, self.strengths, self.positions, self.gate, self.gated)

    def build(self, trial) -> list:
        strength = trial.suggest_float("strength", *self.strengths, log=True)
        positions = trial.suggest_categorical("positions", list(self.positions))
        return choose_gate(trial, list(self.make(strength, positions)), self.gate, self.gated, self.gate_thresholds)


@dataclass
class OptimizeResult:
    """The search's outcome: every trial's validation numbers and the chosen one's test numbers."""

    study_name: str
    storage: str
    n_trials: int
    n_feasible: int
    budget: Budget
    baseline_validation: Measurement
    baseline_test: Measurement | None
    chosen: dict[str, Any] | None  # Optuna parameters of the best feasible trial
    chosen_validation: dict[str, Any] | None
    chosen_test: Measurement | None
    trials: list[dict[str, Any]]
    family: str = "features"
    chosen_trial: int | None = None
    chosen_steering: list | None = None  # the chosen interventions (not serialised; Steering(...).save writes them)

    def describe(self) -> str:
        lines = [
            f"study {self.study_name}: {self.n_trials} trials, {self.n_feasible} within the budget "
            f"(text loss +{self.budget.max_loss_increase:.0%}, MC −{self.budget.max_mc_drop:.2f})"
        ]
        if self.chosen is None:
            lines.append("no configuration met the budget on the validation split; nothing was chosen")
            return "\n".join(lines)
        lines.append(f"chosen: {self.chosen}")
        base, m = self.baseline_test, self.chosen_test
        assert base is not None and m is not None  # both are measured whenever a configuration is chosen
        lines.append(
            f"test split, unsteered → chosen: Δs {base.delta_s} → {m.delta_s}; harmful refusal "
            f"{base.harmful_refusal} → {m.harmful_refusal}; benign refusal {base.benign_refusal} → "
            f"{m.benign_refusal}; text loss {base.text_loss} → {m.text_loss}"
        )
        if m.mc_accuracy is not None:
            lines.append(f"multiple choice: {base.mc_accuracy} → {m.mc_accuracy}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def est(m):
            return None if m is None else m.to_dict()

        return {
            "family": self.family,
            "study_name": self.study_name,
            "storage": self.storage,
            "n_trials": self.n_trials,
            "n_feasible": self.n_feasible,
            "budget": dict(self.budget.__dict__),
            "baseline_validation": est(self.baseline_validation),
            "baseline_test": est(self.baseline_test),
            "chosen": self.chosen,
            "chosen_trial": self.chosen_trial,
            "chosen_validation": self.chosen_validation,
            "chosen_test": est(self.chosen_test),
            "trials": self.trials,
        }


def first_token_refusals(
    chat, refusal_token_ids: Sequence[int], batch_size: int = 16, threshold: float = 0.0
) -> Callable:
    """refused(prompts, steering): first-token refusal log-odds > `threshold` (see the module
    docstring; `pipeline.first_token_calibration` fits the threshold against a reply judge)."""
    from ..judges.first_token import refusal_score

    def refused(prompts, steering):
        scores = refusal_score(chat, prompts, refusal_token_ids, batch_size=batch_size, interventions=steering)
        return (scores > threshold).tolist()

    return refused


def reply_refusals(chat, judge, max_new_tokens: int = 24, batch_size: int = 16) -> Callable:
    """refused(prompts, steering): generate greedy replies under the steering and ask `judge`.

    Slower than the first-token proxy (a generation per prompt), and what the chosen
    configurations' test numbers should rest on: strong steering can make the first token
    and the reply disagree."""

    def refused(prompts, steering):
        replies = chat.generate(
            list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, interventions=steering, progress=False
        ).texts
        return [v.refused for v in judge.judge(list(prompts), replies)]

    return refused


def measure(
    chat, steering, split: Split, refused: Callable, *, batch_size: int = 16, seed: int = 0, text_window: int = 128
) -> Measurement:
    """Refusal rates, Δs, text loss (nats/token on each text's first `text_window` tokens)
    and (when given) multiple-choice accuracy under `steering`."""
    from ..evaluation.loss import per_document_ce
    from ..sae.activations import Document

    harm = [bool(x) for x in refused(split.harmful, steering)]
    benign = [bool(x) for x in refused(split.benign, steering)]
    docs = [Document(chat.encode(t)[:text_window], "text") for t in split.texts]
    losses = [v for v in per_document_ce(chat, docs, steering, batch_size) if not math.isnan(v)]
    mc = None
    if split.mc_task is not None and split.mc_items:
        results = split.mc_task.run(chat, split.mc_items, steering, batch_size)
        mc = rate([r.metrics["correct"] > 0.5 for r in results], seed=seed)
    return Measurement(
        harmful_refusal=rate(harm, seed=seed),
        benign_refusal=rate(benign, seed=seed),
        delta_s=difference([float(x) for x in harm], [float(x) for x in benign], seed=seed),
        text_loss=bootstrap(losses, seed=seed),
        mc_accuracy=mc,
    )


def measurement_from_dict(d: dict[str, Any] | None) -> Measurement | None:
    """A Measurement back from `Measurement.to_dict()` (as a study stores it)."""
    if d is None:
        return None
    fields: dict[str, Any] = {k: None if v is None else Estimate(**v) for k, v in d.items()}
    return Measurement(**fields)


def _violations(m: Measurement, base: Measurement, budget: Budget) -> list[float]:
    """Optuna constraint values (≤ 0 means met): relative loss increase and MC drop over budget."""
    out = [(m.text_loss.value - base.text_loss.value) / max(abs(base.text_loss.value), 1e-9) - budget.max_loss_increase]
    if m.mc_accuracy is not None and base.mc_accuracy is not None:
        out.append((base.mc_accuracy.value - m.mc_accuracy.value) - budget.max_mc_drop)
    return out


def one_prompt_per_behaviour(items: Sequence[Any], seed: int) -> tuple[list[str], int]:
    """The items' prompts in a seeded shuffle, at most one per behaviour.

    Jailbreak artifact sets hold several attacks on the same behaviour (PAIR: 237 prompts on
    91 JailbreakBench behaviours). Were two of them to land in the validation and the test
    split, the test would not be held out; were two in one split, its n would overstate the
    independent evidence. An item's behaviour is `meta["behavior_id"]`, else its own id, so
    sets without behaviour ids keep every prompt in the same order as a plain shuffle.
    Returns the prompts and how many were left out."""
    from ..data.records import item_text

    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)  # datasets keep their file order (JailbreakBench is sorted by category)
    seen: set[str] = set()
    kept = []
    for item in shuffled:
        key = item.meta.get("behavior_id") or item.id
        if key not in seen:
            seen.add(key)
            kept.append(item_text(item))
    return kept, len(shuffled) - len(kept)


def check_splits(validation: Split, test: Split) -> None:
    """Both splits have every part, and they share no input (the test split stays held out)."""
    for name, split in (("validation", validation), ("test", test)):
        if not split.harmful or not split.benign or not split.texts:
            raise RefusalScopeError(f"the {name} split needs harmful prompts, benign prompts and texts")
    shared = validation.keys() & test.keys()
    if shared:
        raise RefusalScopeError(
            f"the validation and test splits share {len(shared)} inputs (e.g. {sorted(shared)[0]!r})",
            "hold the test split out of the search: draw disjoint splits",
        )


def study_url(storage: str | Path) -> tuple[Path, str]:
    """(path, SQLAlchemy URL) of a study file, checked as an output path."""
    from ..checks import output_file

    path = output_file(storage, "study file")
    return path, f"sqlite:///{path.resolve()}"


def import_optuna():
    """Optuna (the `optimize` extra), quiet; a clear error when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise RefusalScopeError("refusalscope optimize needs Optuna", "pip install 'refusalscope[optimize]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _settings_key(settings: dict[str, Any]) -> str:
    import json

    return json.dumps(settings, sort_keys=True, default=str)


def _check_settings(stored: str | None, settings: dict[str, Any], name: str, path: str) -> None:
    import json

    key = _settings_key(settings)
    if stored is not None and stored != key:
        theirs, ours = json.loads(stored), json.loads(key)
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise RefusalScopeError(
            f"study '{name}' in {path} was run with other settings ({', '.join(changed)})",
            "use a new output folder, or the settings it was started with (trials on other splits or budgets "
            "cannot be compared)",
        )


def check_study(storage: str | Path, study_prefix: str, settings: dict[str, Any]) -> None:
    """Refuse, before any model work, to resume a comparison started with other settings."""
    path = Path(storage)
    if not path.is_file():
        return
    optuna = import_optuna()
    url = f"sqlite:///{path.resolve()}"
    name = f"{study_prefix}-baseline"
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises its own errors for a file that is not a study
        raise RefusalScopeError(
            f"{path} is not an Optuna study file ({type(exc).__name__})",
            "choose another output folder, or remove the file",
        ) from None
    _check_settings(study.user_attrs.get("settings"), settings, name, str(path))


def _open_study(optuna, url: str, name: str, seed: int, settings: dict[str, Any] | None):
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(
        study_name=name, storage=url, direction="maximize", sampler=sampler, load_if_exists=True
    )
    if settings is not None:
        stored = study.user_attrs.get("settings")
        _check_settings(stored, settings, name, url.removeprefix("sqlite:///"))
        if stored is None:
            study.set_user_attr("settings", _settings_key(settings))
    return study


def optimize(
    chat,
    space: SearchSpace | ScaledSpace,
    validation: Split,
    test: Split,
    *,
    storage: str | Path,
    study_name: str = "refusalscope-optimize",
    n_trials: int = 50,
    budget: Budget | None = None,
    refused: Callable | None = None,
    refusal_token_ids: Sequence[int] | None = None,
    test_refused: Callable | None = None,
    batch_size: int = 16,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    baseline_validation: Measurement | None = None,
    baseline_test: Measurement | None = None,
    callbacks: Sequence[Callable] = (),
) -> OptimizeResult:
    """Run (or resume) the study in the SQLite file `storage` until it holds `n_trials`
    finished trials; choose the best feasible one on `validation`; measure it on `test`
    (with `test_refused` when given, e.g. a reply judge, else `refused`).

    Baselines may be passed in (`compare` measures them once for every family). The
    chosen configuration's test numbers are stored in the study, so a rerun that chooses
    the same trial measures nothing again."""
    optuna = import_optuna()
    budget = budget or Budget()
    check_splits(validation, test)
    if refused is None:
        if refusal_token_ids is None:
            raise RefusalScopeError("no way to decide refusals was given", "pass refused=… or refusal_token_ids=…")
        refused = first_token_refusals(chat, refusal_token_ids, batch_size)
    test_refused = test_refused or refused
    path, url = study_url(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = _open_study(optuna, url, study_name, seed, settings)
    family = getattr(space, "name", "features")
    study.set_user_attr("family", family)
    study.set_user_attr("budget", dict(budget.__dict__))

    base_val = baseline_validation or measurement_from_dict(study.user_attrs.get("baseline_validation"))
    if base_val is None:
        base_val = measure(chat, None, validation, refused, batch_size=batch_size, seed=seed)
    study.set_user_attr("baseline_validation", base_val.to_dict())

    def objective(trial) -> float:
        steering = space.build(trial)
        m = measure(chat, steering, validation, refused, batch_size=batch_size, seed=seed)
        trial.set_user_attr("validation", m.to_dict())
        violations = _violations(m, base_val, budget)
        trial.set_user_attr("constraints", violations)
        for name, value in zip(("text_loss", "multiple_choice"), violations):
            trial.set_constraint(name, value)  # TPE models feasibility from these
        return m.delta_s.value

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < n_trials:
        study.optimize(objective, n_trials=n_trials - len(done), callbacks=list(callbacks))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in done if all(c <= 0 for c in t.user_attrs.get("constraints", [1.0]))]
    trials = [
        {
            "number": t.number,
            "family": family,
            "params": t.params,
            "value": t.value,
            "feasible": t in feasible,
            "validation": t.user_attrs.get("validation"),
        }
        for t in done
    ]
    best = max(feasible, key=lambda t: (t.value, -t.number)) if feasible else None
    chosen_test = base_test = steering = None
    if best is not None:
        steering = space.build(optuna.trial.FixedTrial(best.params))
        stored = study.user_attrs.get("test") or {}
        base_test = baseline_test or measurement_from_dict(study.user_attrs.get("baseline_test"))
        if base_test is None:
            base_test = measure(chat, None, test, test_refused, batch_size=batch_size, seed=seed)
        if stored.get("trial") == best.number:
            chosen_test = measurement_from_dict(stored["measurement"])
        else:
            chosen_test = measure(chat, steering, test, test_refused, batch_size=batch_size, seed=seed)
            study.set_user_attr(
                "test", {"trial": best.number, "params": dict(best.params), "measurement": chosen_test.to_dict()}
            )
        study.set_user_attr("baseline_test", base_test.to_dict())
    return OptimizeResult(
        study_name=study_name,
        storage=str(path),
        n_trials=len(done),
        n_feasible=len(feasible),
        budget=budget,
        baseline_validation=base_val,
        baseline_test=base_test,
        chosen=None if best is None else dict(best.params),
        chosen_validation=None if best is None else best.user_attrs.get("validation"),
        chosen_test=chosen_test,
        trials=trials,
        family=family,
        chosen_trial=None if best is None else best.number,
        chosen_steering=steering,
    )


@dataclass
class Comparison:
    """One tuned study per method family against one unsteered baseline (see `compare`)."""

    budget: Budget
    baseline_validation: Measurement
    baseline_test: Measurement
    results: dict[str, OptimizeResult]
    storage: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "refusalscope-optimize",
            "version": 1,
            "storage": self.storage,
            "budget": dict(self.budget.__dict__),
            "settings": self.settings,
            "baseline_validation": self.baseline_validation.to_dict(),
            "baseline_test": self.baseline_test.to_dict(),
            "families": {name: r.to_dict() for name, r in self.results.items()},
        }


def compare(
    chat,
    spaces: Sequence[SearchSpace | ScaledSpace],
    validation: Split,
    test: Split,
    *,
    storage: str | Path,
    n_trials: int = 12,
    budget: Budget | None = None,
    refused: Callable,
    test_refused: Callable | None = None,
    batch_size: int = 16,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
    study_prefix: str = "refusalscope",
    progress: bool = False,
) -> Comparison:
    """Tune every family in `spaces` (one study each, `n_trials` trials, same budget) and
    measure each family's choice and the unsteered model once on the test split."""
    optuna = import_optuna()
    budget = budget or Budget()
    check_splits(validation, test)
    names = [s.name for s in spaces]
    if not spaces or len(set(names)) != len(names):
        raise RefusalScopeError(
            f"method families must be given once each, got {names}", "name each search space differently"
        )
    test_refused = test_refused or refused
    path, url = study_url(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the unsteered baselines live in a study of their own (no trials), so a rerun reuses them
    holder = _open_study(optuna, url, f"{study_prefix}-baseline", seed, settings)
    base_val = measurement_from_dict(holder.user_attrs.get("baseline_validation"))
    if base_val is None:
        base_val = measure(chat, None, validation, refused, batch_size=batch_size, seed=seed)
        holder.set_user_attr("baseline_validation", base_val.to_dict())
    base_test = measurement_from_dict(holder.user_attrs.get("baseline_test"))
    if base_test is None:
        base_test = measure(chat, None, test, test_refused, batch_size=batch_size, seed=seed)
        holder.set_user_attr("baseline_test", base_test.to_dict())

    bar = None
    if progress:
        from tqdm.auto import tqdm

        finished = 0
        for space in spaces:
            try:
                study = optuna.load_study(study_name=f"{study_prefix}-{space.name}", storage=url)
                finished += min(n_trials, sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials))
            except KeyError:
                pass
        bar = tqdm(total=n_trials * len(spaces), initial=finished, desc="trials", unit="trial")
    results: dict[str, OptimizeResult] = {}
    try:
        for space in spaces:
            if bar is not None:
                bar.set_postfix_str(space.name)
            callbacks = [lambda study, trial: bar.update()] if bar is not None else []
            results[space.name] = optimize(
                chat,
                space,
                validation,
                test,
                storage=path,
                study_name=f"{study_prefix}-{space.name}",
                n_trials=n_trials,
                budget=budget,
                refused=refused,
                test_refused=test_refused,
                batch_size=batch_size,
                seed=seed,
                settings=settings,
                baseline_validation=base_val,
                baseline_test=base_test,
                callbacks=callbacks,
            )
    finally:
        if bar is not None:
            bar.close()
    return Comparison(budget, base_val, base_test, results, str(path), dict(settings or {}))
