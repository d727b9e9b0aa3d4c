"""Causal validation of selected latents, against baselines (Yeo et al., Table 1 style).

For each latent set (the selected one and each baseline):
  - suppress: scale the latents by a negative factor on harmful prompts → compliance
    (jailbreak) rate, per harmful dataset;
  - induce: clamp the latents to a multiple of their peak activation on harmful prompts,
    on harmless prompts → refusal rate;
  - side effects: cross-entropy on ordinary text and on the model's own harmless answers
    under the intervention, against the unsteered loss.
The dense refusal direction is the reference: ablation at every layer for 'suppress',
activation addition (multiples of the difference-of-means vector) for 'induce'. Replies
are judged by the default reply judge, the learned request-aware judge (validated against
human labels: `refusalscope judge-validate`); the report's config names it and its version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..errors import RefusalScopeError
from ..evaluation.loss import cross_entropy
from ..generations import cached_replies
from ..sae.model import SAE
from ..stats import Estimate, rate
from ..steering.interventions import ActAdd, DirectionAblation, FeatureSteer
from ..steering.kinds import Intervention
from ..types import Mode

if TYPE_CHECKING:
    from ..direction import RefusalDirection
    from ..judges.base import Judge
    from ..models.chat import ChatModel
    from ..types import Interventions

DENSE = "dense direction"


@dataclass
class ValidationConfig:
    suppress_factors: tuple[float, ...] = (-1.0, -2.0, -3.0)
    induce_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0)
    max_new_tokens: int = 24
    batch_size: int = 16
    capability_factor: float | None = None  # suppress strength for the side-effect losses (default: middle)
    capability_multiplier: float | None = None
    # induce with only each set's top-n latents (None: all of them). Clamping many latents
    # at once at a multiple of their harmful peak pushes the residual stream off its
    # distribution: on the default model all 20 CosSim+IG latents at 2x give broken text
    # (and no refusal) where the top 3 give refusals, so a small n isolates the effect.
    induce_top: int | None = None


@dataclass
class ValidationRow:
    method: str
    experiment: str  # baseline | suppress | induce
    dataset: str
    strength: float | None
    metric: str  # compliance | refusal | ce_text | ce_answers
    estimate: Estimate

    def to_dict(self) -> dict:
        out = asdict(self)
        out["estimate"] = self.estimate.to_dict()
        return out


@dataclass
class ValidationReport:
    rows: list[ValidationRow] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": self.config, "rows": [r.to_dict() for r in self.rows], "examples": self.examples}

    def lookup(
        self, method: str, experiment: str, dataset: str, strength=None, metric: str | None = None
    ) -> Estimate | None:
        for r in self.rows:
            if (
                (r.method, r.experiment, r.dataset) == (method, experiment, dataset)
                and (strength is None or r.strength == strength)
                and (metric is None or r.metric == metric)
            ):
                return r.estimate
        return None


def feature_interventions(
    saes: Mapping[int, SAE], pairs: Sequence[tuple[int, int]], mode: Mode, values: float | dict[tuple[int, int], float]
) -> list[FeatureSteer]:
    """One FeatureSteer per layer; `values` is a number or {(layer, feature): value}."""
    by_layer: dict[int, list[int]] = {}
    for layer, feature in pairs:
        by_layer.setdefault(layer, []).append(feature)
    out = []
    for layer, feats in sorted(by_layer.items()):
        if layer not in saes:
            raise RefusalScopeError(f"no SAE for layer {layer}", "pass the SAEs the features were selected from")
        vals = [values[(layer, f)] for f in feats] if isinstance(values, dict) else float(values)
        out.append(FeatureSteer(saes[layer], feats, mode, vals))
    return out


def clamp_values(pairs, peaks: dict[int, torch.Tensor], multiplier: float) -> dict[tuple[int, int], float]:
    """multiplier × each latent's peak activation on harmful prompts (latents that never
    fired get the median peak of the set, so they are still driven to a typical value)."""
    raw = {(l, f): float(peaks[l][f]) for l, f in pairs}
    alive = sorted(v for v in raw.values() if v > 0)
    fallback = alive[len(alive) // 2] if alive else 1.0
    return {key: multiplier * (v if v > 0 else fallback) for key, v in raw.items()}


def _refusals(
    chat: ChatModel, judge: Judge, prompts, interventions: Interventions, cfg: ValidationConfig
) -> tuple[list[bool], list[str]]:
    if interventions is None:
        replies = cached_replies(
            chat, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False
        )
    else:
        replies = chat.generate(
            list(prompts),
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            interventions=interventions,
            progress=False,
        ).texts
    return [v.refused for v in judge.judge(list(prompts), replies)], replies


def validate(
    chat: ChatModel,
    saes: Mapping[int, SAE],
    sets: Mapping[str, Sequence[tuple[int, int]]],
    direction: RefusalDirection,
    harmful_sets: Mapping[str, Sequence[str]],
    harmless: Sequence[str],
    peaks: dict[int, torch.Tensor],
    cfg: ValidationConfig | None = None,
    judge: Judge | None = None,
    text_docs=None,
    answer_docs=None,
    progress: bool = True,
) -> ValidationReport:
    """Run suppress / induce / side-effect experiments for every latent set and the dense direction."""
    from ..judges.named import default_judge

    cfg = cfg or ValidationConfig()
    if not harmful_sets or not harmless:
        raise RefusalScopeError("validation needs harmful and harmless prompts")
    if cfg.induce_top is not None and cfg.induce_top < 1:
        raise RefusalScopeError(
            f"induce_top must be at least 1, got {cfg.induce_top}",
            "pass the number of top-ranked latents to clamp, or None for all of them",
        )
    judge = judge or default_judge()
    report = ValidationReport(config={**asdict(cfg), "judge": getattr(judge, "name", type(judge).__name__)})
    methods = list(sets) + ([DENSE] if direction is not None else [])
    cap_factor = (
        cfg.capability_factor
        if cfg.capability_factor is not None
        else cfg.suppress_factors[len(cfg.suppress_factors) // 2]
    )
    cap_mult = (
        cfg.capability_multiplier
        if cfg.capability_multiplier is not None
        else cfg.induce_multipliers[len(cfg.induce_multipliers) // 2]
    )
    n_jobs = (len(harmful_sets) + 1) + len(methods) * (
        len(cfg.suppress_factors) * len(harmful_sets) + len(cfg.induce_multipliers)
    )
    bar = tqdm(total=n_jobs, desc="causal validation", disable=not progress)

    def add(method, experiment, dataset, strength, metric, flags_or_est):
        est = flags_or_est if isinstance(flags_or_est, Estimate) else rate(flags_or_est)
        report.rows.append(ValidationRow(method, experiment, dataset, strength, metric, est))

    def losses(method, experiment, strength, interventions: Interventions):
        if text_docs:
            add(
                method,
                experiment,
                "text",
                strength,
                "ce_text",
                cross_entropy(chat, text_docs, interventions, cfg.batch_size),
            )
        if answer_docs:
            add(
                method,
                experiment,
                "own answers",
                strength,
                "ce_answers",
                cross_entropy(chat, answer_docs, interventions, cfg.batch_size),
            )

    # unsteered reference
    for name, prompts in harmful_sets.items():
        refused, _ = _refusals(chat, judge, prompts, None, cfg)
        add("none", "baseline", name, None, "compliance", [not r for r in refused])
        bar.update(1)
    refused, _ = _refusals(chat, judge, harmless, None, cfg)
    add("none", "baseline", "harmless", None, "refusal", refused)
    bar.update(1)
    losses("none", "baseline", None, None)

    steer: Sequence[Intervention]
    for method in methods:
        # ablation has no strength: one setting for the dense direction
        strengths = [None] if method == DENSE else list(cfg.suppress_factors)
        if method == DENSE:
            bar.update(len(harmful_sets) * (len(cfg.suppress_factors) - 1))
        for factor in strengths:
            if factor is None:  # the dense direction (its only setting)
                steer = [DirectionAblation(direction.raw)]
            else:
                steer = feature_interventions(saes, sets[method], "scale", factor)
            main = factor is None or factor == cap_factor
            for name, prompts in harmful_sets.items():
                refused, replies = _refusals(chat, judge, prompts, steer, cfg)
                add(method, "suppress", name, factor, "compliance", [not r for r in refused])
                if main:
                    report.examples.append(
                        {
                            "method": method,
                            "experiment": "suppress",
                            "strength": factor,
                            "dataset": name,
                            "prompt": prompts[0],
                            "reply": replies[0],
                        }
                    )
                bar.update(1)
            if main:
                losses(method, "suppress", factor, steer)
        for mult in cfg.induce_multipliers:
            if method == DENSE:
                steer = [ActAdd(direction.raw, direction.layer, mult)]
            else:
                inducing = list(sets[method])[: cfg.induce_top]  # sets are ordered by rank
                steer = feature_interventions(saes, inducing, "set", clamp_values(inducing, peaks, mult))
            refused, replies = _refusals(chat, judge, harmless, steer, cfg)
            add(method, "induce", "harmless", mult, "refusal", refused)
            if mult == cap_mult:
                report.examples.append(
                    {
                        "method": method,
                        "experiment": "induce",
                        "strength": mult,
                        "dataset": "harmless",
                        "prompt": harmless[0],
                        "reply": replies[0],
                    }
                )
                losses(method, "induce", mult, steer)
            bar.update(1)
    bar.close()
    return report


def format_table(report: ValidationReport) -> list[list[str]]:
    """Rows for a text table: method, experiment, strength, then one column per dataset/metric."""
    columns = list(dict.fromkeys((r.dataset, r.metric) for r in report.rows))
    keyed: dict[tuple, dict] = {}
    for r in report.rows:
        keyed.setdefault((r.method, r.experiment, r.strength), {})[(r.dataset, r.metric)] = r.estimate
    header = ["method", "experiment", "strength"] + [f"{d} {m}" for d, m in columns]
    lines = [header]
    for (method, experiment, strength), cells in keyed.items():
        lines.append(
            [method, experiment, "" if strength is None else f"{strength:g}"]
            + [str(cells[c]) if c in cells else "" for c in columns]
        )
    return lines
