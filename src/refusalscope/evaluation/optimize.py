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
file and study name resumes it and only runs the trials still missing.

Refusal is decided by `refused(prompts, steering) -> [bool]`; the default reads the
first-token refusal log-odds (> 0 is a refusal), one forward per prompt and no
generation — a proxy whose agreement with the judge refusalscope checks elsewhere
(`evaluation/first_token_check.py`); pass a judge-backed function for final numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RefusalScopeError
from ..stats import Estimate, bootstrap, difference, rate

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
        return set(self.harmful) | set(self.benign) | set(self.texts) | {str(getattr(i, "id", i)) for i in self.mc_items}


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


@dataclass
class SearchSpace:
    """Which steerings a trial may build.

    `candidates`: (layer, feature) pairs, best first (e.g. a selective or CosSim+IG order);
    `values`: each candidate's clamp value at strength 1 (e.g. its peak activation);
    `gate`: an optional factory threshold -> gate-wrapped steering, searched over
    `gate_thresholds` (low, high) alongside 'no gate'.
    """

    saes: dict[int, Any]
    candidates: list[tuple[int, int]]
    values: list[float]
    max_latents: int = 20
    strengths: tuple[float, float] = (0.1, 2.0)
    positions: tuple[str, ...] = POSITIONS
    gate: Callable[[list, float], Any] | None = None
    gate_thresholds: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise RefusalScopeError("the search space has no candidate latents", "pass ranked (layer, feature) pairs")
        if len(self.values) != len(self.candidates):
            raise RefusalScopeError(f"{len(self.values)} clamp values for {len(self.candidates)} candidates")
        lo, hi = self.strengths
        if not 0 < lo <= hi:
            raise RefusalScopeError(f"strengths must satisfy 0 < low <= high, got {self.strengths}")
        for p in self.positions:
            if p not in POSITIONS:
                raise RefusalScopeError(f"unknown positions '{p}' in the search space", f"use {' or '.join(POSITIONS)}")
        self.max_latents = max(1, min(int(self.max_latents), len(self.candidates)))

    def build(self, trial) -> list:
        """The interventions for an Optuna trial (or a FixedTrial of chosen parameters)."""
        from ..steering import FeatureSteer

        k = trial.suggest_int("k", 1, self.max_latents)
        strength = trial.suggest_float("strength", *self.strengths, log=True)
        positions = trial.suggest_categorical("positions", list(self.positions))
        by_layer: dict[int, tuple[list[int], list[float]]] = {}
        for (layer, feature), value in zip(self.candidates[:k], self.values[:k]):
            feats, vals = by_layer.setdefault(layer, ([], []))
            feats.append(feature)
            vals.append(value * strength)
        items = [
            FeatureSteer(self.saes[layer], feats, "set", vals, positions=positions, layer=layer)
            for layer, (feats, vals) in sorted(by_layer.items())
        ]
        if self.gate is not None and trial.suggest_categorical("gate", ["none", "gated"]) == "gated":
            threshold = trial.suggest_float("threshold", *self.gate_thresholds)
            items = [self.gate(items, threshold)]
        return items


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

    def describe(self) -> str:
        lines = [f"study {self.study_name}: {self.n_trials} trials, {self.n_feasible} within the budget "
                 f"(text loss +{self.budget.max_loss_increase:.0%}, MC −{self.budget.max_mc_drop:.2f})"]
        if self.chosen is None:
            lines.append("no configuration met the budget on the validation split; nothing was chosen")
            return "\n".join(lines)
        lines.append(f"chosen: {self.chosen}")
        base, m = self.baseline_test, self.chosen_test
        lines.append(f"test split, unsteered → chosen: Δs {base.delta_s} → {m.delta_s}; harmful refusal "
                     f"{base.harmful_refusal} → {m.harmful_refusal}; benign refusal {base.benign_refusal} → "
                     f"{m.benign_refusal}; text loss {base.text_loss} → {m.text_loss}")
        if m.mc_accuracy is not None:
            lines.append(f"multiple choice: {base.mc_accuracy} → {m.mc_accuracy}")
        return "\n".join(lines)


def first_token_refusals(chat, refusal_token_ids: Sequence[int], batch_size: int = 16) -> Callable:
    """refused(prompts, steering): first-token refusal log-odds > 0 (see the module docstring)."""
    from ..judges.first_token import refusal_score

    def refused(prompts, steering):
        scores = refusal_score(chat, prompts, refusal_token_ids, batch_size=batch_size, interventions=steering)
        return (scores > 0).tolist()

    return refused


