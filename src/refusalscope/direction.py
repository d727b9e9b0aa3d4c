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

Speed (`direction_scoring`): candidates go along the batch dimension (one forward holds
many (candidate, prompt) rows, each with its own edit), the screen stops scoring a
candidate once it is clearly out of the next group of finalists, and a finalist's
ablation score reuses the prompts it was screened on. A candidate left out of the
finalists records its screen score over the prompts it saw (`screen_prompts`).
"""

from __future__ import annotations

import hashlib
import json
import math
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
    screen_prompts: int | None = None  # screen prompts its ablation was scored on (the screen stops early)


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
        meta = json.dumps(
            {
                "layer": self.layer,
                "position": self.position,
                "refusal_token_ids": self.refusal_token_ids,
                "model": self.model,
                "scores": [asdict(c) for c in self.scores],
                "baseline": self.baseline,
                "provenance": self.provenance,
            },
            indent=2,
        )
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
    total: torch.Tensor | None = None
    for _, chunk in chat.iter_residual(list(prompts), layers, "post_instruction", batch_size, progress=progress):
        stacked = torch.stack([chunk[layer].double().sum(0) for layer in layers])
        total = stacked if total is None else total + stacked
    if total is None:
        raise RefusalScopeError("mean activations of no prompts", "pass at least one prompt")
    return (total / len(prompts)).float()


def candidate_directions(
    chat, harmful: Sequence[str], harmless: Sequence[str], batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    if not harmful or not harmless:
        raise RefusalScopeError(
            "the refusal direction needs harmful and harmless prompts", "pass non-empty lists of both"
        )
    return mean_activations(chat, harmful, batch_size, progress) - mean_activations(
        chat, harmless, batch_size, progress
    )


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
    screen_z: float | None = 3.0,
    rows_per_forward: int = 64,
    progress: bool = True,
) -> tuple[Candidate, list[Candidate], dict]:
    """Pick (layer, position) as described in the module docstring.

    `induction_threshold=None` is the halfway point between the harmless and harmful
    baseline refusal scores; pass 0.0 for the criterion of Arditi et al.

    Candidates are scored many per forward (`direction_scoring`: `rows_per_forward`
    (candidate, prompt) rows per batch). The screen is adaptive: a candidate stops being
    screened once it is clearly out of the next group of finalists (`screen_z` paired
    standard errors; None screens every candidate on all `n_screen` prompts), and a
    finalist's ablation score reuses its screened prompts."""
    from .direction_scoring import AdaptiveScreen, Edit, EditScorer

    n_layers, n_pos, _ = candidates.shape
    max_layer = int(n_layers * (1 - prune_last_frac))
    grid = [Candidate(layer, pos - n_pos) for layer in range(0, max_layer, layer_stride) for pos in range(n_pos)]
    if not grid:
        raise RefusalScopeError("no candidate layers are left after pruning", "lower prune_last_frac or layer_stride")
    if n_finalists < 1:
        raise RefusalScopeError(f"n_finalists must be at least 1, got {n_finalists}")
    harmful_val, harmless_val = list(harmful_val), list(harmless_val)
    screen = harmful_val[:n_screen]
    baseline_harmful_logits = chat.next_token_logits(harmful_val, batch_size=batch_size)
    baseline_harmful = float(refusal_log_odds(baseline_harmful_logits, refusal_token_ids).mean())
    baseline_harmless_logits = chat.next_token_logits(harmless_val, batch_size=batch_size)
    baseline_harmless = float(refusal_log_odds(baseline_harmless_logits, refusal_token_ids).mean())
    baseline_logp = torch.log_softmax(baseline_harmless_logits.double(), -1)
    if induction_threshold is None:
        induction_threshold = baseline_harmless + 0.5 * (baseline_harmful - baseline_harmless)
    baseline = {
        "harmful_score": baseline_harmful,
        "harmless_score": baseline_harmless,
        "kl_threshold": kl_threshold,
        "induction_threshold": induction_threshold,
    }

    vectors = [candidates[c.layer, c.position] for c in grid]
    screener = EditScorer(
        chat, screen, [Edit("ablate", v) for v in vectors], refusal_token_ids, rows_per_forward=rows_per_forward
    )
    bar = tqdm(total=len(grid) * len(screen), desc="screening directions", unit="row", disable=not progress)

    def screen_rows(pairs):
        out = screener.score(pairs).log_odds
        bar.update(len(pairs))
        return out

    ranking = AdaptiveScreen(screen_rows, len(grid), len(screen), z=screen_z)
    limit = min(len(grid), max(n_finalists, max_finalists))
    finalists: list[Candidate] = []
    finals_bar = tqdm(total=limit, desc="scoring finalists", disable=not progress)
    while len(finalists) < limit and not any(c.admissible for c in finalists):
        group = ranking.next_group(min(n_finalists, limit - len(finalists)))
        _score_finalists(
            chat,
            [grid[i] for i in group],
            [vectors[i] for i in group],
            [ranking.scores[i] for i in group],
            harmful_val,
            harmless_val,
            baseline_logp,
            refusal_token_ids,
            kl_threshold,
            induction_threshold,
            rows_per_forward,
        )
        finalists += [grid[i] for i in group]
        finals_bar.update(len(group))
    finals_bar.close()
    bar.close()
    for i, cand in enumerate(grid):
        if cand.kl is None:  # not a finalist: its (possibly partial) screen score
            cand.ablation_score = ranking.mean(i) if ranking.scores[i] else None
        cand.screen_prompts = len(ranking.scores[i])
    admissible = [c for c in finalists if c.admissible]
    baseline["finalists_scored"] = len(finalists)
    baseline["screen_rows"] = screener.rows_scored
    baseline["screen_rows_exhaustive"] = len(grid) * len(screen)
    if admissible:
        baseline["filters_passed"] = True
        return min(admissible, key=lambda c: math.inf if c.ablation_score is None else c.ablation_score), grid, baseline
    best = min(finalists, key=lambda c: (c.reason.count(";") + 1, c.ablation_score))
    message = (
        f"no candidate direction passed the filters among the {len(finalists)} best by ablation score "
        f"(least bad: layer {best.layer}, position {best.position}: {best.reason})"
    )
    if not fallback:
        raise RefusalScopeError(
            message,
            "raise kl_threshold, lower induction_threshold, score more finalists "
            "(max_finalists), or check that the model refuses the harmful prompts",
        )
    warnings.warn(message + "; using it anyway (recorded as admissible=false)", stacklevel=2)
    baseline["filters_passed"] = False
    return best, grid, baseline


