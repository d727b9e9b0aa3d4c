"""`refusalscope optimize`: tune each steering method for Δs within a capability budget on
a validation split, then measure each method's choice on a held-out test split, and draw
the trade-off (Pareto figure + headline table)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import typer

from ._app import DtypeOpt, ModelOpt, at_least, check_dtype, command, console

DEFAULT_METHODS = "features,gated,features-nullspace,actadd,actadd-nullspace,learned"  # + gated-probe with --probe
SEARCH_MODES = ("auto", "first-token", "replies")


def _strength_range(text: str) -> tuple[float, float]:
    from ..checks import number_list
    from ..errors import RefusalScopeError

    values = number_list(text, "--strengths")
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise RefusalScopeError(
            f"--strengths must be LOW,HIGH with 0 < LOW <= HIGH, got '{text}'",
            "e.g. --strengths 0.05,2 (multiples of each latent's peak / of the refusal vector)",
        )
    return values[0], values[1]


def _shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)  # datasets keep their file order (JailbreakBench is sorted by category)
    return items


def _take(items: list, sizes: list[int], what: str, option: str) -> list[list]:
    from ..errors import RefusalScopeError

    if len(items) < sum(sizes):
        raise RefusalScopeError(
            f"{what} has {len(items)} items, fewer than the {sum(sizes)} the splits need", f"lower {option}"
        )
    out, start = [], 0
    for n in sizes:
        out.append(items[start : start + n])
        start += n
    return out


@command("optimize")
def optimize_cmd(
    model: str = ModelOpt,
    dtype: str = DtypeOpt,
    features: Optional[Path] = typer.Option(
        None,
        "--features",
        help="features.json from `discover` or `run` (the ranked "
        "latents; needed by the features, gated, gated-probe and features-nullspace methods).",
    ),
    sae: Optional[list[str]] = typer.Option(
        None, "--sae", help="SAE folder(s) for the features' layers (default: the sources features.json records)."
    ),
    direction: Path = typer.Option(
        Path("runs/direction"),
        "--direction",
        help="Refusal-direction folder (`direction` or `run` wrote it): its "
        "refusal tokens score the first token; the dense methods, the gate and the learned map use it.",
    ),
    methods: Optional[str] = typer.Option(
        None,
        "--methods",
        help=f"Comma-separated method families to tune and compare (default: {DEFAULT_METHODS}, and gated-probe "
        "with --probe): features, gated (refusal-direction gate), gated-probe (a saved probe's gate), "
        "features-nullspace, actadd, actadd-nullspace, learned.",
    ),
    probe: Optional[Path] = typer.Option(
        None,
        "--probe",
        help="A saved probe (the folder `refusalscope probes` writes, e.g. runs/probes/gate-probe, or its "
        "probe.json) for the gated-probe method: the latent clamp gated by the probe's mean post-instruction "
        "logit instead of the refusal-direction projection. Adds gated-probe to the default --methods.",
    ),
    n_trials: int = typer.Option(
        12, "--n-trials", help="Optuna trials per method (a rerun resumes and adds only the missing)."
    ),
    n_val: int = typer.Option(24, "--n-val", help="Harmful and benign prompts (each) in the validation split."),
    n_test: int = typer.Option(32, "--n-test", help="Harmful and benign prompts (each) in the held-out test split."),
    n_texts: int = typer.Option(
        8, "--n-texts", help="WikiText documents (first 128 tokens) per split for the text loss."
    ),
    mc_task: str = typer.Option(
        "arc-easy",
        "--mc-task",
        help="Multiple-choice capability task (the default model is above chance on arc-easy, at chance on MMLU).",
    ),
    mc_split: str = typer.Option(
        "validation",
        "--mc-split",
        help="Split of the multiple-choice dataset (shared data holds ARC's Dev = 'validation' split only).",
    ),
    n_mc: int = typer.Option(100, "--n-mc", help="Multiple-choice items in the test split (0: none)."),
    n_mc_val: int = typer.Option(
        0,
        "--n-mc-val",
        help="Multiple-choice items in the validation split; >0 puts the MC drop "
        "in the search's budget (each item costs one forward per choice per trial).",
    ),
    n_fit: int = typer.Option(
        32,
        "--n-fit",
        help="Harmful and harmless refusal-direction training prompts (each) that fit "
        "the benign subspace, the learned map and the gate's threshold range.",
    ),
    n_fit_texts: int = typer.Option(16, "--n-fit-texts", help="Other WikiText documents for the benign subspace."),
    max_loss_increase: float = typer.Option(
        0.02,
        "--max-loss-increase",
        help="Budget: relative text-loss increase allowed on the validation split (0.02 = 2%).",
    ),
    max_mc_drop: float = typer.Option(
        0.05, "--max-mc-drop", help="Budget: multiple-choice accuracy drop allowed (with --n-mc-val)."
    ),
    max_latents: int = typer.Option(20, "--max-latents", help="Largest top-k of the ranked latents a trial may clamp."),
    strengths: str = typer.Option(
        "0.05,2",
        "--strengths",
        help="LOW,HIGH: the strength range searched (log scale): × each "
        "latent's harmful peak, × the refusal vector, × the learned map.",
    ),
    variance: float = typer.Option(
        0.99,
        "--variance",
        help="Share of the benign activations' second moment the benign subspace keeps (null-space methods).",
    ),
    judge: str = typer.Option(
        "learned",
        "--judge",
        help="Reply judge for the test split (replies generated), or "
        "'first-token' to use the calibrated first-token proxy there too.",
    ),
    max_new_tokens: int = typer.Option(
        24, "--max-new-tokens", help="Reply length the judge reads (test split, calibration)."
    ),
    search: str = typer.Option(
        "auto",
        "--search",
        help="How the search decides refusal on the validation split: 'first-token' (the calibrated "
        "first-token proxy, one forward per prompt), 'replies' (generate --max-new-tokens and judge them, "
        "as on the test split; slower, trustworthy), or 'auto' (the proxy when its held-out agreement "
        "with the judge reaches 0.85 or a threshold is given, else replies).",
    ),
    threshold: Optional[float] = typer.Option(
        None,
        "--first-token-threshold",
        help="First-token refusal log-odds threshold for the search (default: calibrated against the judge, cached).",
    ),
    n_calibration: int = typer.Option(
        24,
        "--n-calibration",
        help="Harmful and benign prompts (each, outside both splits) that calibrate the first-token "
        "threshold: half fit it, half check its agreement with the judge.",
    ),
    rank: str = typer.Option(
        "prior",
        "--rank",
        help="Order of the candidate latents the top-k is taken from: 'prior' (features.json, CosSim+IG) or "
        "'selective' (discovery.selectivity.rank_selective: refusal effect per unit of text loss, quiet on "
        "benign inputs; one forward per candidate over the fit prompts and texts).",
    ),
    harmful_data: str = typer.Option("harmful/jailbreakbench", "--harmful", help="Dataset of harmful requests."),
    benign_data: str = typer.Option("xstest/safe", "--benign", help="Dataset of benign requests (over-refusal)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder of benchmark files (default $REFUSALSCOPE_DATA)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seeds the splits, the sampler and the bootstrap."),
    output: Path = typer.Option(
        Path("runs/optimize"),
        "--output",
        "-o",
        help="Output folder: optimize.db (the resumable "
        "study), optimize.json, headline.md/.csv, pareto.png, specs/<method>.json.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar over the trials."),
) -> None:
    """Tune steering methods for Δs within a capability budget; compare their choices on a held-out test split."""
    from ..checks import number, output_dir, output_file
    from ..data import load_dataset, resolve_data_dir
    from ..direction import RefusalDirection, sample_direction_data
    from ..errors import RefusalScopeError
    from ..evaluation.capability import capability_task
    from ..evaluation.families import NEEDS_LATENTS, check_probe, load_probe, parse_families, probe_folder
    from ..evaluation.optimize import Budget, Split, check_study, import_optuna

    # ---- everything that needs no model, before the model loads
    families = parse_families(
        methods if methods is not None else DEFAULT_METHODS + (",gated-probe" if probe is not None else "")
    )
    check_dtype(dtype)
    for value, option, minimum in (
        (n_trials, "--n-trials", 1),
        (n_val, "--n-val", 2),
        (n_test, "--n-test", 2),
        (n_texts, "--n-texts", 1),
        (n_mc, "--n-mc", 0),
        (n_mc_val, "--n-mc-val", 0),
        (n_fit, "--n-fit", 2),
        (n_fit_texts, "--n-fit-texts", 1),
        (n_calibration, "--n-calibration", 2),
        (max_latents, "--max-latents", 1),
        (max_new_tokens, "--max-new-tokens", 1),
        (batch_size, "--batch-size", 1),
        (seed, "--seed", 0),
    ):
        at_least(value, option, minimum)
    budget = Budget(
        number(max_loss_increase, "--max-loss-increase", minimum=0.0),
        number(max_mc_drop, "--max-mc-drop", minimum=0.0, maximum=1.0),
    )
    lo, hi = _strength_range(strengths)
    number(variance, "--variance", minimum=0.0, maximum=1.0)
    if variance <= 0:
        raise RefusalScopeError("--variance must be above 0", "e.g. --variance 0.99")
    if threshold is not None:
        number(threshold, "--first-token-threshold")
    if rank not in ("prior", "selective"):
        raise RefusalScopeError(f"unknown --rank '{rank}'", "use 'prior' or 'selective'")
    out = output_dir(output, "output folder")
    output_file(out / "optimize.db", "study file")
    import_optuna()
    if NEEDS_LATENTS & set(families) and features is None:
        raise RefusalScopeError(
            f"the methods {', '.join(f for f in families if f in NEEDS_LATENTS)} need ranked latents",
            "pass --features features.json (from `refusalscope discover` or `run`), or drop them from --methods",
        )
    if features is not None:
        from ..discovery.features import FeatureSet

        try:
            FeatureSet.load(features)
        except RefusalScopeError as exc:
            raise RefusalScopeError(
                exc.problem, exc.fix or "pass the features.json `refusalscope discover` or `run` wrote"
            ) from None
    if "gated-probe" in families and probe is None:
        raise RefusalScopeError(
            "the gated-probe method needs a probe",
            "pass --probe runs/.../probes/gate-probe (written by `refusalscope probes`), or drop it from --methods",
        )
    probe_setting, gate_probe = None, None
    if probe is not None:
        import hashlib

        from ..probes.linear import META_FILE, WEIGHTS_FILE

        gate_probe = load_probe(probe)  # missing or damaged: one error now, not after the model loads
        if "gated-probe" in families and features is not None:
            check_probe(gate_probe, probe, before=min((p[0] for p in FeatureSet.load(features).pairs()), default=None))
        folder = probe_folder(probe)
        digest = hashlib.sha256(b"".join((folder / f).read_bytes() for f in (META_FILE, WEIGHTS_FILE)))
        # what the probe is, not only where: a probe retrained in the same folder is another study
        probe_setting = {"path": str(folder), "sha256": digest.hexdigest(), "layer": gate_probe.spec.layer}
    refusal_direction = RefusalDirection.load(direction)
    if not refusal_direction.refusal_token_ids:
        raise RefusalScopeError(f"{direction} records no refusal tokens", "rerun `refusalscope direction`")
    from ..mechanism.suppression import reply_judge

    test_judge = None if judge == "first-token" else reply_judge(judge)
    if search not in SEARCH_MODES:
        raise RefusalScopeError(f"unknown --search '{search}'", f"use one of {', '.join(SEARCH_MODES)}")
    resolve_data_dir(data_dir)
    from ..evaluation.optimize import one_prompt_per_behaviour

    harmful, harmful_dropped = one_prompt_per_behaviour(load_dataset(harmful_data, data_dir=data_dir).items, seed)
    benign, benign_dropped = one_prompt_per_behaviour(load_dataset(benign_data, data_dir=data_dir).items, seed)
    if harmful_dropped or benign_dropped:
        console.print(
            f"one prompt per behaviour: {len(harmful)} harmful and {len(benign)} benign behaviours "
            f"({harmful_dropped + benign_dropped} other prompts on the same behaviours left out, so no behaviour "
            "is in two splits)",
            highlight=False,
            markup=False,
        )
    per_behaviour = " (one prompt per behaviour)"
    val_harm, test_harm = _take(
        harmful,
        [n_val, n_test],
        f"dataset '{harmful_data}'" + per_behaviour * bool(harmful_dropped),
        "--n-val/--n-test",
    )
    val_benign, test_benign = _take(
        benign, [n_val, n_test], f"dataset '{benign_data}'" + per_behaviour * bool(benign_dropped), "--n-val/--n-test"
    )
    wikitext = capability_task("wikitext", data_dir=data_dir)
    texts = _shuffled([it.text for it in wikitext.items(data_dir, 2 * n_texts + n_fit_texts, seed)], seed)
    val_texts, test_texts, fit_texts = _take(
        texts, [n_texts, n_texts, n_fit_texts], "WikiText", "--n-texts/--n-fit-texts"
    )
    mc, val_mc, test_mc = None, [], []
    if n_mc or n_mc_val:
        import dataclasses

        mc = capability_task(mc_task, data_dir=data_dir)
        if not hasattr(mc, "fewshot_split"):
            raise RefusalScopeError(
                f"--mc-task {mc_task} is not a multiple-choice task",
                "use arc-easy, arc-challenge, mmlu or truthfulqa-mc1",
            )
        mc = dataclasses.replace(mc, split=mc_split)
        items = _shuffled(mc.items(data_dir, n_mc + n_mc_val, seed), seed)
        val_mc, test_mc = _take(items, [n_mc_val, n_mc], f"capability task '{mc_task}'", "--n-mc/--n-mc-val")
    validation = Split(val_harm, val_benign, val_texts, mc if val_mc else None, val_mc)
    test = Split(test_harm, test_benign, test_texts, mc if test_mc else None, test_mc)
    from ..evaluation.optimize import check_splits

    check_splits(validation, test)
    fit_data = sample_direction_data(data_dir, n_train=n_fit, n_val=16, seed=0)
    threshold_option = threshold
    run_settings = {
        "model": model,
        "dtype": dtype,
        "features": None if features is None else str(features),
        "direction": str(direction),
        "n_val": n_val,
        "n_test": n_test,
        "n_texts": n_texts,
        "mc_task": mc_task,
        "mc_split": mc_split,
        "n_mc": n_mc,
        "n_mc_val": n_mc_val,
        "n_fit": n_fit,
        "n_fit_texts": n_fit_texts,
        "budget": dict(budget.__dict__),
        "max_latents": max_latents,
        "strengths": [lo, hi],
        "variance": variance,
        "judge": judge,
        "max_new_tokens": max_new_tokens,
        "first_token_threshold": threshold_option,
        "search": search,
        # calibrated on held-out prompts of the split datasets, checked on half of them (Session 6);
        # a study searched with the older in-sample calibration must not be resumed with this one
        "first_token_calibration": None if threshold_option is not None else {"held_out": n_calibration},
        "rank": rank,
        "harmful": harmful_data,
        "benign": benign_data,
        "seed": seed,
    }
    if harmful_dropped or benign_dropped:  # recorded only when it changes the splits (older studies resume)
        run_settings["one_prompt_per_behaviour"] = True
    if probe_setting is not None:  # recorded only with --probe (older studies resume); another probe is refused
        run_settings["probe"] = probe_setting
    check_study(
        out / "optimize.db", "refusalscope", run_settings
    )  # a resumed study must match, known before the model loads

    # ---- the model, the families, the search
    from ..evaluation.families import FamilyData, Settings, build_spaces
    from ..evaluation.optimize import compare, first_token_refusals, reply_refusals
    from ..evaluation.pareto import headline_rows, write_outputs
    from ..models import load_model
    from ..provenance import package_versions
    from ..steering import Steering

    chat = load_model(model, dtype=dtype, progress=progress)
    if probe is not None and gate_probe is not None:  # another model's probe: refused before the calibration
        check_probe(gate_probe, probe, chat)

    def head(text: str) -> str:  # WikiText documents run to thousands of tokens: score (and fit on) their first 128
        return chat.decode(chat.encode(text)[:128])

    validation.texts, test.texts, fit_texts = ([head(t) for t in texts] for texts in (val_texts, test_texts, fit_texts))
    data = FamilyData(
        direction=refusal_direction,
        harmful=fit_data.harmful_train,
        harmless=fit_data.harmless_train,
        texts=fit_texts,
        probe=probe,
    )
    sources: dict = {}
    if features is not None:
        from ..discovery.features import FeatureSet, ScoreTables
        from ..discovery.selectivity import firing_fractions
        from ..discovery.validation import clamp_values
        from ..mechanism.latents import load_feature_groups

        group, _ = load_feature_groups(features, chat, list(sae or []))
        data.saes = {}
        for s, _ in group.parts:
            assert s.layer is not None  # LatentGroup checks that every SAE records its layer
            data.saes[s.layer] = s
        data.candidates = FeatureSet.load(features).pairs()
        scores = FeatureSet.load(features).provenance.get("scores")
        if scores and Path(scores).is_file():  # the peaks `discover` measured: the same clamp values as `run`
            peaks = ScoreTables.load(Path(scores)).peak_harmful
            values = clamp_values(data.candidates, peaks, 1.0)
            data.values = [values[p] for p in data.candidates]
            sources["clamp_values"] = f"peak harmful activation from {scores}"
        else:
            _, peak = firing_fractions(chat, data.saes, data.candidates, fit_data.harmful_train, batch_size=batch_size)
            alive = sorted(float(v) for v in peak if v > 0)
            fallback = alive[len(alive) // 2] if alive else 1.0
            data.values = [float(v) if v > 0 else fallback for v in peak]
            sources["clamp_values"] = (
                f"peak activation on {len(fit_data.harmful_train)} refusal-direction training prompts"
            )
    settings = Settings(max_latents=max_latents, strengths=(lo, hi), variance=variance, batch_size=batch_size)
    ids = list(map(int, refusal_direction.refusal_token_ids))
    if rank == "selective" and data.candidates:
        from ..discovery.selectivity import compare_with_prior, rank_selective

        ranked = rank_selective(
            chat,
            data.saes,
            data.candidates,
            harmful=fit_data.harmful_train,
            benign_prompts=fit_data.harmless_train,
            benign_texts=fit_texts,
            refusal_token_ids=ids,
            values=data.values,
            batch_size=batch_size,
            seed=seed,
        )
        order = [data.candidates.index((r.layer, r.feature)) for r in ranked]
        data.candidates = [data.candidates[i] for i in order]
        data.values = [data.values[i] for i in order]
        sources["ranking"] = {
            "by": "rank_selective (combined)",
            "compared_with_prior": compare_with_prior(ranked, min(max_latents, len(ranked))),
            "latents": [r.to_dict() for r in ranked],
        }
    search_judge = test_judge or reply_judge("default")
    use_replies = search == "replies"
    if threshold is None and search != "replies":
        from ..pipeline import checked_first_token_calibration

        calibration_judge = test_judge or reply_judge("default")
        calibration = {
            f"{harmful_data} (outside the splits)": harmful[n_val + n_test : n_val + n_test + n_calibration],
            f"{benign_data} (outside the splits)": benign[n_val + n_test : n_val + n_test + n_calibration],
        }
        if min(len(v) for v in calibration.values()) < 2:  # a small dataset: the direction's validation prompts
            calibration = {"refusal-direction val": fit_data.harmful_val, "alpaca val": fit_data.harmless_val}
        found = checked_first_token_calibration(chat, calibration, ids, max_new_tokens, calibration_judge, 0.85)
        threshold = found.threshold
        sources["first_token"] = {**found.to_dict(), "given": False}
        console.print(found.summary(), highlight=False, markup=False)
        if not found.usable and search == "auto":
            use_replies = True
            console.print(
                "the first-token proxy disagrees with the judge: the search judges generated replies instead "
                "(--search first-token forces the proxy)",
                highlight=False,
                markup=False,
            )
        elif not found.usable:
            console.print(
                "the search's first-token proxy disagrees with the judge: its validation numbers are rough; "
                + (
                    "--judge first-token uses it on the test split too (use --judge learned for trustworthy numbers)"
                    if test_judge is None
                    else "the test split is judged on generated replies"
                ),
                highlight=False,
                markup=False,
            )
    elif threshold is not None:
        sources["first_token"] = {"threshold": threshold, "given": True}
    spaces, fitted = build_spaces(chat, families, data, settings, progress=False)
    replies = reply_refusals(chat, search_judge, max_new_tokens, batch_size)
    if use_replies or threshold is None:  # (no threshold: --search replies skipped the calibration)
        use_replies, refused = True, replies
    else:
        refused = first_token_refusals(chat, ids, batch_size, threshold)
    test_refused = refused if test_judge is None else replies  # search_judge is test_judge here
    result = compare(
        chat,
        spaces,
        validation,
        test,
        storage=out / "optimize.db",
        n_trials=n_trials,
        budget=budget,
        refused=refused,
        test_refused=test_refused,
        batch_size=batch_size,
        seed=seed,
        settings=run_settings,
        progress=progress,
    )
    saved = result.to_dict()
    saved["fitted"] = fitted
    saved["sources"] = sources
    saved["refusal_decision"] = {
        "search": (
            f"{getattr(search_judge, 'name', judge)} on {max_new_tokens}-token greedy replies (validation)"
            if use_replies
            else f"first-token log-odds > {threshold:.3g} (validation)"
        ),
        "test": "first-token"
        if test_judge is None
        else f"{getattr(test_judge, 'name', judge)} on {max_new_tokens}-token greedy replies",
    }
    saved["versions"] = package_versions()
    saved["model"] = chat.info.to_dict()
    for name, r in result.results.items():
        if r.chosen_steering is not None:
            spec = Steering(
                r.chosen_steering,
                name=f"optimize-{name}",
                model=chat.info.to_dict(),
                description=f"the {name} configuration `refusalscope optimize` chose: {r.chosen}",
            )
            spec.save(out / "specs" / f"{name}.json")
    paths = write_outputs(saved, out)

    from rich.markup import escape
    from rich.table import Table

    rows = headline_rows(saved)
    table = Table(title="test split: unsteered vs each method at its best validation Δs within the budget")
    for key in rows[0]:
        table.add_column(escape(key))
    for row in rows:
        table.add_row(*[escape(str(v)) for v in row.values()])
    console.print(table)
    console.print(
        f"n: {n_test} harmful + {n_test} benign prompts, {n_texts} texts, {len(test_mc)} {mc_task} items (test); "
        f"refusal on the test split: {saved['refusal_decision']['test']}",
        highlight=False,
        markup=False,
    )
    console.print(
        f"wrote {paths['figure']}, {paths['markdown']}, {paths['json']}; study {out / 'optimize.db'} "
        f"(rerun to resume or add trials); chosen specs in {out / 'specs'}/",
        highlight=False,
        markup=False,
    )
