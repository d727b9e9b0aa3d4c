"""The null-space methods in a sweep grid: the comparison `run --profile paper` includes.

Issue #13 asks which way out of the refusal/over-refusal/capability tension works on one
model, judged by one judge on one capability suite. `refusalscope optimize` tunes each
family on a validation split; the pipeline's sweep puts the same families on its grid so
the report's headline table and Pareto figure show them beside the latent clamp (plain
and gated) and the dense ActAdd baseline:

    features null-space          the latent clamp's edit projected off the benign subspace
    refusal direction null-space the ActAdd vector projected off it
    learned null-space           AlphaSteer's learned map x ↦ x + c·xΔ, Δ = P⊥W (ridge fit)

The benign subspace of each steered layer is estimated from harmless prompts and ordinary
text (WikiText documents the sweep does not score), and the learned map from harmful
prompts; both come from the direction's *training* prompts, never the sweep's. Fitting
costs forward passes, so bases and matrix are cached by content as safetensors: a second
run builds the same configurations without touching the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..stage_cache import content_key, model_identity, stage_path

if TYPE_CHECKING:
    from ..direction import RefusalDirection
    from ..models.chat import ChatModel
    from .grid import Method


def benign_texts(chat: ChatModel, data_dir, n: int, exclude: int, head_tokens: int = 128, seed: int = 1) -> list[str]:
    """`n` WikiText test documents that the sweep's text-loss task (its first `exclude`
    documents with seed 0) does not score, each cut to its first `head_tokens` tokens."""
    import random

    from .capability import capability_task

    task = capability_task("wikitext", data_dir=data_dir)
    used = {it.text for it in task.items(data_dir, exclude, 0)} if exclude else set()
    rest = [it.text for it in task.items(data_dir, None, 0) if it.text not in used]
    picked = random.Random(seed).sample(rest, min(n, len(rest)))
    return [chat.decode(chat.encode(t)[:head_tokens]) for t in picked]


def fitted_nullspace(
    chat: ChatModel,
    layers: Sequence[int],
    harmless: Sequence[str],
    texts: Sequence[str],
    *,
    harmful: Sequence[str] = (),
    learned_layer: int | None = None,
    target: torch.Tensor | None = None,
    variance: float = 0.99,
    ridge: float = 1e-2,
    batch_size: int = 8,
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None, dict[str, Any]]:
    """(benign basis per layer, learned matrix at `learned_layer` or None, fit record),
    cached by content (model, dtype, prompts, texts, layers, target, settings)."""
    import json

    from safetensors.torch import load_file, save_file

    from ..paths import atomic_file
    from ..steering.nullspace import benign_activations, benign_subspace, fit_steering_matrix

    layers = sorted(set(layers) | ({learned_layer} if learned_layer is not None else set()))
    target_hash = None if target is None else content_key(target.float().tolist())
    key = content_key(
        "nullspace-fit",
        model_identity(chat),
        layers,
        list(harmless),
        list(texts),
        list(harmful),
        learned_layer,
        target_hash,
        variance,
        ridge,
        "token-weighted",  # the subspace's weighting (steering.nullspace.benign_subspace); was raw energy before
    )
    path = stage_path("nullspace", key, ".safetensors")
    record_path = path.with_suffix(".json")
    if path.is_file() and record_path.is_file():
        stored = load_file(str(path))
        found = {layer: stored[f"basis_{layer}"] for layer in layers}
        return found, stored.get("matrix"), json.loads(record_path.read_text())
    bases: dict[int, torch.Tensor] = {}
    record: dict[str, Any] = {"benign_subspace": {}}
    for layer in layers:
        acts = benign_activations(chat, layer, harmless, texts, batch_size=batch_size)
        bases[layer], fit = benign_subspace(acts, variance=variance)
        record["benign_subspace"][str(layer)] = fit
    matrix = None
    if learned_layer is not None and target is not None and harmful:
        acts = chat.residual(
            list(harmful), [learned_layer], positions="post_instruction", batch_size=batch_size, progress=False
        )[learned_layer]
        rows = acts.reshape(-1, acts.shape[-1])
        matrix = fit_steering_matrix(rows, bases[learned_layer], target, ridge=ridge)
        record["learned"] = dict(
            record["benign_subspace"][str(learned_layer)], ridge=ridge, n_harmful=int(rows.shape[0])
        )
    tensors = {f"basis_{layer}": b.contiguous() for layer, b in bases.items()}
    if matrix is not None:
        tensors["matrix"] = matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    with atomic_file(record_path) as handle:
        json.dump(record, handle)
    return bases, matrix, record


def nullspace_methods(
    features: Callable[[float], list] | None,
    direction: RefusalDirection,
    bases: dict[int, torch.Tensor],
    matrix: torch.Tensor | None,
    record: dict[str, Any],
    *,
    feature_strengths: Sequence[float] = (),
    dense_strengths: Sequence[float] = (),
) -> list[Method]:
    """Grid methods for the null-space families (those with strengths and what they need)."""
    from ..steering import ActAdd, LearnedNullSpaceSteer, NullSpaceProjection
    from .grid import Method

    out: list[Method] = []
    if features is not None and feature_strengths:

        def projected(strength: float | None) -> list:
            items = features(1.0 if strength is None else float(strength))
            return [NullSpaceProjection(item, bases[item.layer]) for item in items]

        out.append(
            Method(
                "features null-space",
                projected,
                tuple(feature_strengths),
                method="features:nullspace",
                description="the latent clamp's edit projected off the benign subspace of its layer (AlphaSteer-style)",
            )
        )
    layer = direction.layer
    if dense_strengths and layer in bases:
        basis = bases[layer]

        def dense(strength: float | None) -> NullSpaceProjection:
            return NullSpaceProjection(
                ActAdd(direction.raw, layer, 1.0 if strength is None else float(strength)), basis
            )

        out.append(
            Method(
                "refusal direction null-space",
                dense,
                tuple(dense_strengths),
                method="dense:actadd-nullspace",
                description="strength × the refusal vector, projected off the benign subspace of its layer",
            )
        )
    if dense_strengths and matrix is not None:
        fit = record.get("learned", {})

        def learned(strength: float | None) -> LearnedNullSpaceSteer:
            return LearnedNullSpaceSteer(matrix, layer, 1.0 if strength is None else float(strength), fit=fit)

        out.append(
            Method(
                "learned null-space",
                learned,
                tuple(dense_strengths),
                method="dense:learned-nullspace",
                description="AlphaSteer's learned map x ↦ x + c·xΔ (benign activations left unchanged)",
            )
        )
    return out
