"""Steering commands: `steer` (steered vs unsteered side by side), `chat` (interactive,
streaming, with a steering applied) and `steer-convert` (spec ⇄ lm-eval steer files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import RefusalScopeError
from ._app import DtypeOpt, command, console, read_prompts

ModelOrSpecOpt = typer.Option(
    None, "--model", "-m", help="Embedded name, hub id, model folder or .gguf file (default: the spec's model, else 'default')."
)
SpecOpt = typer.Option(None, "--spec", "-s", help="Steering spec (.json/.yaml) or lm-eval steer file (.csv/.pt).")


def _parse_positions(text: str):
    text = text.strip()
    if text and all(part.strip().lstrip("-").isdigit() for part in text.split(",")):
        return [int(part) for part in text.split(",")]
    return text


def _read_steering(path: Path):
    from ..steering import Steering, import_lm_eval

    if path.suffix.lower() in (".csv", ".pt", ".pth"):
        return import_lm_eval(path)
    return Steering.load(path)


def _build_steering(
    spec: Optional[Path],
    sae: Optional[str],
    features: list[int],
    mode: str,
    value: float,
    layer: Optional[int],
    ablate: Optional[Path],
    actadd: Optional[Path],
    coefficient: float,
    positions: str,
):
    """A Steering from a spec file and/or the inline options (all combined)."""
    from ..steering import ActAdd, DirectionAblation, FeatureSteer, Steering, load_direction

    steering = _read_steering(spec) if spec is not None else Steering([])
    pos = _parse_positions(positions)
    if sae is not None or features:
        if sae is None or not features:
            raise RefusalScopeError("--sae and --feature go together", "e.g. --sae saes/l12 --feature 1234 --mode set --value 8")
        steering.interventions.append(FeatureSteer(sae, features, mode, value, positions=pos, layer=layer))
    if ablate is not None:
        steering.interventions.append(DirectionAblation(load_direction(ablate), positions=pos))
    if actadd is not None:
        if layer is None:
            raise RefusalScopeError("--actadd needs --layer", "e.g. --actadd refusal_dir.pt --layer 12 --coefficient 4")
        steering.interventions.append(ActAdd(load_direction(actadd), layer, coefficient, positions=pos))
    if not steering.interventions:
        raise RefusalScopeError(
            "no steering was given", "pass --spec spec.json, or --sae/--feature, --ablate or --actadd"
        )
    return steering


def _load_model(model: Optional[str], dtype: str, steering):
    from ..models import load_model

    spec = model or ((steering.model or {}).get("spec") if steering is not None else None) or "default"
    return load_model(spec, dtype=dtype)


@command("steer")
def steer_cmd(
    prompts: list[str] = typer.Argument(None, help="Prompts to answer."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="File of prompts (.txt/.json/.jsonl)."),
    spec: Optional[Path] = SpecOpt,
    sae: Optional[str] = typer.Option(None, help="SAE folder or name (for --feature)."),
    feature: list[int] = typer.Option([], "--feature", "-F", help="SAE latent to steer (repeatable)."),
    mode: str = typer.Option("set", help="Feature mode: set (clamp), scale or add."),
    value: float = typer.Option(0.0, help="Value for set/add, factor for scale."),
    layer: Optional[int] = typer.Option(None, help="Layer for --actadd (and a check for --sae)."),
    ablate: Optional[Path] = typer.Option(None, help="Direction file to ablate at every layer."),
    actadd: Optional[Path] = typer.Option(None, help="Direction file to add at --layer."),
    coefficient: float = typer.Option(1.0, help="ActAdd coefficient."),
    positions: str = typer.Option("all", help="all, prompt, generated, post_instruction, or indices like -1,-2."),
    model: Optional[str] = ModelOrSpecOpt,
    dtype: str = DtypeOpt,
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per reply."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    baseline: bool = typer.Option(True, help="Also generate the unsteered reply, side by side."),
    save_spec: Optional[Path] = typer.Option(None, help="Write the steering used as a spec file (.json/.yaml)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write prompts and replies as JSON here."),
) -> None:
    """Answer prompts with and without a steering and show the replies side by side."""
    items = read_prompts(prompts or [], file)
    steering = _build_steering(spec, sae, feature, mode, value, layer, ablate, actadd, coefficient, positions)
    chat = _load_model(model, dtype, steering)
    steering.check(chat)
    steering.for_model(chat)
    console.print(steering.describe(), highlight=False, markup=False)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "system": system}
    plain = chat.generate(items, **settings) if baseline else None
    for gate in steering.conditionals:
        gate.reset_stats()
    steered = chat.generate(items, **settings, interventions=steering)
    fired = None
    if steering.conditionals:
        decided = [c.decisions(chat, items, batch_size, system=system) for c in steering.conditionals]
        fired = [any(bool(d.fired[i]) for d in decided) for i in range(len(items))]

    table = Table(show_lines=True, title=f"{chat.info.name} · {steering.id}")
    table.add_column("prompt", ratio=1)
    if plain is not None:
        table.add_column("unsteered", ratio=2)
    table.add_column("steered", ratio=2)
    if fired is not None:
        table.add_column("gate")
    for i, prompt in enumerate(items):
        row = [prompt] + ([plain.texts[i]] if plain is not None else []) + [steered.texts[i]]
        if fired is not None:
            row.append("fired" if fired[i] else "—")
        table.add_row(*row)
    console.print(table)
    rate = steered.n_generated / max(steered.seconds, 1e-9)
    console.print(f"steered: {steered.n_generated} tokens in {steered.seconds:.1f}s ({rate:.1f} tokens/s)")
    if fired is not None:
        console.print(f"gate fired on {sum(fired)} of {len(items)} prompts")
    if save_spec is not None:
        steering.save(save_spec)
        console.print(f"spec {steering.id} written to {save_spec}")
    if output is not None:
        from ..paths import atomic_file
        from ..provenance import environment

        replies = []
        for i, prompt in enumerate(items):
            entry = {"prompt": prompt, "steered": steered.texts[i], "finish_reason": steered.finish_reasons[i]}
            if plain is not None:
                entry["unsteered"] = plain.texts[i]
            if fired is not None:
                entry["gate_fired"] = fired[i]
            replies.append(entry)
        with atomic_file(output) as handle:
            json.dump(
                {
                    "steering_id": steering.id,
                    "steering": steering.to_dict(),
                    "model": chat.info.to_dict(),
                    "settings": steered.settings,
                    "environment": environment(),
                    "replies": replies,
                },
                handle,
                indent=2,
            )


class _Stream:
    """Prints a reply as its tokens arrive (decoding the whole reply each time, so multi-byte
    characters split over tokens appear once complete)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, index: int, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.shown):
            sys.stdout.write(text[len(self.shown) :])
            sys.stdout.flush()
        self.shown = text

    def finish(self, final: str) -> None:
        if final.startswith(self.shown) and final != self.shown:
            sys.stdout.write(final[len(self.shown) :])
        sys.stdout.write("\n")
        sys.stdout.flush()


