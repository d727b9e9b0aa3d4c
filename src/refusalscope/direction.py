"""The dense refusal direction (Arditi et al., 2024) and its selection.

Candidates: for every layer l and every post-instruction template position p, the
difference of means of the residual stream between harmful and harmless requests,
r[l, p] = μ_harmful[l, p] − μ_harmless[l, p].

Selection, as in the refusal-direction literature, on held-out prompts:
  - drop candidates from the last 20% of layers (they act on the output, not on refusal);
  - ablation score: mean first-token refusal log-odds on harmful prompts with r̂ ablated
    at every layer (lower = removing it removes refusal);
  - induction score: the same on harmless prompts with r added at its layer (must exceed
    a threshold: adding it should induce refusal). Arditi et al. require > 0, which
    suits models that refuse harmful requests confidently; the default here is halfway
    from the model's own harmless to its harmful baseline score, which equals the
    classic threshold for such models and still means "adding it moves harmless
    requests at least half way to refusal" for models that refuse weakly (the embedded
    Qwen2.5-Coder-0.5B refuses about half of the harmful validation prompts);
  - KL: divergence of the harmless next-token distribution under ablation (must stay
    below a threshold: removing it must not break the model);
  - keep the admissible candidate with the lowest ablation score.
The refusal log-odds use the model's own refusal first tokens (judges.first_token).

Scoring every candidate is ~100 candidates × 3 prompt sets of forwards, too slow on a CPU
with full sets, so selection screens all candidates by ablation score on a few prompts,
then scores them in full in that order, `n_finalists` at a time, until one is admissible
(at most `max_finalists`); `layer_stride` thins the layer grid further. When none is,
the least-bad candidate (fewest failed filters, then lowest ablation score) is returned
with a warning and `admissible=False` recorded, unless `fallback=False`, which raises.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import RefusalScopeError
from .judges.first_token import find_refusal_tokens, refusal_log_odds
from .paths import atomic_dir, cache_dir
from .provenance import package_versions
from .stage_cache import model_identity
from .steering.interventions import ActAdd, DirectionAblation


@dataclass
class Candidate:
    layer: int
    position: int  # negative offset within the post-instruction tokens
    ablation_score: float | None = None
    induction_score: float | None = None
    kl: float | None = None
    admissible: bool | None = None
    reason: str = ""


@dataclass
class RefusalDirection:
    """The selected refusal direction and everything needed to trust and reuse it."""

    layer: int
    position: int
    raw: torch.Tensor  # r[l*, p*] (unnormalised; activation addition adds this)
    candidates: torch.Tensor  # [n_layers, P, d] all difference-of-means vectors
    refusal_token_ids: list[int]
    model: dict
    scores: list[Candidate] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def unit(self) -> torch.Tensor:
        return self.raw / self.raw.norm()

    def at_layer(self, layer: int, unit: bool = True) -> torch.Tensor:
        """The difference-of-means at `layer` and the selected position (for SAEs elsewhere)."""
        vec = self.candidates[layer, self.position]
        return vec / vec.norm() if unit else vec

    def ablation(self) -> DirectionAblation:
        return DirectionAblation(self.raw, "all")

    def actadd(self, coefficient: float = 1.0) -> ActAdd:
        return ActAdd(self.raw, self.layer, coefficient)

    def save(self, folder: str | Path) -> Path:
        """Write direction.json + direction.safetensors; a folder that already holds exactly
        this direction is left untouched (a rerun does not rewrite its outputs)."""
        folder = Path(folder)
        meta = json.dumps({
            "layer": self.layer,
            "position": self.position,
            "refusal_token_ids": self.refusal_token_ids,
            "model": self.model,
            "scores": [asdict(c) for c in self.scores],
            "baseline": self.baseline,
            "provenance": self.provenance,
        }, indent=2)
        tensors = {"raw": self.raw.contiguous(), "candidates": self.candidates.contiguous()}
        if self._saved_in(folder, meta, tensors):
            return folder
        with atomic_dir(folder) as tmp:
            save_file(tensors, str(tmp / "direction.safetensors"))
            (tmp / "direction.json").write_text(meta)
        return folder

    @staticmethod
    def _saved_in(folder: Path, meta: str, tensors: dict[str, torch.Tensor]) -> bool:
        try:
            if (folder / "direction.json").read_text() != meta:
                return False
            stored = load_file(str(folder / "direction.safetensors"))
        except (OSError, ValueError):
            return False
        return stored.keys() == tensors.keys() and all(torch.equal(stored[k], tensors[k]) for k in tensors)

    @classmethod
    def load(cls, folder: str | Path) -> "RefusalDirection":
        folder = Path(folder)
        if not (folder / "direction.json").is_file():
            raise RefusalScopeError(f"{folder} holds no refusal direction", "run `refusalscope direction` first")
        meta = json.loads((folder / "direction.json").read_text())
        tensors = load_file(str(folder / "direction.safetensors"))
        return cls(
            layer=meta["layer"],
            position=meta["position"],
            raw=tensors["raw"],
            candidates=tensors["candidates"],
            refusal_token_ids=meta["refusal_token_ids"],
            model=meta["model"],
            scores=[Candidate(**c) for c in meta["scores"]],
            baseline=meta.get("baseline", {}),
            provenance=meta.get("provenance", {}),
        )


def mean_activations(chat, prompts: Sequence[str], batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """[n_layers, P, d] mean residual stream after each block at the post-instruction tokens."""
    layers = list(range(chat.n_layers))
    total = None
    for _, chunk in chat.iter_residual(list(prompts), layers, "post_instruction", batch_size, progress=progress):
        stacked = torch.stack([chunk[layer].double().sum(0) for layer in layers])
        total = stacked if total is None else total + stacked
    return (total / len(prompts)).float()


def candidate_directions(chat, harmful: Sequence[str], harmless: Sequence[str], batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    if not harmful or not harmless:
        raise RefusalScopeError("the refusal direction needs harmful and harmless prompts", "pass non-empty lists of both")
    return mean_activations(chat, harmful, batch_size, progress) - mean_activations(chat, harmless, batch_size, progress)


def _mean_score(chat, prompts, token_ids, interventions, batch_size) -> float:
    logits = chat.next_token_logits(list(prompts), batch_size=batch_size, interventions=interventions)
    return float(refusal_log_odds(logits, token_ids).mean())


def _kl(chat, prompts, baseline_logp: torch.Tensor, interventions, batch_size) -> float:
    logits = chat.next_token_logits(list(prompts), batch_size=batch_size, interventions=interventions)
    logp = torch.log_softmax(logits.double(), -1)
    return float((baseline_logp.exp() * (baseline_logp - logp)).sum(-1).mean())


def select_direction(
    chat,
    candidates: torch.Tensor,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    refusal_token_ids: Sequence[int],
    *,
    prune_last_frac: float = 0.2,
    kl_threshold: float = 0.1,
    induction_threshold: float | None = None,
    layer_stride: int = 1,
    n_screen: int = 8,
    n_finalists: int = 8,
    max_finalists: int = 24,
    fallback: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[Candidate, list[Candidate], dict]:
    """Pick (layer, position) as described in the module docstring.

    `induction_threshold=None` is the halfway point between the harmless and harmful
    baseline refusal scores; pass 0.0 for the criterion of Arditi et al."""
    n_layers, n_pos, _ = candidates.shape
    max_layer = int(n_layers * (1 - prune_last_frac))
    grid = [
        Candidate(layer, pos - n_pos)
        for layer in range(0, max_layer, layer_stride)
        for pos in range(n_pos)
    ]
    if not grid:
        raise RefusalScopeError("no candidate layers are left after pruning", "lower prune_last_frac or layer_stride")
    if n_finalists < 1:
        raise RefusalScopeError(f"n_finalists must be at least 1, got {n_finalists}")
    screen = list(harmful_val)[:n_screen]
    baseline_harmful = _mean_score(chat, harmful_val, refusal_token_ids, None, batch_size)
    baseline_harmless_logits = chat.next_token_logits(list(harmless_val), batch_size=batch_size)
    baseline_harmless = float(refusal_log_odds(baseline_harmless_logits, refusal_token_ids).mean())
    baseline_logp = torch.log_softmax(baseline_harmless_logits.double(), -1)
    if induction_threshold is None:
        induction_threshold = baseline_harmless + 0.5 * (baseline_harmful - baseline_harmless)
    baseline = {"harmful_score": baseline_harmful, "harmless_score": baseline_harmless,
                "kl_threshold": kl_threshold, "induction_threshold": induction_threshold}

    for cand in tqdm(grid, desc="screening directions", disable=not progress):
        vec = candidates[cand.layer, cand.position]
        cand.ablation_score = _mean_score(chat, screen, refusal_token_ids, DirectionAblation(vec), batch_size)
    order = sorted(grid, key=lambda c: c.ablation_score)
    limit = min(len(order), max(n_finalists, max_finalists))
    finalists: list[Candidate] = []
    bar = tqdm(total=limit, desc="scoring finalists", disable=not progress)
    for cand in order[:limit]:
        if finalists and len(finalists) % n_finalists == 0 and any(c.admissible for c in finalists):
            break
        vec = candidates[cand.layer, cand.position]
        ablate = DirectionAblation(vec)
        cand.ablation_score = _mean_score(chat, harmful_val, refusal_token_ids, ablate, batch_size)
        cand.kl = _kl(chat, harmless_val, baseline_logp, ablate, batch_size)
        cand.induction_score = _mean_score(chat, harmless_val, refusal_token_ids, ActAdd(vec, cand.layer, 1.0), batch_size)
        reasons = []
        if cand.kl > kl_threshold:
            reasons.append(f"KL {cand.kl:.3f} > {kl_threshold}")
        if cand.induction_score <= induction_threshold:
            reasons.append(f"adding it does not induce refusal ({cand.induction_score:.2f} <= {induction_threshold:.2f})")
        cand.admissible = not reasons
        cand.reason = "; ".join(reasons)
        finalists.append(cand)
        bar.update(1)
    bar.close()
    admissible = [c for c in finalists if c.admissible]
    baseline["finalists_scored"] = len(finalists)
    if admissible:
        baseline["filters_passed"] = True
        return min(admissible, key=lambda c: c.ablation_score), grid, baseline
    best = min(finalists, key=lambda c: (c.reason.count(";") + 1, c.ablation_score))
    message = (f"no candidate direction passed the filters among the {len(finalists)} best by ablation score "
               f"(least bad: layer {best.layer}, position {best.position}: {best.reason})")
    if not fallback:
        raise RefusalScopeError(message, "raise kl_threshold, lower induction_threshold, score more finalists "
                                "(max_finalists), or check that the model refuses the harmful prompts")
    warnings.warn(message + "; using it anyway (recorded as admissible=false)", stacklevel=2)
    baseline["filters_passed"] = False
    return best, grid, baseline


@dataclass
class DirectionData:
    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]


def sample_direction_data(data_dir=None, n_train: int = 128, n_val: int = 32, seed: int = 0) -> DirectionData:
    """Seeded samples of the refusal-direction splits (harmful/harmless, train/val)."""
    from .data import load_dataset

    def sample(name, split, n):
        return load_dataset(name, split, data_dir=data_dir, limit=n, seed=seed).prompts

    return DirectionData(
        harmful_train=sample("harmful/refusal-direction", "train", n_train),
        harmless_train=sample("harmless/alpaca", "train", n_train),
        harmful_val=sample("harmful/refusal-direction", "val", n_val),
        harmless_val=sample("harmless/alpaca", "val", n_val),
    )


def _cache_key(chat, data: DirectionData, settings: dict) -> str:
    # the dtype is part of the key: bf16 and fp32 forwards select different candidates
    digest = hashlib.sha256(json.dumps(model_identity(chat), sort_keys=True).encode())
    digest.update(json.dumps(asdict(data)).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def find_refusal_direction(
    chat,
    data: DirectionData | None = None,
    *,
    data_dir=None,
    n_train: int = 128,
    n_val: int = 32,
    seed: int = 0,
    layer_stride: int = 1,
    n_screen: int = 8,
    n_finalists: int = 8,
    kl_threshold: float = 0.1,
    induction_threshold: float | None = None,
    max_finalists: int = 24,
    fallback: bool = True,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: bool = True,
) -> RefusalDirection:
    """Compute, select and cache the refusal direction of `chat`."""
    data = data or sample_direction_data(data_dir, n_train, n_val, seed)
    settings = {"layer_stride": layer_stride, "n_screen": n_screen, "n_finalists": n_finalists, "kl_threshold": kl_threshold,
                "induction_threshold": induction_threshold, "max_finalists": max_finalists}
    folder = cache_dir() / "directions" / f"{chat.info.name}-{_cache_key(chat, data, settings)}"
    if use_cache and (folder / "direction.json").is_file():
        return RefusalDirection.load(folder)
    started = time.perf_counter()
    tokens = find_refusal_tokens(chat, data.harmful_train[:48], data.harmless_train[:48], batch_size=batch_size)
    candidates = candidate_directions(chat, data.harmful_train, data.harmless_train, batch_size, progress)
    best, grid, baseline = select_direction(
        chat, candidates, data.harmful_val, data.harmless_val, tokens.ids,
        layer_stride=layer_stride, n_screen=n_screen, n_finalists=n_finalists,
        kl_threshold=kl_threshold, induction_threshold=induction_threshold, max_finalists=max_finalists,
        fallback=fallback, batch_size=batch_size, progress=progress,
    )
    result = RefusalDirection(
        layer=best.layer,
        position=best.position,
        raw=candidates[best.layer, best.position].clone(),
        candidates=candidates,
        refusal_token_ids=tokens.ids,
        model=chat.info.to_dict(),
        scores=grid,
        baseline=baseline,
        provenance={
            "method": "difference of means at post-instruction tokens; selection by ablation refusal score with KL and induction filters",
            "settings": settings,
            "n_train": len(data.harmful_train),
            "n_val": len(data.harmful_val),
            "seed": seed,
            "refusal_tokens": tokens.to_dict(),
            "seconds": time.perf_counter() - started,
            "versions": package_versions(),
        },
    )
    if use_cache:
        result.save(folder)
    return result


def direction_effect(
    chat,
    direction: RefusalDirection,
    harmful: Sequence[str],
    harmless: Sequence[str],
    max_new_tokens: int = 24,
    batch_size: int = 16,
    judge=None,
    progress: bool = True,
) -> dict:
    """What the direction does: ablation → compliance on harmful prompts; activation
    addition → refusal on harmless prompts (each against the unsteered model)."""
    from .generations import cached_replies
    from .judges.substring import SubstringJudge
    from .stats import rate

    judge = judge or SubstringJudge()

    def refused(prompts, interventions):
        if interventions is None:
            replies = cached_replies(chat, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
        else:
            replies = chat.generate(list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    interventions=interventions, progress=progress).texts
        return [v.refused for v in judge.judge(list(prompts), replies)], replies

    base_h, _ = refused(harmful, None)
    abl_h, abl_replies = refused(harmful, direction.ablation())
    base_b, _ = refused(harmless, None)
    add_b, add_replies = refused(harmless, direction.actadd(1.0))
    return {
        "harmful_compliance_baseline": rate([not r for r in base_h]),
        "harmful_compliance_ablated": rate([not r for r in abl_h]),
        "harmless_refusal_baseline": rate(base_b),
        "harmless_refusal_actadd": rate(add_b),
        "examples": {
            "ablation": {"prompt": harmful[0], "reply": abl_replies[0]},
            "actadd": {"prompt": harmless[0], "reply": add_replies[0]},
        },
    }
