"""`discover`: from a model, its SAEs and its refusal direction to a validated feature set.

Scores are computed once and cached in `$REFUSALSCOPE_CACHE` (keyed by the model and its
dtype, the SAEs' content hashes, the direction and the prompts), and so is the choice of
attribution prompts (which takes a forward pass), so a rerun with another K, method,
selection rule or output folder only re-selects: no forward pass, seconds instead of
minutes. Output files whose content is unchanged are not rewritten.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RefusalScopeError
from ..provenance import package_versions
from ..stage_cache import cached_json, content_key, model_identity, stage_path, write_text_if_changed
from ..types import DiscoveryMethod
from .features import METHODS, FeatureSet, ScoreTables, select
from .scoring import actdiff_scores, activation_stats, attribution_scores, cossim_scores

if TYPE_CHECKING:
    from ..direction import RefusalDirection
    from ..models.chat import ChatModel
    from ..sae.model import SAE


@dataclass
class DiscoveryConfig:
    method: DiscoveryMethod = "cossim+ig"
    baselines: tuple[DiscoveryMethod, ...] = ("random", "cossim", "actdiff", "ap")
    k: int = 20
    prefilter_k: int = 64
    per_prompt: bool = False
    ig_steps: int = 10
    n_attribution: int = 32  # harmful prompts for AP/IG (refused ones only)
    n_activation: int = 64  # harmful and harmless prompts for ActDiff
    actdiff_reduce: str = "max"
    attribution_batch: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for m in (self.method, *self.baselines):
            if m not in METHODS:
                raise RefusalScopeError(f"unknown discovery method '{m}'", f"use one of {', '.join(METHODS)}")

    def needed(self) -> set[str]:
        methods = {self.method, *self.baselines}
        need = {"cossim", "actdiff"}  # cheap, and actdiff gives the peaks used for clamping
        if methods & {"ig", "cossim+ig"}:
            need.add("ig")
        if "ap" in methods:
            need.add("ap")
        return need


@dataclass
class Discovery:
    tables: ScoreTables
    sets: dict[str, FeatureSet]
    attribution_prompts: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def _fingerprint(
    chat: ChatModel,
    saes: Mapping[int, SAE],
    direction: RefusalDirection,
    harmful: Sequence[str],
    harmless: Sequence[str],
    cfg: DiscoveryConfig,
    attr_prompts: Sequence[str],
) -> str:
    digest = hashlib.sha256(json.dumps(model_identity(chat), sort_keys=True).encode())
    for layer in sorted(saes):
        digest.update(f"{layer}:{saes[layer].content_hash()}".encode())
    digest.update(direction.raw.numpy().tobytes())
    digest.update(json.dumps([list(harmful), list(harmless), list(attr_prompts)]).encode())
    digest.update(json.dumps({"ig_steps": cfg.ig_steps, "reduce": cfg.actdiff_reduce}).encode())
    return digest.hexdigest()[:20]


def sae_identity(saes: Mapping[int, SAE]) -> dict:
    """Per layer: where the SAE can be loaded again and its content hash. A pretrained SAE is
    named by its release id (`release/sae_id`), not by the hub-cache file it was read from,
    so features.json reloads it on any machine (through the hub or its local cache)."""
    from ..steering.references import sae_source_of

    out = {}
    for layer, sae in saes.items():
        c = sae.cfg
        out[str(layer)] = {
            "source": sae_source_of(sae),
            "sha256": sae.content_hash(),
            "architecture": c.architecture,
            "d_sae": c.d_sae,
            "k": c.k,
            "layer": layer,
        }
    return out


def refused_prompts(chat: ChatModel, prompts: Sequence[str], refusal_token_ids, limit: int) -> list[str]:
    """The prompts the model is inclined to refuse (first-token log-odds above the median
    of the harmful set, and above −2): attributing refusal where there is none is noise."""
    from ..judges.first_token import refusal_score

    prompts = list(prompts)
    scores = refusal_score(chat, prompts, refusal_token_ids)
    order = scores.argsort(descending=True).tolist()
    keep = [prompts[i] for i in order if scores[i] > -2.0][:limit]
    if not keep:
        raise RefusalScopeError(
            "the model does not lean towards refusing any of the harmful prompts",
            "use prompts it refuses, or check the refusal tokens",
        )
    return keep


def cached_refused_prompts(chat: ChatModel, prompts: Sequence[str], refusal_token_ids, limit: int) -> list[str]:
    """`refused_prompts`, looked up in the cache when this model (and dtype) already
    scored these prompts: choosing them costs a forward pass over every harmful prompt."""
    key = content_key("refused-prompts", model_identity(chat), list(prompts), list(map(int, refusal_token_ids)), limit)
    return cached_json("discovery", key, lambda: refused_prompts(chat, prompts, refusal_token_ids, limit))


def discover(
    chat: ChatModel,
    saes: dict,
    direction,
    harmful: Sequence[str],
    harmless: Sequence[str],
    cfg: DiscoveryConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    executor: Any = None,
) -> Discovery:
    """Score latents, select the main set and the baselines, write features.json files.

    `executor`: a started `distributed.RayExecutor` whose workers hold `chat`'s model: the
    attribution (AP/IG, the costly part) is then sharded across its pool by prompt; the
    scores equal the single-process ones within floating-point tolerance (tests/unit/
    test_distributed.py) and are cached under the same key."""
    cfg = cfg or DiscoveryConfig()
    if not saes:
        raise RefusalScopeError("no SAEs were given", "train some with `refusalscope train-sae` or pass --sae")
    for sae in saes.values():
        sae.check_model(chat)
    rng = random.Random(cfg.seed)
    harmful = list(harmful)
    harmless = list(harmless)
    act_harmful = rng.sample(harmful, min(cfg.n_activation, len(harmful)))
    act_harmless = rng.sample(harmless, min(cfg.n_activation, len(harmless)))
    seconds: dict[str, float] = {}
    need = cfg.needed()

    t0 = time.perf_counter()
    attr_prompts = (
        cached_refused_prompts(chat, harmful, direction.refusal_token_ids, cfg.n_attribution)
        if need & {"ig", "ap"}
        else []
    )
    seconds["select prompts"] = time.perf_counter() - t0
    key = _fingerprint(chat, saes, direction, act_harmful, act_harmless, cfg, attr_prompts)
    out = Path(out_dir) if out_dir else None
    cache = stage_path("discovery", f"scores-{key}", ".safetensors")
    tables = ScoreTables.load(cache) if cache.is_file() else ScoreTables()
    cached = bool(tables.cossim)
    computed = False

    if not tables.cossim:
        tables.cossim = cossim_scores(saes, {l: direction.at_layer(l) for l in saes})
    if not tables.actdiff:
        t0 = time.perf_counter()
        h = activation_stats(chat, saes, act_harmful, progress=progress)
        b = activation_stats(chat, saes, act_harmless, progress=progress)
        tables.actdiff = actdiff_scores(h, b, cfg.actdiff_reduce)
        tables.peak_harmful = {l: h[l]["peak"] for l in h}
        seconds["actdiff"] = time.perf_counter() - t0
        computed = True
    ablation = direction.ablation()
    for method in ("ap", "ig"):
        if method in need and not getattr(tables, method):
            t0 = time.perf_counter()
            attribute = attribution_scores if executor is None else executor.attribution_scores
            attr = attribute(
                chat,
                saes,
                attr_prompts,
                ablation,
                direction.refusal_token_ids,
                method,
                steps=cfg.ig_steps,
                batch_size=cfg.attribution_batch,
                progress=progress,
            )
            setattr(tables, method, attr.mean)
            setattr(tables, f"{method}_per_prompt", attr.per_prompt)
            tables.error_share[method] = {l: attr.error_share(l) for l in saes}
            seconds[method] = time.perf_counter() - t0
            computed = True
    if computed or not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tables.save(cache)

    common = {
        "model": chat.info.to_dict(),
        "saes": sae_identity(saes),
        "direction": {
            "layer": direction.layer,
            "position": direction.position,
            "sha256": hashlib.sha256(direction.raw.numpy().tobytes()).hexdigest()[:16],
        },
    }
    sets: dict[str, FeatureSet] = {}
    main = select(tables, cfg.method, cfg.k, cfg.prefilter_k, cfg.per_prompt, seed=cfg.seed)
    for method in (cfg.method, *cfg.baselines):
        chosen = (
            main
            if method == cfg.method
            else select(
                tables,
                method,
                cfg.k,
                cfg.prefilter_k,
                cfg.per_prompt,
                reference=[(f.layer, f.feature) for f in main],
                seed=cfg.seed,
            )
        )
        sets[method] = FeatureSet(
            method=method,
            k=cfg.k,
            features=chosen,
            **common,
            settings=asdict(cfg),
            provenance={
                "scores": str(cache),
                "n_attribution_prompts": len(attr_prompts),
                "error_share": tables.error_share,
                "versions": package_versions(),
            },
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text_if_changed(out / "features.json", json.dumps(sets[cfg.method].to_dict(), indent=2))
        for method, fs in sets.items():
            write_text_if_changed(out / f"features-{method.replace('+', '_')}.json", json.dumps(fs.to_dict(), indent=2))
        write_text_if_changed(out / "attribution_prompts.json", json.dumps(attr_prompts, indent=2))
    return Discovery(tables, sets, attr_prompts, seconds, cached)


def top_table(fs: FeatureSet, n: int = 20) -> list[list[str]]:
    header = ["rank", "layer", "latent", "score", "cossim", "actdiff", "ap", "ig"]
    rows = [header]
    for f in fs.features[:n]:
        s = f.scores
        rows.append(
            [str(f.rank), str(f.layer), str(f.feature), f"{f.score:.4g}"]
            + [f"{s[m]:.3g}" if m in s else "" for m in ("cossim", "actdiff", "ap", "ig")]
        )
    return rows