def measure(chat, steering, split: Split, refused: Callable, *, batch_size: int = 16, seed: int = 0) -> Measurement:
    """Refusal rates, Δs, text loss and (when given) multiple-choice accuracy under `steering`."""
    from ..evaluation.loss import per_document_ce
    from ..sae.activations import Document

    harm = [bool(x) for x in refused(split.harmful, steering)]
    benign = [bool(x) for x in refused(split.benign, steering)]
    docs = [Document(chat.encode(t), "text") for t in split.texts]
    losses = [v for v in per_document_ce(chat, docs, steering, batch_size) if not math.isnan(v)]
    mc = None
    if split.mc_task is not None and split.mc_items:
        results = split.mc_task.run(chat, split.mc_items, steering, batch_size)
        mc = rate([r.metrics["correct"] > 0.5 for r in results], seed=seed)
    return Measurement(
        harmful_refusal=rate(harm, seed=seed), benign_refusal=rate(benign, seed=seed),
        delta_s=difference([float(x) for x in harm], [float(x) for x in benign], seed=seed),
        text_loss=bootstrap(losses, seed=seed), mc_accuracy=mc,
    )


def _violations(m: Measurement, base: Measurement, budget: Budget) -> list[float]:
    """Optuna constraint values (≤ 0 means met): relative loss increase and MC drop over budget."""
    out = [(m.text_loss.value - base.text_loss.value) / max(abs(base.text_loss.value), 1e-9) - budget.max_loss_increase]
    if m.mc_accuracy is not None and base.mc_accuracy is not None:
        out.append((base.mc_accuracy.value - m.mc_accuracy.value) - budget.max_mc_drop)
    return out


def _check_splits(validation: Split, test: Split) -> None:
    for name, split in (("validation", validation), ("test", test)):
        if not split.harmful or not split.benign or not split.texts:
            raise RefusalScopeError(f"the {name} split needs harmful prompts, benign prompts and texts")
    shared = validation.keys() & test.keys()
    if shared:
        raise RefusalScopeError(
            f"the validation and test splits share {len(shared)} inputs (e.g. {sorted(shared)[0]!r})",
            "hold the test split out of the search: draw disjoint splits",
        )


def optimize(
    chat,
    space: SearchSpace,
    validation: Split,
    test: Split,
    *,
    storage: str | Path,
    study_name: str = "refusalscope-optimize",
    n_trials: int = 50,
    budget: Budget | None = None,
    refused: Callable | None = None,
    refusal_token_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> OptimizeResult:
    """Run (or resume) the study in the SQLite file `storage` until it holds `n_trials`
    finished trials; choose the best feasible one on `validation`; measure it on `test`."""
    try:
        import optuna
    except ImportError:
        raise RefusalScopeError("refusalscope optimize needs Optuna", "pip install 'refusalscope[optimize]'") from None
    from ..checks import output_file

    budget = budget or Budget()
    _check_splits(validation, test)
    if refused is None:
        if refusal_token_ids is None:
            raise RefusalScopeError("no way to decide refusals was given", "pass refused=… or refusal_token_ids=…")
        refused = first_token_refusals(chat, refusal_token_ids, batch_size)
    path = output_file(storage, "study file")
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{path.resolve()}"

    base_val = measure(chat, None, validation, refused, batch_size=batch_size, seed=seed)

    def objective(trial) -> float:
        steering = space.build(trial)
        m = measure(chat, steering, validation, refused, batch_size=batch_size, seed=seed)
        trial.set_user_attr("validation", m.to_dict())
        violations = _violations(m, base_val, budget)
        trial.set_user_attr("constraints", violations)
        for name, value in zip(("text_loss", "multiple_choice"), violations):
            trial.set_constraint(name, value)  # TPE models feasibility from these
        return m.delta_s.value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(study_name=study_name, storage=url, direction="maximize", sampler=sampler, load_if_exists=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < n_trials:
        study.optimize(objective, n_trials=n_trials - len(done))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in done if all(c <= 0 for c in t.user_attrs.get("constraints", [1.0]))]
    trials = [{"number": t.number, "params": t.params, "value": t.value, "feasible": t in feasible,
               "validation": t.user_attrs.get("validation")} for t in done]
    best = max(feasible, key=lambda t: (t.value, -t.number)) if feasible else None
    chosen_test = base_test = None
    if best is not None:
        steering = space.build(optuna.trial.FixedTrial(best.params))
        base_test = measure(chat, None, test, refused, batch_size=batch_size, seed=seed)
        chosen_test = measure(chat, steering, test, refused, batch_size=batch_size, seed=seed)
    return OptimizeResult(
        study_name=study_name, storage=str(path), n_trials=len(done), n_feasible=len(feasible), budget=budget,
        baseline_validation=base_val, baseline_test=base_test,
        chosen=None if best is None else dict(best.params),
        chosen_validation=None if best is None else best.user_attrs.get("validation"),
        chosen_test=chosen_test, trials=trials,
    )

