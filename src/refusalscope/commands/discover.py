"""Commands for refusal discovery: the dense direction, and SAE latent discovery + validation."""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._app import DtypeOpt, ModelOpt, at_least, check_dtype, command, console

if TYPE_CHECKING:
    from ..models.chat import ChatModel

DataDirOpt = typer.Option(None, "--data-dir", help="Folder of benchmark files (default $REFUSALSCOPE_DATA).")
EVAL_SETS = ("harmbench", "jailbreakbench", "advbench")


def peak_memory_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def print_rows(rows: list[list[str]], title: str) -> None:
    table = Table(title=escape(title))
    for name in rows[0]:
        table.add_column(escape(name))
    for row in rows[1:]:
        table.add_row(*[escape(c) for c in row])
    console.print(table)


def harmful_eval_sets(names, n: int, data_dir, seed: int, exclude: set[str]) -> dict[str, list[str]]:
    """Held-out harmful prompts per benchmark (training prompts removed; HarmBench: standard behaviours)."""
    from ..data import load_dataset

    sources = {
        "harmbench": ("harmful/harmbench", "test"),
        "jailbreakbench": ("harmful/jailbreakbench", None),
        "advbench": ("harmful/advbench", None),
    }
    out = {}
    for name in names:
        if name not in sources:
            from ..errors import RefusalScopeError

            raise RefusalScopeError(f"unknown evaluation set '{name}'", f"use some of {', '.join(sources)}")
        dataset, split = sources[name]
        items = load_dataset(dataset, split, data_dir=data_dir)
        prompts = [
            it.prompt
            for it in items
            if it.prompt not in exclude and it.meta.get("functional_category", "standard") == "standard"
        ]
        import random

        rng = random.Random(seed)
        out[name] = sorted(rng.sample(prompts, min(n, len(prompts))), key=prompts.index)
    return out


def preload_saes(sae_paths: list[str]) -> list:
    """Read every --sae before the model is loaded, so a bad path or file costs no model load."""
    from ..errors import RefusalScopeError
    from ..sae.io import load_sae

    out = []
    for source in sae_paths:
        sae = load_sae(source)
        if sae.layer is None:
            raise RefusalScopeError(
                f"the SAE {source} does not say which layer it reads", "fix its cfg.json (hook_name)"
            )
        out.append(sae)
    return out


def load_saes(chat: ChatModel, sae_paths: list[str], preset: str, data_dir, preloaded: list | None = None) -> dict:
    from ..sae.presets import train_preset

    if sae_paths:
        saes = {}
        for sae in preloaded if preloaded is not None else preload_saes(sae_paths):
            sae.check_model(chat)
            saes[sae.layer] = sae
        return saes
    return train_preset(chat, preset, data_dir=data_dir)


def check_discover_options(**o) -> dict:
    """Every `discover` option that needs no model, checked before the model loads (the
    direction and attribution stages take minutes; a typo in --induce must not wait for them)."""
    from ..checks import choice, number_list, output_dir
    from ..discovery import METHODS
    from ..sae.presets import get_preset

    check_dtype(o["dtype"])
    method = choice(o["method"], "--method", METHODS)
    baselines = tuple(choice(b.strip(), "--baselines entry", METHODS) for b in o["baselines"].split(",") if b.strip())
    for name, minimum in (
        ("k", 1),
        ("prefilter_k", 1),
        ("ig_steps", 1),
        ("n_attribution", 1),
        ("n_eval", 1),
        ("induce_top", 0),
        ("max_new_tokens", 1),
        ("seed", 0),
    ):
        at_least(o[name], "--" + name.replace("_", "-"), minimum)
    eval_sets = [s.strip() for s in o["eval_sets"].split(",") if s.strip()]
    if not eval_sets:
        from ..errors import RefusalScopeError

        raise RefusalScopeError("--eval-sets names no evaluation set", f"use some of {', '.join(EVAL_SETS)}")
    for name in eval_sets:
        choice(name, "--eval-sets entry", EVAL_SETS)
    get_preset(o["sae_preset"])
    output_dir(o["output"], "output folder")
    return {
        "method": method,
        "baselines": tuple(b for b in baselines if b != method),
        "eval_sets": eval_sets,
        "suppress": number_list(o["suppress"], "--suppress"),
        "induce": number_list(o["induce"], "--induce"),
    }


