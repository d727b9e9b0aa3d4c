"""`chat` and `steer` as a user meets them: Ctrl-C stops only the reply being streamed,
replies say whether they were steered, switching the steering says what the history still
holds; `steer` piped to a file prints every reply complete, marked where it was cut, with
throughput for both sides and no table borders, wrapping or carriage returns."""

from __future__ import annotations

import io
import json

import torch
from typer.testing import CliRunner

from refusalscope.cli import app
from refusalscope.commands.steer import chat_session
from refusalscope.steering import ActAdd, Steering
from refusalscope.testing import save_tiny_model


def scripted(lines):
    """An `input` replacement that answers with `lines`, then ends the input (Ctrl-D)."""
    pending = list(lines)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def test_ctrl_c_mid_reply_stops_only_that_reply(chat, monkeypatch):
    steering = Steering([ActAdd(torch.ones(chat.d_model), 1, 4.0)])
    probe = ["a probe prompt"]
    logits_before = chat.next_token_logits(probe)
    calls = []
    real_generate = chat.generate

    def generate(*args, on_token=None, **kwargs):
        calls.append(kwargs.get("interventions"))
        if len(calls) > 1:
            return real_generate(*args, on_token=on_token, **kwargs)
        count = 0

        def interrupting(index, token):  # the user presses Ctrl-C as the third token arrives
            nonlocal count
            count += 1
            if count == 3:
                raise KeyboardInterrupt
            on_token(index, token)

        return real_generate(*args, on_token=interrupting, **kwargs)

    monkeypatch.setattr(chat, "generate", generate)
    out = io.StringIO()
    history = chat_session(
        chat, steering, max_new_tokens=8, out=out, read=scripted(["hello there", "/off", "and again", "/exit"])
    )
    text = out.getvalue()

    partial = history[1]["content"]
    assert f"model (steered)> {partial}\n(reply stopped)\n" in text  # on its own line, after the partial reply
    assert partial and len(chat.tokenizer.encode(partial, add_special_tokens=False)) <= 3
    # the session went on: /off is answered with what the history still holds, the next reply is unsteered
    assert "steering off; the conversation still holds 1 steered reply, which keep shaping its answers" in text
    assert "model (unsteered)> " in text
    assert calls[0] is steering and calls[1] is None
    assert [turn["role"] for turn in history] == ["user", "assistant", "user", "assistant"]
    # the interrupted reply's steering hooks were removed: the model is as it was
    assert torch.equal(chat.next_token_logits(probe), logits_before)


def test_labels_and_switching_notes(chat):
    steering = Steering([ActAdd(torch.ones(chat.d_model), 1, 4.0)])
    out = io.StringIO()
    chat_session(
        chat,
        steering,
        steered=False,
        max_new_tokens=3,
        out=out,
        read=scripted(["hi", "/on", "hi again", "/reset", "/off"]),
    )
    text = out.getvalue()
    assert text.count("model (unsteered)> ") == 1 and text.count("model (steered)> ") == 1
    assert "steering on; the conversation still holds 1 unsteered reply" in text
    assert "conversation cleared\nsteering off\n" in text  # after /reset there is nothing to warn about
    assert "(cut at 3 tokens" in text

    plain = io.StringIO()
    chat_session(chat, None, max_new_tokens=2, out=plain, read=scripted(["hi", "/off"]))
    assert "model> " in plain.getvalue() and "no steering loaded" in plain.getvalue()


def test_steer_piped_output_is_plain_complete_and_marks_truncation(chat, tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    folder = save_tiny_model(chat, tmp_path / "tiny")
    vector = tmp_path / "dir.json"
    vector.write_text(json.dumps([1.0] * chat.d_model))
    long_prompt = "word " * 60
    result = CliRunner().invoke(
        app,
        [
            "steer",
            "--model",
            str(folder),
            "--dtype",
            "fp32",
            "--actadd",
            str(vector),
            "--layer",
            "1",
            "--coefficient",
            "4",
            "--max-new-tokens",
            "5",
            "-o",
            str(tmp_path / "replies.json"),
            long_prompt,
            "hello",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    saved = json.loads((tmp_path / "replies.json").read_text())["replies"]
    cut = 0
    for entry in saved:
        for side, reason in (("unsteered", "unsteered_finish_reason"), ("steered", "finish_reason")):
            mark = " … [cut at 5 tokens]" if entry[reason] == "length" else ""
            cut += bool(mark)
            assert f"{side}: {entry[side]}{mark}\n" in out  # the whole reply on one line, marked when cut
    assert cut > 0
    assert f"prompt: {long_prompt}\n" in out  # a long prompt is not wrapped
    assert "\r" not in out and "│" not in out and "┃" not in out  # no progress bar, no table
    assert "unsteered: " in out and "tokens/s)" in out
    assert out.count("tokens/s)") == 2  # throughput for both sides