@command("chat")
def chat_cmd(
    spec: Optional[Path] = SpecOpt,
    model: Optional[str] = ModelOrSpecOpt,
    dtype: str = DtypeOpt,
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(256, help="Longest reply, in tokens."),
    steered: bool = typer.Option(True, help="Start with the steering on (toggle with /on and /off)."),
) -> None:
    """Chat with a model in the terminal, a steering spec applied, replies streamed.

    Commands: /on and /off (steering), /reset (forget the conversation), /spec (describe the
    steering), /exit (or Ctrl-D).
    """
    steering = _read_steering(spec) if spec is not None else None
    chat = _load_model(model, dtype, steering)
    if steering is not None:
        steering.check(chat)
        steering.for_model(chat)
        console.print(steering.describe(), highlight=False, markup=False)
    else:
        steered = False
        console.print("no --spec given: chatting with the unsteered model")
    console.print("type /exit to leave, /off or /on to toggle the steering, /reset to start over")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text in ("/on", "/off"):
            if steering is None:
                console.print("no steering loaded (pass --spec)")
            else:
                steered = text == "/on"
                console.print(f"steering {'on' if steered else 'off'}")
            continue
        if text == "/reset":
            history.clear()
            console.print("conversation cleared")
            continue
        if text == "/spec":
            console.print(steering.describe() if steering else "no steering loaded", highlight=False, markup=False)
            continue
        history.append({"role": "user", "content": line})
        stream = _Stream(chat.tokenizer)
        before = [(c.fired, c.seen) for c in steering.conditionals] if steering else []
        sys.stdout.write("model> ")
        sys.stdout.flush()
        gen = chat.generate(
            [history], max_new_tokens=max_new_tokens, batch_size=1, system=system,
            interventions=steering if steered else None, progress=False, on_token=stream,
        )
        stream.finish(gen.texts[0])
        if steered and steering is not None and steering.conditionals:
            fired = any(c.fired > f for c, (f, _) in zip(steering.conditionals, before))
            console.print(f"[dim](gate {'fired: steered' if fired else 'did not fire: unsteered'})[/dim]")
        history.append({"role": "assistant", "content": gen.texts[0]})


@command("steer-convert")
def steer_convert_cmd(
    source: Path = typer.Argument(..., help="Steering spec (.json/.yaml) or lm-eval steer file (.csv/.pt)."),
    target: Path = typer.Argument(..., help="Output: .json/.yaml spec, or lm-eval .csv/.pt."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to record (needed for 'all layers' ablations to .pt)."),
    dtype: str = DtypeOpt,
) -> None:
    """Convert between steering specs and lm-evaluation-harness steer files."""
    from ..steering import export_lm_eval

    steering = _read_steering(source)
    chat = None
    if model is not None:
        from ..models import load_model

        chat = load_model(model, dtype=dtype)
        steering.check(chat)
        steering.for_model(chat)
    if target.suffix.lower() in (".csv", ".pt", ".pth"):
        export_lm_eval(steering, target, model=chat)
    elif target.suffix.lower() in (".json", ".yaml", ".yml"):
        steering.save(target)
    else:
        raise RefusalScopeError(f"cannot tell the format of '{target.name}'", "use .json, .yaml, .csv or .pt")
    console.print(f"{steering.id}: {source} → {target}")
