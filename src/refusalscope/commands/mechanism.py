"""Commands for how jailbreaks defeat refusal (`jailbreak-analysis`) and for harm probes
that generalise to jailbreaks (`probes`), both on top of `discover`'s features.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ._app import DtypeOpt, ModelOpt, command, console

if TYPE_CHECKING:
    from ..mechanism.latents import LatentGroup
    from ..models.chat import ChatModel

DataDirOpt = typer.Option(None, "--data-dir", help="Folder of benchmark files (default $REFUSALSCOPE_DATA).")
FeaturesOpt = typer.Option(
    Path("runs/discover/features.json"), "--features", help="features.json from `refusalscope discover`."
)
SaeOpt = typer.Option(
    None, "--sae", help="SAE folder(s) for the features' layers (default: the sources features.json records)."
)
HarmSaeOpt = typer.Option(
    None,
    "--harm-sae",
    help="An earlier-layer SAE whose latents driving the refusal latents "
    "form the 'harm' group (omit: no harm latents).",
)
HarmLayerOpt = typer.Option(
    None,
    "--harm-layer",
    help="Instead of --harm-sae: the quick preset's SAE at this earlier layer "
    "(from the SAE cache; trained there on first use, ~10 min on 2 cores).",
)
NHarmOpt = typer.Option(10, "--n-harm", help="Upstream harm latents to keep.")
DEFAULT_ATTACKS = "pair,gcg,jbc,random-search,templates,past-tense"


def _print_rows(rows: list[list[str]], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for name in rows[0]:
        table.add_column(escape(name))
    for row in rows[1:]:
        table.add_row(*[escape(str(c)) for c in row])
    console.print(table)


def _est(e, fmt: str = ".2f") -> str:
    if e.n == 0 or e.value != e.value:
        return "n/a"
    return f"{e.value:{fmt}} [{e.low:{fmt}}, {e.high:{fmt}}]"


def _check_inputs(
    features: Path, attacks: list[str], data_dir, harm_sae: Optional[str] = None, harm_layer: Optional[int] = None
) -> None:
    from ..data import resolve_data_dir
    from ..discovery.features import FeatureSet
    from ..errors import RefusalScopeError
    from ..mechanism.pairs import ATTACKS

    fs = FeatureSet.load(features)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise RefusalScopeError(
            f"unknown attack(s) {', '.join(unknown) or '(none given)'}", f"use some of {', '.join(ATTACKS)}"
        )
    if harm_layer is not None:
        if harm_sae:
            raise RefusalScopeError("--harm-sae and --harm-layer both name the harm SAE", "give one of them")
        deepest = max(fs.by_layer())
        if not 0 <= harm_layer < deepest:
            raise RefusalScopeError(
                f"--harm-layer {harm_layer} is not upstream of the refusal latents (layer {deepest})",
                f"use a layer in [0, {deepest - 1}], e.g. --harm-layer {deepest // 2}",
            )
    resolve_data_dir(data_dir)


def _groups(
    chat: ChatModel,
    features: Path,
    sae: list[str],
    harm_sae: Optional[str],
    n_harm: int,
    data_dir,
    seed: int,
    harm_layer: Optional[int] = None,
):
    from ..data import load_dataset
    from ..mechanism.latents import load_feature_groups, upstream_group
    from ..sae.io import load_sae

    refusal, raw = load_feature_groups(features, chat, sae)
    harm: LatentGroup | None = None
    harm_rows: list[dict] = []
    if harm_sae or harm_layer is not None:
        if harm_layer is not None:
            from ..sae.presets import train_preset

            up = train_preset(chat, "quick", data_dir, layers=[harm_layer])[harm_layer]
        else:
            up = load_sae(str(harm_sae), model=chat)
        prompts = load_dataset("harmful/refusal-direction", "val", data_dir=data_dir, limit=16, seed=seed).prompts
        harm, harm_rows = upstream_group(
            chat, up, refusal, prompts, n_harm, features.parent / "circuits.json", progress=True
        )
    return refusal, harm, harm_rows, raw


@command("jailbreak-analysis")
def jailbreak_analysis_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    features: Path = FeaturesOpt,
    sae: Optional[list[str]] = SaeOpt,
    harm_sae: Optional[str] = HarmSaeOpt,
    harm_layer: Optional[int] = HarmLayerOpt,
    n_harm: int = NHarmOpt,
    attacks: str = typer.Option(
        DEFAULT_ATTACKS,
        help="Comma-separated: pair, gcg, jbc, random-search, dsn, templates, past-tense, future-tense, wildjailbreak.",
    ),
    per_attack: int = typer.Option(16, help="Vanilla/jailbroken pairs per attack (seeded sample)."),
    max_new_tokens: int = typer.Option(32, help="Tokens of each greedy reply the judge reads."),
    judge_name: str = typer.Option(
        "default",
        "--judge",
        help="Reply judge deciding success: 'default' (the project's "
        "default judge) or any name `refusalscope judge-validate` knows, e.g. substring.",
    ),
    n_attribution: int = typer.Option(
        32, help="Jailbroken prompts (a seeded sample) to attribute to tokens (0: all; ~4 s each on 2 cores)."
    ),
    n_loo: int = typer.Option(
        3, help="Prompts on which gradient x input is checked against leave-one-token-out (~25 s each)."
    ),
    min_prompts: int = typer.Option(3, help="A word must occur in this many prompts to be ranked."),
    data_dir: Optional[Path] = DataDirOpt,
    seed: int = typer.Option(0),
    output: Path = typer.Option(Path("runs/jailbreak-analysis"), "--output", "-o", help="Output folder."),
) -> None:
    """Do jailbreaks suppress the refusal and harm latents? By attack and success, which words do it, a heat map."""
    import numpy as np

    from ..mechanism.heatmap import heatmap_html, page_html, paragraph, section_html, table_html, token_activations
    from ..mechanism.latents import measure_while_generating
    from ..mechanism.pairs import build_pairs
    from ..mechanism.suppression import drop_gap, jailbreak_success, reply_judge, suppression_table
    from ..mechanism.token_attribution import attribute_tokens, loo_check, word_scores
    from ..models import load_model
    from ..paths import atomic_file
    from ..provenance import package_versions

    started = time.perf_counter()
    timings: dict[str, float] = {}
    attack_list = [a.strip() for a in attacks.split(",") if a.strip()]
    _check_inputs(features, attack_list, data_dir, harm_sae, harm_layer)
    pairs = build_pairs(attack_list, data_dir, per_attack, seed)
    judge = reply_judge(judge_name)
    chat = load_model(model, dtype=dtype)
    timings["setup"] = time.perf_counter() - started
    t0 = time.perf_counter()
    refusal, harm, harm_rows, raw = _groups(
        chat, features, list(sae or []), harm_sae, n_harm, data_dir, seed, harm_layer
    )
    groups = [refusal] + ([harm] if harm else [])
    timings["harm_latents"] = time.perf_counter() - t0

    # Attacks share JBB goals, so many pairs have the same vanilla request: each distinct
    # request is measured and answered once. Short vanilla prompts go in wide batches
    # (decoding is ~3x faster per token at batch 32 than at 8 on 2 cores); the long
    # jailbroken ones (DAN templates: ~700 tokens) in batches of 16. The latents are read
    # during the replies' own prefill (one pass over each prompt, not two); the replies
    # land in the generation cache, where jailbreak_success reads them.
    requests = list(dict.fromkeys(p.vanilla for p in pairs))
    where = [requests.index(p.vanilla) for p in pairs]
    t0 = time.perf_counter()
    per_request = measure_while_generating(chat, groups, requests, max_new_tokens, batch_size=32, progress=True)
    vanilla = {g: a[where] for g, a in per_request.items()}
    jailbroken = measure_while_generating(
        chat, groups, [p.jailbroken for p in pairs], max_new_tokens, batch_size=16, progress=True
    )
    timings["activations_and_replies"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    succeeded, replies = jailbreak_success(
        chat,
        [p.vanilla for p in pairs],
        [p.jailbroken for p in pairs],
        judge,
        max_new_tokens,
        batch_size=16,
        progress=True,
    )
    complied, answers = jailbreak_success(chat, requests, requests, judge, max_new_tokens, batch_size=32, progress=True)
    vanilla_complied, vanilla_replies = [complied[i] for i in where], [answers[i] for i in where]
    timings["judging"] = time.perf_counter() - t0

    rows = suppression_table([p.attack for p in pairs], vanilla, jailbroken, succeeded, seed)
    gaps = {
        g.name: {"all attacks": drop_gap(vanilla[g.name], jailbroken[g.name], succeeded, seed).to_dict()}
        for g in groups
    }
    table = [["attack", "latents", "outcome", "n", "vanilla act", "jailbroken act", "relative drop"]]
    table += [[r.attack, r.group, r.outcome, str(r.n), _est(r.vanilla), _est(r.jailbroken), _est(r.drop)] for r in rows]
    _print_rows(
        table,
        f"{chat.info.name}: latent activation at post-instruction tokens, vanilla vs jailbroken "
        f"(mean [95% CI]); success = {getattr(judge, 'name', type(judge).__name__)} on the greedy reply",
    )
    for name, gap in gaps.items():
        g = gap["all attacks"]
        console.print(
            f"  {name}: drop on succeeded − drop on failed = {g['value']:.2f} [{g['low']:.2f}, {g['high']:.2f}]"
        )

    t0 = time.perf_counter()
    chosen = list(range(len(pairs)))
    if n_attribution and n_attribution < len(pairs):
        import random

        chosen = sorted(random.Random(seed).sample(chosen, n_attribution))
    items = attribute_tokens(chat, refusal, [pairs[i].jailbroken for i in chosen], progress=True)
    for i, item in zip(chosen, items):
        item.tags.update(attack=pairs[i].attack, succeeded=bool(succeeded[i]))
    words = word_scores(items, min_prompts, seed)
    check = loo_check(chat, refusal, items, n_loo, seed=seed) if n_loo else {}
    timings["attribution"] = time.perf_counter() - t0
    word_table = [["word", "mean suppression per occurrence", "prompts", "attacks"]]
    word_table += [
        [w.word, _est(w.suppression, ".3g"), str(w.n_prompts), ", ".join(f"{a}:{n}" for a, n in w.attacks.items())]
        for w in words[:25]
    ]
    _print_rows(word_table, "words whose tokens lower the refusal latents most (gradient x input, summed per word)")
    if check:
        console.print(
            f"  gradient x input vs leave-one-token-out on {check['n_prompts']} prompts: mean Spearman "
            f"{check['mean_spearman']:.2f}, top token agrees on {check['top_agreement']:.0%}"
        )

    # the heat map: the succeeded jailbreak whose refusal activation dropped most (else the largest drop)
    drops = vanilla["refusal"] - jailbroken["refusal"]
    order = sorted(range(len(pairs)), key=lambda i: (not succeeded[i], -drops[i]))
    pick = pairs[order[0]]
    heat_v = token_activations(chat, refusal, pick.vanilla)
    heat_j = token_activations(chat, refusal, pick.jailbroken)
    scale = float(max(heat_v.values.max(), heat_j.values.max(), 1e-9))
    timings["total"] = time.perf_counter() - started

    result = {
        "format": "refusalscope-jailbreak-analysis",
        "version": 1,
        "model": chat.info.to_dict(),
        "features": str(features),
        "features_sha": raw.get("saes"),
        "groups": [g.to_dict() for g in groups],
        "harm_latents": harm_rows,
        "judge": {"name": getattr(judge, "name", type(judge).__name__), "version": getattr(judge, "version", None)},
        "settings": {
            "attacks": attack_list,
            "per_attack": per_attack,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "positions": "post_instruction",
            "attribution": "gradient x input on token embeddings",
            "n_attribution": len(items),
            "n_loo": n_loo,
            "harm_sae": harm_sae,
            "harm_layer": harm_layer,
            "n_distinct_requests": len(requests),
        },
        "suppression": [r.to_dict() for r in rows],
        "drop_gap_succeeded_minus_failed": gaps,
        "words": [w.to_dict() for w in words[:100]],
        "loo_check": check,
        "pairs": [
            {
                **p.to_dict(),
                "succeeded": bool(s),
                "vanilla_complied": bool(vc),
                "reply": r,
                "vanilla_reply": vr,
                **{f"vanilla_{g}": float(vanilla[g][i]) for g in vanilla},
                **{f"jailbroken_{g}": float(jailbroken[g][i]) for g in jailbroken},
            }
            for i, (p, s, vc, r, vr) in enumerate(zip(pairs, succeeded, vanilla_complied, replies, vanilla_replies))
        ],
        "heatmap": {"pair": pick.to_dict(), "vanilla": heat_v.to_dict(), "jailbroken": heat_j.to_dict()},
        "success_rate": {
            a: float(np.mean([s for p, s in zip(pairs, succeeded) if p.attack == a])) for a in attack_list
        },
        "timings": timings,
        "versions": package_versions(),
    }
    output.mkdir(parents=True, exist_ok=True)
    with atomic_file(output / "analysis.json") as handle:
        json.dump(result, handle, indent=2, default=str)
    check_text = (
        (
            f"Method: gradient × input of the refusal latents' mean post-instruction activation with respect to "
            f"each token embedding (one backward per prompt; leave-one-token-out costs a forward per token). "
            f"Checked against leave-one-token-out on {check.get('n_prompts', 0)} prompts: mean Spearman "
            f"{check.get('mean_spearman', float('nan')):.2f}, same top token on "
            f"{check.get('top_agreement', float('nan')):.0%}."
        )
        if check
        else "No leave-one-token-out check was run."
    )
    html = page_html(
        f"How jailbreaks suppress refusal latents: {chat.info.name}",
        section_html(
            "suppression",
            "Suppression by attack and outcome",
            paragraph(
                "Mean activation of each latent group at the post-instruction tokens for the same request "
                "asked plainly and inside the jailbreak; relative drop = 1 − jailbroken/vanilla (paired "
                "bootstrap 95% CI). Success: the reply judge does not call the greedy reply a refusal."
            ),
            table_html(table[0], table[1:]),
        ),
        section_html(
            "words",
            "Words that suppress the refusal latents",
            paragraph(check_text),
            table_html(word_table[0], word_table[1:]),
        ),
        section_html(
            "heatmap",
            "One jailbreak, token by token",
            paragraph(
                f"Attack {pick.attack}; refusal-latent activation per token (same colour scale for both; "
                f"hover for values). Dotted underline: chat-template tokens."
            ),
            heatmap_html(heat_v, "vanilla request", scale),
            heatmap_html(heat_j, "jailbroken request", scale),
        ),
    )
    with atomic_file(output / "report.html") as handle:
        handle.write(html)
    console.print(
        f"runtime {timings['total'] / 60:.1f} min; wrote {output / 'analysis.json'} and {output / 'report.html'}"
    )


@command("probes")
def probes_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    features: Path = FeaturesOpt,
    sae: Optional[list[str]] = SaeOpt,
    harm_sae: Optional[str] = HarmSaeOpt,
    harm_layer: Optional[int] = HarmLayerOpt,
    n_harm: int = NHarmOpt,
    n_train: int = typer.Option(96, help="Vanilla training prompts per class."),
    n_val: int = typer.Option(32, help="Vanilla validation prompts per class (dense layer, thresholds, gate choice)."),
    n_test: int = typer.Option(48, help="Held-out vanilla prompts per class (in distribution)."),
    n_ood: int = typer.Option(
        48, help="Out-of-distribution prompts per class (jailbreaks vs XSTest safe + benign pairs)."
    ),
    attacks: str = typer.Option(DEFAULT_ATTACKS, help="Attacks whose jailbroken prompts form the OOD harmful set."),
    n_random: int = typer.Option(5, help="Draws of random live latents."),
    layer_stride: int = typer.Option(2, help="Dense probes at every n-th layer (the best on validation is kept)."),
    n_capability: int = typer.Option(48, help="ARC-Easy questions on which each gate's firing rate is measured."),
    direction_dir: Optional[Path] = typer.Option(
        None,
        "--direction",
        help="Folder from `refusalscope direction` (default: the cached direction `discover` computed).",
    ),
    data_dir: Optional[Path] = DataDirOpt,
    seed: int = typer.Option(0),
    output: Path = typer.Option(Path("runs/probes"), "--output", "-o", help="Output folder."),
) -> None:
    """Linear harm probes trained on vanilla prompts, tested on jailbreaks; the best becomes a ProbeGate."""
    import numpy as np

    from ..data import load_dataset
    from ..direction import RefusalDirection, find_refusal_direction, sample_direction_data
    from ..errors import RefusalScopeError
    from ..mechanism.heatmap import page_html, paragraph, section_html, table_html
    from ..models import load_model
    from ..paths import atomic_file
    from ..probes.compare import compare_probes, table_rows
    from ..probes.datasets import probe_data
    from ..probes.gate import decisions_only, gate_table
    from ..provenance import package_versions

    started = time.perf_counter()
    attack_list = [a.strip() for a in attacks.split(",") if a.strip()]
    _check_inputs(features, attack_list, data_dir, harm_sae, harm_layer)
    if n_random < 5:
        raise RefusalScopeError(
            f"--n-random {n_random} is too few draws to show the spread of random latents", "use --n-random 5 or more"
        )
    if layer_stride < 1:
        raise RefusalScopeError(f"--layer-stride must be at least 1, got {layer_stride}")
    if direction_dir is not None:
        RefusalDirection.load(direction_dir)  # fail before loading the model
    data = probe_data(data_dir, n_train, n_val, n_test, n_ood, attack_list, seed)
    capability = (
        load_dataset("arc-easy", "validation", data_dir=data_dir, limit=n_capability, seed=seed).prompts
        if n_capability
        else []
    )
    chat = load_model(model, dtype=dtype)
    refusal, harm, harm_rows, raw = _groups(
        chat, features, list(sae or []), harm_sae, n_harm, data_dir, seed, harm_layer
    )
    if direction_dir is not None:
        direction = RefusalDirection.load(direction_dir)
    else:
        direction = find_refusal_direction(chat, sample_direction_data(data_dir, 128, 32, seed), seed=seed)
    if direction.raw.numel() != chat.d_model or not 0 <= direction.layer < chat.n_layers:
        raise RefusalScopeError(
            "the refusal direction does not fit this model", "compute it with `refusalscope direction`"
        )
    layers = list(range(0, chat.n_layers, layer_stride))
    comparison = compare_probes(
        chat,
        data,
        refusal.parts,
        harm.parts if harm else None,
        (direction.layer, direction.raw.float().numpy()),
        layers,
        n_random,
        seed,
        progress=True,
    )
    rows = table_rows(comparison)
    _print_rows(
        rows,
        f"{chat.info.name}: harm probes trained on vanilla prompts (balanced accuracy, AUROC [95% CI]; "
        f"ID n={len(data.test_id)}, OOD n={len(data.test_ood)})",
    )

    best = comparison.best
    sae_of = {s.layer: s for s, _ in refusal.parts + (harm.parts if harm else [])}
    gate_sae = sae_of.get(best.probe.spec.layer) if best.probe.spec.kind == "latents" else None
    best.probe.info.update(
        name=best.name, model=chat.info.to_dict(), selected_by="validation AUROC, ties to fewer features"
    )
    best.probe.save(output / "gate-probe")
    gates = {f"probe gate ({best.name})": decisions_only(chat, best.probe, gate_sae)}
    known = {f"probe gate ({best.name})": {"id": best.id_scores, "ood": best.ood_scores}}
    projection = next((r.draws[0] for r in comparison.rows if r.name == "refusal-direction projection"), None)
    if projection is not None and projection is not best:
        gates["direction gate (refusal-direction projection)"] = decisions_only(chat, projection.probe)
        known["direction gate (refusal-direction projection)"] = {
            "id": projection.id_scores,
            "ood": projection.ood_scores,
        }
    # the gates' own check: on a few OOD prompts, the gate computed during a forward pass
    # equals the probe's logit on the features it was scored on
    sample = data.test_ood.prompts[:8]
    gate_check = float(
        np.abs(
            gates[f"probe gate ({best.name})"].decisions(chat, sample).scores.double().numpy() - best.ood_scores[:8]
        ).max()
    )
    console.print(f"  probe gate vs probe logit on 8 OOD prompts: max |difference| {gate_check:.2e}")
    gate_rows = gate_table(chat, gates, data, capability, seed, scores=known)
    # the gate block of a steering spec (a `conditional` intervention's "gate"), ready for a sweep
    with atomic_file(output / "gate.json") as handle:
        json.dump(gates[f"probe gate ({best.name})"].to_dict()["gate"], handle, indent=2)
    gate_print = [
        [
            "gate",
            "ID fire harmful",
            "ID fire harmless",
            "OOD fire jailbreaks",
            "OOD fire look-alikes",
            "ID bal. acc",
            "OOD bal. acc",
            "steers ARC-Easy",
        ]
    ]
    keys = (
        "id_fire_harmful",
        "id_fire_harmless",
        "ood_fire_harmful",
        "ood_fire_harmless",
        "id_balanced_accuracy",
        "ood_balanced_accuracy",
        "capability_fire",
    )
    for g in gate_rows:
        cells = [g.get(k) for k in keys]
        gate_print.append(
            [g["gate"]] + ["n/a" if e is None else f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]" for e in cells]
        )
    _print_rows(gate_print, "gates (threshold chosen on validation), fire rates [95% CI]")
    seconds = time.perf_counter() - started
    result = {
        "format": "refusalscope-probes",
        "version": 1,
        "model": chat.info.to_dict(),
        "features": str(features),
        "groups": [refusal.to_dict()] + ([harm.to_dict()] if harm else []),
        "harm_latents": harm_rows,
        "direction": {"layer": direction.layer, "position": direction.position},
        "data": data.summary(),
        "comparison": comparison.to_dict(),
        "gates": gate_rows,
        "gate_check_max_diff": gate_check,
        "gate_probe": str(output / "gate-probe"),
        "settings": {
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "n_ood": n_ood,
            "attacks": attack_list,
            "n_random": n_random,
            "layers": layers,
            "seed": seed,
            "positions": "post_instruction (mean)",
            "classifier": "LogisticRegressionCV (L2, C in 1e-4..1e2 (7 values), 5-fold, balanced classes), standardised inputs",
        },
        "seconds": seconds,
        "versions": package_versions(),
    }
    output.mkdir(parents=True, exist_ok=True)
    with atomic_file(output / "probes.json") as handle:
        json.dump(result, handle, indent=2, default=str)
    html = page_html(
        f"Harm probes in and out of distribution: {chat.info.name}",
        section_html(
            "probes",
            "Probe table",
            paragraph(
                "Trained on vanilla harmful (refusal-direction splits) vs harmless (Alpaca) prompts; ID = "
                "held-out vanilla; OOD = jailbroken harmful vs XSTest safe and benign minimal pairs. "
                "Features averaged over the post-instruction tokens. Random latents: mean, and min–max "
                "over draws."
            ),
            table_html(rows[0], rows[1:]),
        ),
        section_html("gates", "Gates for conditional steering", table_html(gate_print[0], gate_print[1:])),
    )
    with atomic_file(output / "report.html") as handle:
        handle.write(html)
    console.print(
        f"runtime {seconds / 60:.1f} min; wrote {output / 'probes.json'}, {output / 'report.html'}, "
        f"{output / 'gate-probe'}, {output / 'gate.json'} (a steering spec's gate)"
    )