@command("direction")
def direction_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    data_dir: Optional[Path] = DataDirOpt,
    n_train: int = typer.Option(128, help="Harmful and harmless training prompts (each)."),
    n_val: int = typer.Option(32, help="Held-out prompts (each) for selecting the direction."),
    layer_stride: int = typer.Option(1, help="Score every n-th layer (2 halves the time)."),
    n_effect: int = typer.Option(32, help="Prompts (each) for measuring the direction's effect; 0 skips it."),
    seed: int = typer.Option(0),
    output: Path = typer.Option(
        Path("runs/direction"), "--output", "-o", help="Folder for direction.safetensors/json."
    ),
) -> None:
    """Compute the refusal direction (difference of means), select its layer and position, measure its effect."""
    from ..checks import output_dir
    from ..data import load_dataset
    from ..direction import direction_effect, find_refusal_direction, sample_direction_data
    from ..models import load_model

    check_dtype(dtype)
    at_least(n_train, "--n-train", 2)
    at_least(n_val, "--n-val", 1)
    at_least(layer_stride, "--layer-stride", 1)
    at_least(n_effect, "--n-effect", 0)
    at_least(seed, "--seed", 0)
    output_dir(output, "output folder")
    started = time.perf_counter()
    data = sample_direction_data(data_dir, n_train, n_val, seed)
    chat = load_model(model, dtype=dtype)
    result = find_refusal_direction(chat, data, layer_stride=layer_stride, seed=seed)
    result.save(output)
    finalists = sorted(
        (c for c in result.scores if c.kl is not None),
        key=lambda c: math.inf if c.ablation_score is None else c.ablation_score,
    )
    rows = [["layer", "position", "ablation score", "induction score", "KL", "admissible"]]
    for c in finalists:
        rows.append(
            [
                str(c.layer),
                str(c.position),
                f"{c.ablation_score:.2f}",
                f"{c.induction_score:.2f}",
                f"{c.kl:.3f}",
                "yes" if c.admissible else c.reason,
            ]
        )
    print_rows(
        rows,
        f"{chat.info.name}: refusal direction candidates (baseline harmful score "
        f"{result.baseline['harmful_score']:.2f}, harmless {result.baseline['harmless_score']:.2f})",
    )
    console.print(
        f"selected layer {result.layer}, position {result.position} "
        f"(refusal tokens {[chat.tokenizer.decode([t]) for t in result.refusal_token_ids]})",
        markup=False,
    )
    summary: dict[str, Any] = {
        "layer": result.layer,
        "position": result.position,
        "seconds": time.perf_counter() - started,
    }
    if n_effect > 0:
        harmful = load_dataset(
            "harmful/refusal-direction", "test", data_dir=data_dir, limit=n_effect, seed=seed
        ).prompts
        harmless = load_dataset("harmless/alpaca", "test", data_dir=data_dir, limit=n_effect, seed=seed).prompts
        effect = direction_effect(chat, result, harmful, harmless)
        for key in (
            "harmful_compliance_baseline",
            "harmful_compliance_ablated",
            "harmless_refusal_baseline",
            "harmless_refusal_actadd",
        ):
            console.print(f"  {key.replace('_', ' ')}: {effect[key]}")
        summary["effect"] = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in effect.items()}
    summary["peak_memory_gb"] = peak_memory_gb()
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {output}", markup=False, highlight=False)


