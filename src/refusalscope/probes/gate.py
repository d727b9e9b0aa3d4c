"""Probes as gates for conditional steering, and how often each gate would steer.

`probe_conditional` wraps interventions in a `Conditional` whose gate is a saved probe,
read exactly as the probe was trained: the mean of its logit over the post-instruction
positions, compared with the threshold chosen on validation. `gate_table` compares
gates by their decisions on the probe test splits (fire rate on harmful and harmless
prompts, balanced accuracy, in and out of distribution) and on capability questions,
where every firing is a prompt whose answer steering may damage: the fraction it leaves
alone is what the gate saves in capability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..stats import Estimate, rate
from ..steering.conditional import Conditional, ProbeGate
from ..steering.interventions import ActAdd
from .compare import balanced_accuracy, stratified_bootstrap
from .datasets import ProbeData
from .linear import LinearProbe

if TYPE_CHECKING:
    from ..models.chat import ChatModel
    from ..sae.model import SAE
    from ..steering.kinds import Intervention


def probe_conditional(
    probe: LinearProbe | str, interventions: Intervention | Sequence[Intervention], sae: SAE | None = None
) -> Conditional:
    """`interventions`, applied only to prompts on which the probe's gate fires."""
    if not isinstance(probe, LinearProbe):
        probe = LinearProbe.load(probe)
    gate = ProbeGate.from_probe(probe, sae)
    return Conditional(interventions, gate, probe.threshold, reduce="mean", positions="post_instruction")


def decisions_only(chat: ChatModel, probe: LinearProbe, sae: SAE | None = None) -> Conditional:
    """A conditional around a no-op (adding a zero vector at the gate's layer): for reading
    the gate's decisions without steering anything."""
    layer = probe.spec.layer
    return probe_conditional(probe, ActAdd(torch.zeros(chat.d_model), layer, 0.0), sae)


def gate_table(
    chat: ChatModel,
    gates: dict[str, Conditional],
    data: ProbeData,
    capability: Sequence[str],
    seed: int = 0,
    batch_size: int = 8,
    scores: dict[str, dict[str, np.ndarray]] | None = None,
) -> list[dict]:
    """Per gate: fire rates and balanced accuracy on ID/OOD tests, fire rate on capability prompts.

    `scores[name]` may hold the gate's scores on the ID/OOD test prompts ('id', 'ood') when
    they are already known (a probe's logits on the same features, which the gate
    reproduces: `gate_scores_match`), saving two passes over the test prompts; capability
    prompts always go through the gate itself."""
    rows = []
    for name, cond in gates.items():
        row: dict = {"gate": name, "describe": cond.gate.describe(), "threshold": cond.threshold}
        for split, test in (("id", data.test_id), ("ood", data.test_ood)):
            known = (scores or {}).get(name, {}).get(split)
            if known is not None:
                fired = np.asarray(known) > cond.threshold
            else:
                fired = cond.decisions(chat, test.prompts, batch_size).fired.numpy()
            y = test.labels.astype(bool)
            row[f"{split}_fire_harmful"] = rate(fired[y], seed).to_dict()
            row[f"{split}_fire_harmless"] = rate(fired[~y], seed).to_dict()
            row[f"{split}_balanced_accuracy"] = stratified_bootstrap(
                test.labels, fired, balanced_accuracy, seed=seed
            ).to_dict()
        if capability:
            fired = cond.decisions(chat, list(capability), batch_size).fired.numpy()
            row["capability_fire"] = rate(fired, seed).to_dict()
            saved: Estimate = rate(~fired.astype(bool), seed)
            row["capability_saved"] = saved.to_dict()
        rows.append(row)
    return rows


def gate_scores_match(
    chat: ChatModel, probe: LinearProbe, features: np.ndarray, prompts: Sequence[str], sae: SAE | None = None
) -> float:
    """Largest |gate score − probe logit| over `prompts` (0 up to float error when the gate
    reads what the probe was evaluated on)."""
    cond = decisions_only(chat, probe, sae)
    scores = cond.decisions(chat, list(prompts)).scores.double().numpy()
    return float(np.abs(scores - probe.decision_function(features)).max())
