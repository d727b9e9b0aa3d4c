"""`refusalscope attack gcg|suite|multiturn`: jailbreak robustness, unsteered vs steered vs gated.

Each subcommand takes model configurations as `--config NAME=SPEC` (repeatable; the
unsteered model is always included unless `--no-unsteered`), writes one resumable folder
per configuration under `--out` (or keyed rows in a results database with `--db`, e.g. a
sweep's results.db), and prints one table with a row per configuration.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import RefusalScopeError
from ._app import DtypeOpt, app, console, handle_errors

attack_app = typer.Typer(
    help="Jailbreak attacks against the unsteered, steered and gated model.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(attack_app, name="attack")

ConfigOpt = typer.Option(
    [], "--config", "-c", help="NAME=SPEC_FILE (repeatable), e.g. steered=spec.json gated=gated.json."
)
UnsteeredOpt = typer.Option(True, "--unsteered/--no-unsteered", help="Also attack the model without steering.")
ModelOpt = typer.Option(None, "--model", "-m", help="Model (default: the specs' model, else 'default').")
DataOpt = typer.Option(None, "--data-dir", help="Folder of benchmark release files (default $REFUSALSCOPE_DATA).")
DbOpt = typer.Option(
    None,
    "--db",
    help="Results database (.db, e.g. a sweep's results.db) to keep the results in instead of --out; "
    "a rerun computes only what is missing.",
)
JudgeOpt = typer.Option("substring", "--judge", help="Reply judge: substring, learned, or any `judge` name.")


def _where(db: Optional[Path], out: Path) -> Path:
    """The results database (checked before any model loads) or the output folder."""
    if db is None:
        return out
    from ..attacks.runs import STORE_SUFFIXES

    if db.suffix.lower() not in STORE_SUFFIXES:
        raise RefusalScopeError(f"--db {db} is not a database file name", "name it with .db, e.g. runs/x/results.db")
    if db.exists():
        from ..evaluation.store import ResultsStore

        ResultsStore(db, create=False).close()  # a foreign or newer file fails here, before the model loads
    return db


def _judge(name: str):
    from ..judges import load_judge

    return load_judge(name)


def _spec_paths(configs: list[str], unsteered: bool) -> list[tuple[str, Optional[str]]]:
    from ..attacks.configs import parse_config_option

    pairs = ([("unsteered", None)] if unsteered else []) + [parse_config_option(c) for c in configs]
    names = [n for n, _ in pairs]
    if not pairs:
        raise RefusalScopeError("no model configuration to attack", "drop --no-unsteered or pass --config NAME=SPEC")
    if len(set(names)) != len(names):
        raise RefusalScopeError(f"configuration names repeat: {names}", "give each --config its own NAME=")
    for name, path in pairs:
        if path is not None and not Path(path).is_file():
            raise RefusalScopeError(f"steering spec {path} (configuration '{name}') does not exist", "check the path")
    return pairs


def _load(model: Optional[str], dtype: str, pairs):
    """The model (the first spec's, unless --model) and the configurations, checked against it."""
    from ..attacks.configs import load_config
    from ..models import load_model
    from ..paths import read_json_or_yaml

    spec_model = None
    for _, path in pairs:
        if path is not None:
            spec_model = (read_json_or_yaml(path, "steering spec").get("model") or {}).get("spec")
            break
    chat = load_model(model or spec_model or "default", dtype=dtype)
    return chat, [load_config(name, path, chat) for name, path in pairs]


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    return table


@attack_app.command("gcg")
@handle_errors
def gcg_cmd(
    config: list[str] = ConfigOpt,
    unsteered: bool = UnsteeredOpt,
    dataset: str = typer.Option("harmful/harmbench", help="Behaviours (each needs a target string)."),
    split: Optional[str] = typer.Option(None, help="Dataset split."),
    limit: int = typer.Option(20, help="Behaviours (seeded sample)."),
    behaviour: list[str] = typer.Option([], "--behaviour", "-b", help="Attack only these behaviour ids (repeatable)."),
    steps: int = typer.Option(50, help="Step budget per behaviour."),
    token_budget: Optional[int] = typer.Option(None, help="Forward-token budget per behaviour (stops earlier)."),
    suffix_length: int = typer.Option(20, help="Suffix tokens."),
    candidates: int = typer.Option(256, help="Candidates scored per step."),
    top_k: int = typer.Option(256, help="Top-k gradient tokens per position."),
    eval_batch: int = typer.Option(64, help="Candidates per scoring forward."),
    check_every: int = typer.Option(10, help="Judge the greedy reply every N steps (early stop)."),
    checkpoint_every: int = typer.Option(5, help="Checkpoint every N steps."),
    max_new_tokens: int = typer.Option(32, help="Reply tokens judged."),
    seed: int = typer.Option(0, help="Sampling seed (behaviours and candidates)."),
    model: Optional[str] = ModelOpt,
    dtype: str = DtypeOpt,
    data_dir: Optional[Path] = DataOpt,
    out: Path = typer.Option(Path("runs/attacks/gcg"), "--out", "-o", help="Output folder (resumable)."),
    db: Optional[Path] = DbOpt,
    judge: str = JudgeOpt,
) -> None:
    """GCG (adaptive: gradients through the steering) on HarmBench behaviours; robustness = share not broken."""
    from ..attacks import GCG, GCGConfig, load_behaviours
    from ..attacks.robustness import format_estimate

    gcg_config = GCGConfig(
        steps=steps,
        suffix_length=suffix_length,
        candidates=candidates,
        top_k=top_k,
        eval_batch=eval_batch,
        check_every=check_every,
        max_new_tokens=max_new_tokens,
        checkpoint_every=checkpoint_every,
        seed=seed,
        token_budget=token_budget,
    ).validate()
    pairs = _spec_paths(config, unsteered)
    behaviours = load_behaviours(dataset, split, None if behaviour else limit, seed, data_dir)
    if behaviour:
        known = {b.id: b for b in behaviours}
        missing = [b for b in behaviour if b not in known]
        if missing:
            raise RefusalScopeError(
                f"unknown behaviour id(s) in {dataset}: {', '.join(missing)}",
                "ids look like harmbench-<BehaviorID>; see `refusalscope datasets`",
            )
        behaviours = [known[b] for b in behaviour]
    for b in behaviours:
        b.require_target()
    where = _where(db, out)
    reply_judge = _judge(judge)
    chat, configs = _load(model, dtype, pairs)
    table = _table(
        f"GCG robustness · {chat.info.name} · {len(behaviours)} behaviours · {steps} steps",
        ["config", "robustness [95% CI]", "n", "broken", "median steps to break", "tokens"],
    )
    for cfg in configs:
        console.print(cfg.describe(), highlight=False, markup=False)
        summary = GCG(chat, cfg.steering, gcg_config, judge=reply_judge).run(
            behaviours, where if db is not None else out / cfg.name, name=cfg.name
        )
        table.add_row(
            cfg.name,
            format_estimate(summary["robustness"]),
            str(summary["n"]),
            str(summary["broken"]),
            str(summary["median_steps_to_break"]),
            f"{summary['tokens']:,}",
        )
    console.print(table)
    console.print(f"results in {db}" if db is not None else f"results in {out}/<config>/results.jsonl and summary.json")


@attack_app.command("suite")
@handle_errors
def suite_cmd(
    config: list[str] = ConfigOpt,
    unsteered: bool = UnsteeredOpt,
    family: list[str] = typer.Option([], "--family", "-a", help="Attack families (repeatable; default all)."),
    limit: int = typer.Option(10, help="Prompts per family (seeded sample)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    max_new_tokens: int = typer.Option(48, help="Reply tokens judged."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    model: Optional[str] = ModelOpt,
    dtype: str = DtypeOpt,
    data_dir: Optional[Path] = DataOpt,
    out: Path = typer.Option(Path("runs/attacks/suite"), "--out", "-o", help="Output folder (resumable)."),
    db: Optional[Path] = DbOpt,
    judge: str = JudgeOpt,
) -> None:
    """Static single-turn attacks (JBB artifacts, DAN/in-the-wild templates, GCG suffixes, tense): compliance per family."""
    from ..attacks.suite import SuiteSources, build_prompts, run_suite

    if limit < 1:
        raise RefusalScopeError(f"--limit must be at least 1, got {limit}")
    pairs = _spec_paths(config, unsteered)
    prompts = build_prompts(family or ["all"], SuiteSources(data_dir, limit, seed))
    where = _where(db, out)
    reply_judge = _judge(judge)
    chat, configs = _load(model, dtype, pairs)
    result = run_suite(
        chat, configs, prompts, where, judge=reply_judge, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    names = [c.name for c in configs]
    table = _table(f"compliance under attack · {chat.info.name} · judge {result['judge']}", ["attack", "n"] + names)
    rows = {(r["config"], r["family"]): r for r in result["rows"]}
    for fam in dict.fromkeys(p.family for p in prompts):
        cells = [
            f"{rows[(n, fam)]['compliance']:.2f} [{rows[(n, fam)]['low']:.2f}, {rows[(n, fam)]['high']:.2f}]"
            for n in names
        ]
        table.add_row(fam, str(rows[(names[0], fam)]["n"]), *cells)
    console.print(table)
    for name, info in result["configs"].items():
        if "gate_fire_rate" in info:
            console.print(f"{name}: gate fired on {info['gate_fire_rate']:.0%} of attack prompts")
    console.print(f"results in {db}" if db is not None else f"table in {out}/suite.json")


@attack_app.command("multiturn")
@handle_errors
def multiturn_cmd(
    config: list[str] = ConfigOpt,
    unsteered: bool = UnsteeredOpt,
    conversations: str = typer.Option("crescendo", help="'crescendo' (built-in) or a conversation file (.json)."),
    limit: Optional[int] = typer.Option(None, help="First N conversations."),
    attacker: Optional[str] = typer.Option(
        None, help="Attacker model ('self' = the target model unsteered); default: play the scripted turns."
    ),
    max_turns: int = typer.Option(4, help="Attacker loop: turns per conversation."),
    max_backtracks: int = typer.Option(3, help="Attacker loop: retries after refusals."),
    max_new_tokens: int = typer.Option(64, help="Reply tokens per turn."),
    seed: int = typer.Option(0, help="Attacker sampling seed (used after a refusal)."),
    model: Optional[str] = ModelOpt,
    dtype: str = DtypeOpt,
    out: Path = typer.Option(Path("runs/attacks/multiturn"), "--out", "-o", help="Output folder (resumable)."),
    db: Optional[Path] = DbOpt,
    judge: str = JudgeOpt,
) -> None:
    """Crescendo-style escalation: refusal at every turn and success at the last."""
    from ..attacks.multiturn import load_conversations, run_attacker, run_scripted
    from ..attacks.robustness import format_estimate

    convs = load_conversations(conversations, limit)
    if max_turns < 1 or max_backtracks < 0 or max_new_tokens < 1:
        raise RefusalScopeError("max-turns and max-new-tokens must be at least 1, max-backtracks at least 0")
    pairs = _spec_paths(config, unsteered)
    where = _where(db, out)
    reply_judge = _judge(judge)
    chat, configs = _load(model, dtype, pairs)
    attacker_model = None
    if attacker is not None and attacker != "self":
        from ..models import load_model

        attacker_model = load_model(attacker, dtype=dtype)
    # The scripted and the attacker runner take the same target, judge and reply length;
    # only the attacker loop's own settings are bound here, so the shared ones are passed once.
    run = (
        run_scripted
        if attacker is None
        else partial(
            run_attacker, attacker=attacker_model, max_turns=max_turns, max_backtracks=max_backtracks, seed=seed
        )
    )
    summaries = []
    for cfg in configs:
        console.print(cfg.describe(), highlight=False, markup=False)
        target = where if db is not None else out / cfg.name
        summaries.append(run(chat, cfg, convs, target, judge=reply_judge, max_new_tokens=max_new_tokens))
    turns = max(len(s["refusal_by_turn"]) for s in summaries)
    table = _table(
        f"refusal by turn · {chat.info.name} · {len(convs)} conversations",
        ["config"] + [f"turn {t + 1}" for t in range(turns)] + ["success at last turn"],
    )
    for s in summaries:
        cells = [f"{r['refusal']:.2f} (n={r['n']})" for r in s["refusal_by_turn"]]
        table.add_row(s["config"], *cells, *[""] * (turns - len(cells)), format_estimate(s["success"]))
    console.print(table)
    console.print(f"results in {db}" if db is not None else f"results in {out}/<config>/results.jsonl")


@attack_app.command("report")
@handle_errors
def report_cmd(
    root: Path = typer.Argument(
        Path("runs/attacks"),
        help="Results database (.db) with attack results, or a folder holding suite/, gcg/<config>/, multiturn/<config>/.",
    ),
    output: Path = typer.Option(Path("robustness.html"), "--output", "-o", help="HTML page to write."),
) -> None:
    """The robustness section (per-attack compliance, GCG robustness, refusal by turn) as one HTML page."""
    from html import escape

    from ..attacks.report import robustness_section
    from ..attacks.runs import is_store
    from ..paths import atomic_file

    if is_store(root) and not root.is_file():
        raise RefusalScopeError(f"results database {root} does not exist", "run `refusalscope attack … --db` first")
    if not is_store(root) and not root.is_dir():
        raise RefusalScopeError(f"attack folder {root} does not exist", "run `refusalscope attack …` first")
    section = robustness_section(root)
    if not section:
        raise RefusalScopeError(
            f"{root} holds no attack results", "run `refusalscope attack suite|gcg|multiturn` into it"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}.note{color:#555}"
    )
    with atomic_file(output) as handle:
        handle.write(
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>robustness — '
            f"{escape(str(root))}</title><style>{style}</style></head><body>{section}</body></html>\n"
        )
    console.print(f"wrote {output}")


@attack_app.command("import")
@handle_errors
def import_cmd(
    root: Path = typer.Argument(..., help="Folder holding suite/<config>/, gcg/<config>/, multiturn/<config>/."),
    db: Path = typer.Option(..., "--db", help="Results database (.db) to copy them into (created if missing)."),
) -> None:
    """Copy attack folders (finished items and checkpoints) into a results database; a rerun with --db continues there."""
    from ..attacks.runs import import_folder

    if db.suffix.lower() not in (".db", ".sqlite", ".sqlite3"):
        raise RefusalScopeError(f"--db {db} is not a database file name", "name it with .db, e.g. runs/x/results.db")
    if not root.is_dir():
        raise RefusalScopeError(
            f"attack folder {root} does not exist", "pass the folder `refusalscope attack -o` wrote"
        )
    counts = import_folder(root, db)
    console.print(
        f"copied {counts['runs']} runs, {counts['items']} finished items, {counts['states']} checkpoints into {db}"
    )
