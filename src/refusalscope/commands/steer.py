"""Steering commands: `steer` (steered vs unsteered side by side), `chat` (interactive,
streaming, with a steering applied) and `steer-convert` (spec ⇄ lm-eval steer files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, TextIO, cast

import typer
from rich.table import Table
from rich.text import Text

from ..errors import RefusalScopeError
from ._app import DtypeOpt, at_least, check_dtype, command, console, output_file_path, read_prompts

ModelOrSpecOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="Embedded name, hub id, model folder or .gguf file (default: the spec's model, else 'default').",
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
    from ..types import Mode

    steering = _read_steering(spec) if spec is not None else Steering([])
    pos = _parse_positions(positions)
    if sae is not None or features:
        if sae is None or not features:
            raise RefusalScopeError(
                "--sae and --feature go together", "e.g. --sae saes/l12 --feature 1234 --mode set --value 8"
            )
        # FeatureSteer checks the mode (its error names the choices)
        steering.interventions.append(FeatureSteer(sae, features, cast(Mode, mode), value, positions=pos, layer=layer))
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


def _reply_text(gen, i: int, max_new_tokens: int) -> str:
    """A reply, marked when it stopped at the token limit rather than at its end."""
    text = gen.texts[i]
    if gen.finish_reasons[i] == "length":
        text += f" … [cut at {max_new_tokens} tokens]"
    return text


def _throughput(name: str, gen) -> str:
    rate = gen.n_generated / max(gen.seconds, 1e-9)
    return f"{name}: {gen.n_generated} tokens in {gen.seconds:.1f}s ({rate:.1f} tokens/s)"


def _print_plain(items, plain, steered, fired, max_new_tokens) -> None:
    """One block per prompt, every reply complete and unwrapped: what a pipe or a file
    should receive (no table borders, no wrapping at 80 columns)."""
    out = sys.stdout
    for i, prompt in enumerate(items):
        out.write(f"prompt: {prompt}\n")
        if plain is not None:
            out.write(f"unsteered: {_reply_text(plain, i, max_new_tokens)}\n")
        out.write(f"steered: {_reply_text(steered, i, max_new_tokens)}\n")
        if fired is not None:
            out.write(f"gate: {'fired' if fired[i] else 'did not fire'}\n")
        out.write("\n")
    out.flush()


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
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per reply (a reply cut there is marked)."),
    batch_size: int = typer.Option(8, help="Prompts per forward pass."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    baseline: bool = typer.Option(True, help="Also generate the unsteered reply, side by side."),
    save_spec: Optional[Path] = typer.Option(None, help="Write the steering used as a spec file (.json/.yaml)."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", parser=output_file_path, help="Write prompts and replies as JSON here."
    ),
) -> None:
    """Answer prompts with and without a steering and show the replies side by side
    (a table in a terminal; plain, complete, unwrapped blocks when stdout is a pipe or file)."""
    from ..checks import output_file

    at_least(max_new_tokens, "--max-new-tokens", 1)
    at_least(batch_size, "--batch-size", 1)
    check_dtype(dtype)
    for path, what in ((output, "--output file"), (save_spec, "--save-spec file")):
        if path is not None:
            output_file(path, what)
    items = read_prompts(prompts or [], file)
    steering = _build_steering(spec, sae, feature, mode, value, layer, ablate, actadd, coefficient, positions)
    chat = _load_model(model, dtype, steering)
    steering.check(chat)
    steering.for_model(chat)
    interactive = sys.stdout.isatty()
    console.print(steering.describe(), highlight=False, markup=False, soft_wrap=True)
    settings = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "system": system,
        "progress": interactive and sys.stderr.isatty(),
    }
    plain = chat.generate(items, **settings) if baseline else None
    for gate in steering.conditionals:
        gate.reset_stats()
    steered = chat.generate(items, **settings, interventions=steering)
    fired = None
    if steering.conditionals:
        decided = [c.decisions(chat, items, batch_size, system=system) for c in steering.conditionals]
        fired = [any(bool(d.fired[i]) for d in decided) for i in range(len(items))]

    if interactive:
        table = Table(show_lines=True, title=f"{chat.info.name} · {steering.id}")
        table.add_column("prompt", ratio=1)
        if plain is not None:
            table.add_column("unsteered", ratio=2)
        table.add_column("steered", ratio=2)
        if fired is not None:
            table.add_column("gate")
        for i, prompt in enumerate(items):
            row = [prompt] + ([_reply_text(plain, i, max_new_tokens)] if plain is not None else [])
            row.append(_reply_text(steered, i, max_new_tokens))
            if fired is not None:
                row.append("fired" if fired[i] else "—")
            table.add_row(*[Text(cell) for cell in row])  # model output is text, never Rich markup
        console.print(table)
    else:
        _print_plain(items, plain, steered, fired, max_new_tokens)
    for name, gen in (("unsteered", plain), ("steered", steered)):
        if gen is not None:
            console.print(_throughput(name, gen), highlight=False, soft_wrap=True)
    if fired is not None:
        console.print(f"gate fired on {sum(fired)} of {len(items)} prompts", soft_wrap=True)
    if save_spec is not None:
        steering.save(save_spec)
        console.print(f"spec {steering.id} written to {save_spec}", soft_wrap=True)
    if output is not None:
        from ..paths import atomic_file
        from ..provenance import environment

        replies = []
        for i, prompt in enumerate(items):
            entry = {"prompt": prompt, "steered": steered.texts[i], "finish_reason": steered.finish_reasons[i]}
            if plain is not None:
                entry["unsteered"] = plain.texts[i]
                entry["unsteered_finish_reason"] = plain.finish_reasons[i]
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

    def __init__(self, tokenizer: Any, out: TextIO | None = None) -> None:
        self.tokenizer = tokenizer
        self.out = out or sys.stdout
        self.ids: list[int] = []
        self.shown = ""

    def __call__(self, index: int, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if text.startswith(self.shown):
            self.out.write(text[len(self.shown) :])
            self.out.flush()
        self.shown = text

    def finish(self, final: str) -> None:
        if final.startswith(self.shown) and final != self.shown:
            self.out.write(final[len(self.shown) :])
        self.out.write("\n")
        self.out.flush()


def _turns(n: int, kind: str) -> str:
    return f"{n} {kind} repl{'y' if n == 1 else 'ies'}"


def chat_session(
    chat,
    steering=None,
    *,
    steered: bool = True,
    system: str | None = None,
    max_new_tokens: int = 256,
    read=input,
    out=None,
) -> list[dict[str, str]]:
    """The `chat` loop: read a line, answer it (streamed), until /exit or end of input.

    Ctrl-C while a reply streams stops that reply only (what was shown stays in the
    conversation) and returns to the prompt; Ctrl-C or Ctrl-D at the prompt ends the
    session. Each reply is labelled with the steering state it was generated under, and
    switching the steering says how many replies of the other kind the conversation still
    holds (they keep shaping the model's answers until /reset). Returns the conversation.
    """
    out = out or sys.stdout

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    steered = steered and steering is not None
    history: list[dict[str, str]] = []
    kinds: list[bool] = []  # per assistant turn: generated with the steering on?
    gated = bool(steering is not None and steering.conditionals)
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text in ("/on", "/off"):
            if steering is None:
                say("no steering loaded (pass --spec)")
                continue
            steered = text == "/on"
            other = sum(1 for k in kinds if k != steered)
            note = ""
            if other:
                held = _turns(other, "unsteered" if steered else "steered")
                note = f"; the conversation still holds {held}, which keep shaping its answers (/reset to start over)"
            say(f"steering {'on' if steered else 'off'}{note}")
            continue
        if text == "/reset":
            history.clear()
            kinds.clear()
            say("conversation cleared")
            continue
        if text == "/spec":
            say(steering.describe() if steering else "no steering loaded")
            continue
        history.append({"role": "user", "content": line})
        stream = _Stream(chat.tokenizer, out)
        before = [(c.fired, c.seen) for c in steering.conditionals] if steering else []
        label = (
            "model"
            if steering is None
            else f"model ({'gated steering' if steered and gated else 'steered' if steered else 'unsteered'})"
        )
        out.write(f"{label}> ")
        out.flush()
        try:
            gen = chat.generate(
                [history],
                max_new_tokens=max_new_tokens,
                batch_size=1,
                system=system,
                interventions=steering if steered else None,
                progress=False,
                on_token=stream,
            )
        except KeyboardInterrupt:
            out.write("\n")
            say("(reply stopped)")
            history.append({"role": "assistant", "content": stream.shown})
            kinds.append(steered)
            continue
        stream.finish(gen.texts[0])
        if gen.finish_reasons[0] == "length":
            say(f"(cut at {max_new_tokens} tokens; --max-new-tokens sets the limit)")
        if steered and gated:
            fired = any(c.fired > f for c, (f, _) in zip(steering.conditionals, before))
            say(f"(gate {'fired: steered' if fired else 'did not fire: unsteered'})")
        history.append({"role": "assistant", "content": gen.texts[0]})
        kinds.append(steered)
    return history


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
    steering), /exit (or Ctrl-D). Ctrl-C stops the reply being written.
    """
    at_least(max_new_tokens, "--max-new-tokens", 1)
    check_dtype(dtype)
    steering = _read_steering(spec) if spec is not None else None
    chat = _load_model(model, dtype, steering)
    if steering is not None:
        steering.check(chat)
        steering.for_model(chat)
        console.print(steering.describe(), highlight=False, markup=False)
    else:
        console.print("no --spec given: chatting with the unsteered model")
    console.print(
        "type /exit to leave, /off or /on to toggle the steering, /reset to start over; Ctrl-C stops a reply",
        highlight=False,
    )
    chat_session(chat, steering, steered=steered, system=system, max_new_tokens=max_new_tokens)


@command("steer-convert")
def steer_convert_cmd(
    source: Path = typer.Argument(..., help="Steering spec (.json/.yaml) or lm-eval steer file (.csv/.pt)."),
    target: Path = typer.Argument(..., help="Output: .json/.yaml spec, or lm-eval .csv/.pt."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model to record (needed for 'all layers' ablations to .pt)."
    ),
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
    console.print(f"{steering.id}: {source} → {target}", markup=False, highlight=False, soft_wrap=True)
