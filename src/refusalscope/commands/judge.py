"""Commands about refusal judges: validate them against human labels, train the learned one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ._app import command, console, output_file_path

DataDirOpt = typer.Option(
    None,
    "--data-dir",
    "-d",
    envvar="REFUSALSCOPE_DATA",
    help="Folder with the original release files (default: $REFUSALSCOPE_DATA).",
)


@command("judge-validate")
def judge_validate_cmd(
    data_dir: Optional[Path] = DataDirOpt,
    judge: list[str] = typer.Option(
        None,
        "--judge",
        "-j",
        help="Judge(s) to validate: learned, substring, rubric, a hub judge (harmbench, llama-guard-3, wildguard, "
        "strongreject, optionally =FOLDER), a shipped learned judge or a learned-judge folder; "
        "repeatable (default: learned and substring).",
    ),
    labels: list[Path] = typer.Option(
        None, "--labels", help="A labelled CSV (columns prompt, reply, label = refusal/compliance/partial); repeatable."
    ),
    xstest: bool = typer.Option(True, "--xstest/--no-xstest", help="Validate on the five XSTest completion sets."),
    classifier: Optional[str] = typer.Option(
        None, "--classifier", "-c", help="Also validate this judge model (hub id or folder)."
    ),
    kind: str = typer.Option("auto", help="Classifier kind: auto, sequence-classification or generative."),
    refusal_label: list[str] = typer.Option(
        None, "--refusal-label", help="Classifier class(es) meaning refusal (name or index); repeatable."
    ),
    classifier_input: str = typer.Option("reply", "--input", help="Classifier input: reply or pair."),
    mode: str = typer.Option("guard", help="Generative classifier mode: guard (Llama Guard) or template."),
    phrases: Optional[Path] = typer.Option(None, help="Refusal phrase file for the substring judge."),
    window: int = typer.Option(250, help="Substring judge: characters of the reply searched (0 = all)."),
    partial: str = typer.Option("refusal", help="Map partial refusals to: refusal, compliance or exclude."),
    limit: Optional[int] = typer.Option(None, help="Seeded subset of each XSTest completion set (quick runs)."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the intervals."),
    batch_size: int = typer.Option(16),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", parser=output_file_path, help="Write the report as JSON here."
    ),
) -> None:
    """Validate refusal judges against human labels: accuracy, F1 and Cohen's kappa with
    95% bootstrap intervals and confusion matrices, on the XSTest completion sets and on
    any labelled CSV; partial refusals are also reported on their own."""
    from ..errors import RefusalScopeError
    from ..judges.named import load_judge
    from ..judges.substring import SubstringJudge
    from ..judges.validation import LabelledSet, judge_agreement, read_labels, xstest_sets

    if partial not in ("refusal", "compliance", "exclude"):
        raise RefusalScopeError(f"unknown partial-refusal mapping '{partial}'", "use refusal, compliance or exclude")
    # read every input before loading any model
    sets = [read_labels(path) for path in labels or []]
    if xstest:
        sets = xstest_sets(data_dir, limit=limit) + sets
    if not sets:
        raise RefusalScopeError("nothing to validate on", "leave --xstest on or pass --labels FILE")
    judges = []
    for name in judge or ["learned", "substring"]:
        judges.append(SubstringJudge(phrases, window=window or None) if name == "substring" else load_judge(name))
    if classifier:
        from ..judges import ClassifierJudge

        judges.append(
            ClassifierJudge.from_pretrained(
                classifier,
                kind=kind,
                refusal_labels=refusal_label or None,
                input=classifier_input,
                mode=mode,
                batch_size=batch_size,
            )
        )
    results = []
    for j in judges:
        rows = [judge_agreement(j, s, partial=partial, n_boot=n_boot) for s in sets]
        xs = [(s, r) for s, r in zip(sets, rows) if s.name.startswith("xstest/")]
        if len(xs) > 1:  # the XSTest sets pooled, from the verdicts already made
            pooled = LabelledSet(
                "xstest/all",
                [p for s, _ in xs for p in s.prompts],
                [t for s, _ in xs for t in s.replies],
                [lab for s, _ in xs for lab in s.labels],
            )
            row = judge_agreement(
                j, pooled, partial=partial, n_boot=n_boot, judged=[v for _, r in xs for v in r["judged"]]
            )
            row["seconds"] = sum(r["seconds"] for _, r in xs)
            rows.insert(len(xs), row)
        results += rows
    table = Table(title=f"judges vs human labels (partial refusal -> {partial}; 95% bootstrap intervals)")
    for col in (
        "judge",
        "set",
        "n",
        "accuracy",
        "F1",
        "kappa",
        "TN",
        "FP",
        "FN",
        "TP",
        "partial: judged refusal",
        "replies/s",
    ):
        table.add_column(col, justify="left" if col in ("judge", "set") else "right")
    for r in results:
        a = r["agreement"]
        rate = f"{r['partial_judged_refusal']:.2f} of {r['n_partial']}" if r["n_partial"] else "-"
        speed = f"{a.n / r['seconds']:.3g}" if r["seconds"] > 0 else "-"
        table.add_row(
            r["judge"],
            r["set"],
            str(a.n),
            _ci(a.accuracy),
            _ci(a.f1),
            _ci(a.kappa),
            str(a.tn),
            str(a.fp),
            str(a.fn),
            str(a.tp),
            rate,
            speed,
        )
    console.print(table)
    console.print("confusion: rows = human (complied, refused), columns = judge; refusal is the positive class")
    for j in judges:
        validation = (getattr(j, "meta", None) or {}).get("validation")
        if xstest and validation:
            console.print(
                f"note: {j.name} was trained on these XSTest sets, so its rows above are in-sample; trained on "
                f"four sets and tested on the fifth it scores {validation['leave_one_set_out_accuracy']:.3f} "
                f"(per set in its judge.json)"
            )
    if output is not None:
        from ..paths import atomic_file
        from ..provenance import package_versions

        record = {
            "judges": [
                {"name": getattr(j, "name", type(j).__name__), **(j.describe() if hasattr(j, "describe") else {})}
                for j in judges
            ],
            "partial": partial,
            "versions": package_versions(),
            "results": [
                {**{k: v for k, v in r.items() if k != "judged"}, "agreement": r["agreement"].to_dict()}
                for r in results
            ],
        }
        with atomic_file(output) as handle:
            json.dump(record, handle, indent=2, default=str)


def _ci(estimate) -> str:
    return f"{estimate.value:.3f} [{estimate.low:.2f}, {estimate.high:.2f}]"


@command("judge-train")
def judge_train_cmd(
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder to write the judge to (head.safetensors, judge.json)."
    ),
    data_dir: Optional[Path] = DataDirOpt,
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Feature model (embedded name, hub id, folder)."
    ),
    layer: int = typer.Option(12, help="Residual layer the judge reads."),
    prompt_tokens: int = typer.Option(48, help="Request tokens the feature model reads."),
    reply_tokens: int = typer.Option(64, help="Reply tokens the feature model reads."),
    c: float = typer.Option(0.01, help="Inverse L2 strength of the logistic regression."),
    partial: str = typer.Option("refusal", help="Train partial refusals as: refusal, compliance or exclude."),
    behaviour_weight: float = typer.Option(
        5.0, help="Weight of the shipped behaviour examples in training (0: XSTest only)."
    ),
    name: str = typer.Option("learned-custom", help="Judge name recorded in results."),
    version: str = typer.Option("1", help="Judge version recorded in results."),
) -> None:
    """Train the learned judge on the XSTest completion sets; prints the grouped-CV and
    leave-one-completion-set-out accuracy beside the substring judge's."""
    from ..errors import RefusalScopeError
    from ..judges.features import FeatureConfig
    from ..judges.training import train_learned_judge, xstest_pairs
    from ..models.loading import load_model

    if partial not in ("refusal", "compliance", "exclude"):
        raise RefusalScopeError(f"unknown partial-refusal mapping '{partial}'", "use refusal, compliance or exclude")
    if c <= 0:
        raise RefusalScopeError(f"--c must be positive, got {c}")
    if behaviour_weight < 0:
        raise RefusalScopeError(f"--behaviour-weight must be 0 or positive, got {behaviour_weight}")
    xstest_pairs(data_dir, partial)  # fail on missing data before loading the model
    chat = load_model(model, dtype="fp32", progress=True)
    cfg = FeatureConfig(model=model, layer=layer, prompt_tokens=prompt_tokens, reply_tokens=reply_tokens)
    judge = train_learned_judge(
        chat, data_dir, cfg, c=c, partial=partial, name=name, version=version, behaviour_weight=behaviour_weight
    )
    judge.save(output)
    v = judge.meta["validation"]
    table = Table(title=f"{name}: held-out accuracy (train on the other four sets)")
    for col in ("held-out set", "n", "learned", "substring"):
        table.add_column(col, justify="left" if col == "held-out set" else "right")
    for set_name, row in v["per_held_out_set"].items():
        table.add_row(set_name, str(row["n"]), f"{row['learned']:.3f}", f"{row.get('substring', float('nan')):.3f}")
    console.print(table)
    console.print(
        f"grouped CV by prompt: {v['grouped_cv_accuracy']:.3f}; leave-one-set-out: "
        f"{v['leave_one_set_out_accuracy']:.3f}; substring: {v.get('substring_accuracy', float('nan')):.3f}"
    )
    console.print(f"wrote {output}")