def _score_finalists(
    chat,
    group: list[Candidate],
    vectors,
    screened: list[list[float]],
    harmful_val,
    harmless_val,
    baseline_logp,
    refusal_token_ids,
    kl_threshold: float,
    induction_threshold: float,
    rows_per_forward: int,
) -> None:
    """Full scores of one group of finalists in one batched pass: ablation on every harmful
    prompt not already screened, KL and ablation on the harmless prompts, and activation
    addition on the harmless prompts."""
    from .direction_scoring import Edit, EditScorer

    n, nh = len(group), len(harmful_val)
    prompts = harmful_val + harmless_val
    edits = [Edit("ablate", v) for v in vectors] + [Edit("add", v, c.layer) for c, v in zip(group, vectors)]
    ablate_harmful = [(g, p) for g in range(n) for p in range(len(screened[g]), nh)]
    ablate_harmless = [(g, nh + p) for g in range(n) for p in range(len(harmless_val))]
    add_harmless = [(n + g, nh + p) for g in range(n) for p in range(len(harmless_val))]
    # the KL needs the unedited distribution of the rows it is read on (the harmless prompts)
    base = torch.cat([torch.zeros(nh, baseline_logp.shape[1], dtype=baseline_logp.dtype), baseline_logp])
    scorer = EditScorer(chat, prompts, edits, refusal_token_ids, baseline_logp=base, rows_per_forward=rows_per_forward)
    out = scorer.score(ablate_harmful + ablate_harmless + add_harmless)
    a, b = len(ablate_harmful), len(ablate_harmful) + len(ablate_harmless)
    harmful_scores = [list(s) for s in screened]
    for (g, _), v in zip(ablate_harmful, out.log_odds[:a].tolist()):
        harmful_scores[g].append(v)
    assert out.kl is not None  # the scorer was given the baseline distribution
    kl = out.kl[a:b].view(n, -1).double().mean(-1)
    induction = out.log_odds[b:].view(n, -1).double().mean(-1)
    for g, cand in enumerate(group):
        cand.ablation_score = float(torch.tensor(harmful_scores[g], dtype=torch.float64).mean())
        cand.kl = float(kl[g])
        cand.induction_score = float(induction[g])
        reasons = []
        if cand.kl > kl_threshold:
            reasons.append(f"KL {cand.kl:.3f} > {kl_threshold}")
        if cand.induction_score <= induction_threshold:
            reasons.append(
                f"adding it does not induce refusal ({cand.induction_score:.2f} <= {induction_threshold:.2f})"
            )
        cand.admissible = not reasons
        cand.reason = "; ".join(reasons)


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


#: replies for the refusal tokens decode in one batch: 12 steps at batch 96 cost a CPU about
#: a third of 72 steps at batch 16 (a decode step mostly reads the weights), and greedy
#: replies do not depend on the batch size (models/attention.py)
REFUSAL_TOKEN_BATCH = 96


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
    screen_z: float | None = 3.0,
    use_cache: bool = True,
    progress: bool = True,
) -> RefusalDirection:
    """Compute, select and cache the refusal direction of `chat`."""
    data = data or sample_direction_data(data_dir, n_train, n_val, seed)
    settings = {
        "layer_stride": layer_stride,
        "n_screen": n_screen,
        "n_finalists": n_finalists,
        "kl_threshold": kl_threshold,
        "induction_threshold": induction_threshold,
        "max_finalists": max_finalists,
        "screen": "adaptive",
        "screen_z": screen_z,
    }
    folder = cache_dir() / "directions" / f"{chat.info.name}-{_cache_key(chat, data, settings)}"
    if use_cache and (folder / "direction.json").is_file():
        return RefusalDirection.load(folder)
    started = time.perf_counter()
    tokens = find_refusal_tokens(
        chat, data.harmful_train[:48], data.harmless_train[:48], batch_size=REFUSAL_TOKEN_BATCH
    )
    candidates = candidate_directions(chat, data.harmful_train, data.harmless_train, batch_size, progress)
    best, grid, baseline = select_direction(
        chat,
        candidates,
        data.harmful_val,
        data.harmless_val,
        tokens.ids,
        layer_stride=layer_stride,
        n_screen=n_screen,
        n_finalists=n_finalists,
        kl_threshold=kl_threshold,
        induction_threshold=induction_threshold,
        max_finalists=max_finalists,
        fallback=fallback,
        batch_size=batch_size,
        screen_z=screen_z,
        progress=progress,
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
            replies = cached_replies(
                chat, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
            )
        else:
            replies = chat.generate(
                list(prompts),
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                interventions=interventions,
                progress=progress,
            ).texts
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