@command("discover")
def discover_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    sae: Optional[list[str]] = typer.Option(
        None, "--sae", help="SAE folder / release/id (repeatable); default: the preset's SAEs."
    ),
    sae_preset: str = typer.Option("quick", help="SAE preset to train or load when no --sae is given."),
    method: str = typer.Option("cossim+ig", help="Selection method: cossim+ig, ig, ap, cossim, actdiff."),
    baselines: str = typer.Option(
        "random,cossim,actdiff,ap", help="Comma-separated baseline methods to validate against."
    ),
    k: int = typer.Option(20, "-k", "--k", help="Latents to keep."),
    prefilter_k: int = typer.Option(64, help="CosSim pre-filter size per layer (cossim+ig)."),
    per_prompt: bool = typer.Option(False, help="Select by per-prompt top-K votes instead of the global mean."),
    ig_steps: int = typer.Option(10, help="Integrated-gradient steps."),
    n_attribution: int = typer.Option(32, help="Harmful prompts to attribute."),
    validate_: bool = typer.Option(True, "--validate/--no-validate", help="Run the causal validation table."),
    cards: bool = typer.Option(
        True, "--cards/--no-cards", help="Write feature cards (cards.html) for the selected latents."
    ),
    circuits: bool = typer.Option(
        True, "--circuits/--no-circuits", help="Upstream latents driving the selected ones (needs 2+ SAE layers)."
    ),
    n_eval: int = typer.Option(32, help="Prompts per evaluation set in validation."),
    eval_sets: str = typer.Option(",".join(EVAL_SETS), help="Harmful evaluation sets."),
    suppress: str = typer.Option("-1,-2,-3", help="Suppression factors."),
    induce: str = typer.Option("1,2,4", help="Induction multipliers (× peak activation)."),
    induce_top: int = typer.Option(
        0,
        help="Induce with each set's top-n latents only (0: all k). "
        "Many latents clamped at once can break the text instead of inducing refusal.",
    ),
    max_new_tokens: int = typer.Option(24, help="Tokens per judged reply."),
    data_dir: Optional[Path] = DataDirOpt,
    seed: int = typer.Option(0),
    output: Path = typer.Option(Path("runs/discover"), "--output", "-o", help="Output folder."),
) -> None:
    """Find the SAE latents that mediate refusal (CosSim+IG by default) and validate them causally."""
    from ..data import load_dataset
    from ..direction import find_refusal_direction, sample_direction_data
    from ..discovery import DiscoveryConfig, ValidationConfig, discover, validate
    from ..discovery.pipeline import top_table
    from ..discovery.validation import format_table
    from ..evaluation.loss import answer_documents
    from ..generations import cached_replies
    from ..models import load_model
    from ..sae.corpus import text_chunks
    from ..sae.presets import load_training_data

    settings = check_discover_options(
        dtype=dtype,
        method=method,
        baselines=baselines,
        k=k,
        prefilter_k=prefilter_k,
        ig_steps=ig_steps,
        n_attribution=n_attribution,
        n_eval=n_eval,
        eval_sets=eval_sets,
        suppress=suppress,
        induce=induce,
        induce_top=induce_top,
        max_new_tokens=max_new_tokens,
        seed=seed,
        sae_preset=sae_preset,
        output=output,
    )
    started = time.perf_counter()
    timings = {}
    preloaded = preload_saes(list(sae or []))
    data = sample_direction_data(data_dir, 128, 32, seed)
    chat = load_model(model, dtype=dtype)
    saes = load_saes(chat, list(sae or []), sae_preset, data_dir, preloaded)
    timings["saes"] = time.perf_counter() - started
    t0 = time.perf_counter()
    direction = find_refusal_direction(chat, data, seed=seed)
    timings["direction"] = time.perf_counter() - t0
    cfg = DiscoveryConfig(
        method=settings["method"],
        baselines=settings["baselines"],
        k=k,
        prefilter_k=prefilter_k,
        per_prompt=per_prompt,
        ig_steps=ig_steps,
        n_attribution=n_attribution,
        seed=seed,
    )
    t0 = time.perf_counter()
    found = discover(chat, saes, direction, data.harmful_train, data.harmless_train, cfg, output)
    timings["discovery"] = time.perf_counter() - t0
    print_rows(top_table(found.sets[method]), f"{method}: top {k} latents (layers {sorted(saes)})")
    for name, shares in found.tables.error_share.items():
        console.print(
            f"  SAE error share of the {name} attribution: "
            + ", ".join(f"layer {l}: {v:.0%}" for l, v in shares.items())
        )
    summary: dict[str, Any] = {
        "timings": timings,
        "features": str(output / "features.json"),
        "error_share": found.tables.error_share,
    }
    main_set = found.sets[method]
    if cards:
        from ..discovery.cards import build_cards, write_cards

        t0 = time.perf_counter()
        text = load_training_data(data_dir).texts_eval[:12]
        built = build_cards(
            chat,
            saes,
            main_set.pairs(),
            {"harmful": data.harmful_train[:48], "harmless": data.harmless_train[:48], "text": text},
            data.harmful_val,
            data.harmless_val,
            ranks={(f.layer, f.feature): f.rank for f in main_set.features},
            scores={(f.layer, f.feature): f.scores for f in main_set.features},
        )
        console.print(
            f"feature cards: {write_cards(built, output, f'{chat.info.name}: {method} latents')}", markup=False
        )
        timings["cards"] = time.perf_counter() - t0
    if circuits and len(saes) >= 2:
        from ..discovery.circuits import upstream_latents

        t0 = time.perf_counter()
        layers = sorted(saes)
        down_layer = max(main_set.by_layer())
        up_layer = min(l for l in layers)
        if up_layer < down_layer:
            ranked = upstream_latents(
                chat, saes[up_layer], saes[down_layer], main_set.by_layer()[down_layer], data.harmful_val[:16]
            )
            rows = [["upstream layer", "latent", "attribution", "effect of clamping to 0"]]
            rows += [
                [str(u.layer), str(u.feature), f"{u.attribution:.3g}", "" if u.effect is None else f"{u.effect:+.0%}"]
                for u in ranked
            ]
            print_rows(rows, f"upstream latents (layer {up_layer}) driving the selected layer-{down_layer} latents")
            (output / "circuits.json").write_text(
                json.dumps(
                    {
                        "upstream_layer": up_layer,
                        "downstream_layer": down_layer,
                        "downstream_features": main_set.by_layer()[down_layer],
                        "upstream": [u.__dict__ for u in ranked],
                    },
                    indent=2,
                )
            )
        timings["circuits"] = time.perf_counter() - t0
    if validate_:
        t0 = time.perf_counter()
        harmful_sets = harmful_eval_sets(
            settings["eval_sets"],
            n_eval,
            data_dir,
            seed,
            exclude=set(load_dataset("harmful/refusal-direction", "train", data_dir=data_dir).prompts),
        )
        harmless = load_dataset("harmless/alpaca", "test", data_dir=data_dir, limit=n_eval, seed=seed).prompts
        train_data = load_training_data(data_dir)
        text_docs = text_chunks(chat, train_data.texts_eval, 96, 8, seed)
        answer_prompts = load_dataset("harmless/alpaca", "val", data_dir=data_dir, limit=8, seed=seed + 1).prompts
        answers = cached_replies(chat, answer_prompts, max_new_tokens=48)
        answer_docs = answer_documents(chat, answer_prompts, answers)
        vcfg = ValidationConfig(
            suppress_factors=settings["suppress"],
            induce_multipliers=settings["induce"],
            max_new_tokens=max_new_tokens,
            induce_top=induce_top or None,
        )
        sets = {m: fs.pairs() for m, fs in found.sets.items()}
        report = validate(
            chat,
            saes,
            sets,
            direction,
            harmful_sets,
            harmless,
            found.tables.peak_harmful,
            vcfg,
            text_docs=text_docs,
            answer_docs=answer_docs,
        )
        timings["validation"] = time.perf_counter() - t0
        rows = format_table(report)
        print_rows(
            rows,
            "causal validation: compliance on harmful (suppress), refusal on harmless (induce), "
            "cross-entropy (rate [95% CI] (n))",
        )
        (output / "validation.json").write_text(json.dumps(report.to_dict(), indent=2))
        (output / "validation.md").write_text(_markdown(rows))
    timings["total"] = time.perf_counter() - started
    summary["peak_memory_gb"] = peak_memory_gb()
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"runtime {timings['total'] / 60:.1f} min, peak memory {summary['peak_memory_gb']:.1f} GiB; wrote {output}",
        markup=False,
    )


def _markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"
