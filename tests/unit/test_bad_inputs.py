"""Every bad input gets one clear error: `error: …` / `fix: …`, exit code 2, no traceback,
checked before any model is loaded, and no file damaged or half-written.

One row per case: the command line, a fragment of the expected message, the files that
must be byte-for-byte unchanged and the paths that must not exist afterwards. The rows run
in-process with typer's CliRunner on small files built in a temporary folder; loading or
converting a model is made to fail loudly, so a check that fires too late fails its row.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from refusalscope.cli import app

runner = CliRunner()


class Boom:
    """A pickle that would create a marker file if anything ever unpickled it fully."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _sae(d_in: int = 8, d_sae: int = 16, layer: int = 1):
    from refusalscope.sae.model import SAE, SAEConfig

    return SAE.random(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=4, layer=layer))


def _sae_variant(root: Path, good: Path, name: str, cfg_text: str | bytes) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "sae_weights.safetensors").write_bytes((good / "sae_weights.safetensors").read_bytes())
    target = folder / "cfg.json"
    target.write_bytes(cfg_text if isinstance(cfg_text, bytes) else cfg_text.encode())
    return folder


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: one small file of each kind, good and bad."""
    from refusalscope.sae.io import save_sae

    d = tmp_path_factory.mktemp("bad-inputs")
    (d / "adir").mkdir()
    (d / "afile").write_text("not a folder\n")
    (d / "results.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    import sqlite3

    with sqlite3.connect(d / "schema.db") as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); CREATE TABLE metrics (x);"
            "INSERT INTO meta VALUES ('schema_version', 'two');"
        )
    db.close()
    # prompt files
    (d / "good.txt").write_text("hello\n")
    (d / "bin.txt").write_bytes(b"\x00\x01\x02binary\xff")
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (d / "bad.json").write_text('["one", ')
    (d / "dict.json").write_text('{"prompt": "one"}')
    (d / "num.json").write_text("[42]")
    (d / "noprompt.jsonl").write_text('{"text": "x"}\n')
    (d / "badline.jsonl").write_text('"ok"\n{broken\n')
    (d / "empty.txt").write_text("\n\n")
    # SAEs: a good SAELens folder and damaged copies
    good = save_sae(_sae(), d / "sae")
    cfg = json.loads((good / "cfg.json").read_text())
    for name, change in {
        "sae-din-text": {"d_in": "sixty-four"},
        "sae-k-nan": {"k": float("nan")},
        "sae-dsae-neg": {"d_sae": -5},
        "sae-arch": {"architecture": "gated"},
        "sae-hook": {"hook_name": 12},
    }.items():
        _sae_variant(d, good, name, json.dumps({**cfg, **change}))
    _sae_variant(d, good, "sae-cfg-binary", b"\x89PNG\x00\x00\xff\xfe")
    _sae_variant(d, good, "sae-cfg-list", "[1, 2, 3]")
    _sae_variant(d, good, "sae-cfg-broken", '{"d_in": 8,')
    trunc = _sae_variant(d, good, "sae-truncated", json.dumps(cfg))
    (trunc / "sae_weights.safetensors").write_bytes((good / "sae_weights.safetensors").read_bytes()[:200])
    # a dictionary_learning folder whose ae.pt is a code-executing pickle
    dl = d / "sae-pickle"
    dl.mkdir()
    torch.save({"encoder.weight": Boom(d / "PWNED")}, dl / "ae.pt")
    (dl / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "layer": 1}}))
    # other published layouts with a number that is not one
    from safetensors.torch import save_file

    sp = d / "sparsify" / "layers.1"
    sp.mkdir(parents=True)
    save_file(
        {
            "encoder.weight": torch.zeros(16, 8),
            "encoder.bias": torch.zeros(16),
            "W_dec": torch.zeros(16, 8),
            "b_dec": torch.zeros(8),
        },
        str(sp / "sae.safetensors"),
    )
    (sp / "cfg.json").write_text(json.dumps({"d_in": 8, "k": "four", "num_latents": 16}))
    ls = d / "llamascope"
    (ls / "checkpoints").mkdir(parents=True)
    save_file(
        {"encoder.weight": torch.zeros(16, 8), "encoder.bias": torch.zeros(16), "decoder.weight": torch.zeros(8, 16)},
        str(ls / "checkpoints" / "final.safetensors"),
    )
    (ls / "hyperparams.json").write_text(
        json.dumps(
            {"d_model": 8, "d_sae": "many", "hook_point_in": "blocks.1.hook_resid_post", "norm_activation": "inference"}
        )
    )
    # model folders with a damaged manifest or config, dataset folders with damaged release files
    for name, config, manifest in (("model-manifest", "{}", b"\x00\xff\x00"), ("model-config", "{broken", None)):
        (d / name).mkdir()
        (d / name / "config.json").write_text(config)
        if manifest is not None:
            (d / name / "refusalscope-model.json").write_bytes(manifest)
    (d / "data-bin" / "advbench").mkdir(parents=True)
    (d / "data-bin" / "advbench" / "harmful_behaviors.csv").write_bytes(b"goal,target\n\xff\xfe\x00bad\n")
    (d / "data-cols" / "advbench").mkdir(parents=True)
    (d / "data-cols" / "advbench" / "harmful_behaviors.csv").write_text("gaol,target\nx,y\n")
    import numpy as np

    np.save(d / "dir-object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "dir-nan.json").write_text("[1.0, NaN]")
    # a probe folder whose probe.json is broken (`optimize --probe`)
    (d / "badprobe").mkdir()
    (d / "badprobe" / "probe.json").write_text('{"spec": {"kind": "dense", ')
    (d / "badprobe" / "probe.safetensors").write_bytes(b"\x00" * 16)
    # steering specs
    base = {"format": "refusalscope-steering", "version": 1}
    actadd = {"kind": "actadd", "layer": 0, "direction": {"values": [1.0, 0.0]}, "coefficient": 2.0}
    feature = {"kind": "feature", "sae": {"source": str(good)}, "features": [1], "mode": "set", "value": 8.0}
    specs = {
        "spec-valeu.json": {
            **base,
            "interventions": [{**{k: v for k, v in feature.items() if k != "value"}, "valeu": 8.0}],
        },
        "spec-moode.json": {
            **base,
            "interventions": [{**{k: v for k, v in feature.items() if k != "mode"}, "moode": "set"}],
        },
        "spec-kind.json": {**base, "interventions": [{**actadd, "kind": "actad"}]},
        "spec-version.json": {**base, "version": "two", "interventions": []},
        "spec-top.json": {**base, "interventionz": []},
        "spec-coef-text.json": {**base, "interventions": [{**actadd, "coefficient": "lots"}]},
        "spec-layer-neg.json": {**base, "interventions": [{**actadd, "layer": -3}]},
        "spec-gate.json": {
            **base,
            "interventions": [
                {
                    "kind": "conditional",
                    "gate": {
                        "kind": "direction",
                        "direction": {"values": [1.0, 0.0]},
                        "layer": 0,
                        "threshold": 1.0,
                        "treshold": 2.0,
                    },
                    "interventions": [actadd],
                }
            ],
        },
        "spec-value-good-sae.json": {**base, "interventions": [{**feature, "value": [1.0]}]},
    }
    for name, content in specs.items():
        (d / name).write_text(json.dumps(content))
    (d / "spec-nan.json").write_text(json.dumps({**base, "interventions": [actadd]}).replace("2.0", "NaN"))
    (d / "spec-inf.yaml").write_text(
        "format: refusalscope-steering\ninterventions:\n  - {kind: actadd, layer: 0, coefficient: .inf,"
        " direction: {values: [1.0, 0.0]}}\n"
    )
    (d / "spec-bad.yaml").write_text("interventions: [unclosed\n")
    (d / "spec-bin.json").write_bytes(b"\x00\x00\x01")
    (d / "spec-good.json").write_text(json.dumps({**base, "interventions": [actadd]}))
    (d / "direction.json").write_text("[1.0, 0.0]")
    # sweep grids
    grid = {
        "methods": [{"name": "a", "spec": "spec-good.json", "strengths": [1.0]}],
        "tasks": [{"dataset": "harmful/jailbreakbench", "limit": 4}],
    }
    grids = {
        "grid-methds.json": {"methds": grid["methods"], "tasks": grid["tasks"]},
        "grid-batch.json": {**grid, "batch_size": "lots"},
        "grid-batch-zero.json": {**grid, "batch_size": 0},
        "grid-strength-text.json": {**grid, "methods": [{**grid["methods"][0], "strengths": ["strong"]}]},
        "grid-limit.json": {**grid, "tasks": [{"dataset": "harmful/jailbreakbench", "limit": -1}]},
        "grid-dataset.json": {**grid, "tasks": [{"dataset": "harmful/jailbreakbenc"}]},
        "grid-task-key.json": {**grid, "tasks": [{"dataset": "harmful/jailbreakbench", "limt": 4}]},
        "grid-spec-typo.json": {**grid, "methods": [{"name": "a", "spec": "spec-valeu.json"}]},
        "grid-dtype.json": {**grid, "dtype": "fp64"},
        "grid-list.json": [grid],
        "grid-good.json": grid,
        "grid-advbench.json": {**grid, "tasks": [{"dataset": "harmful/advbench", "limit": 2}]},
    }
    for name, content in grids.items():
        (d / name).write_text(json.dumps(content))
    (d / "grid-nan.yaml").write_text(
        "methods: [{name: a, spec: spec-good.json, strengths: [1.0, .nan]}]\ntasks: [{dataset: harmful/jailbreakbench}]\n"
    )
    (d / "grid-syntax.yaml").write_text("methods: [\n  - {name: a\n")
    # lm-eval steer files
    header = "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,sae_id,description\n"
    (d / "lm-coef.csv").write_text(header + f"sae_lens,add,{good},layers.1,3,lots,,\n")
    (d / "lm-nan.csv").write_text(header + f"sae_lens,add,{good},layers.1,3,nan,,\n")
    (d / "lm-feature.csv").write_text(header + f"sae_lens,add,{good},layers.1,-2,1.0,,\n")
    (d / "lm-column.csv").write_text(
        header.replace("steering_coefficient", "steering_coeff") + f"sae_lens,add,{good},layers.1,3,1,,\n"
    )
    (d / "lm-extra.csv").write_text(header + f"sae_lens,add,{good},layers.1,3,1.0,,,surplus\n")
    (d / "lm-bin.csv").write_bytes(b"\x00\xff\xfe")
    torch.save({"layers.1": {"steering_vector": Boom(d / "PWNED"), "action": "add"}}, d / "lm-pickle.pt")
    torch.save({"layers.1": {"steering_vector": torch.ones(8), "steering_coefficient": float("inf")}}, d / "lm-inf.pt")
    return d


@dataclass
class Case:
    argv: list[str]
    fragment: str
    unchanged: tuple[str, ...] = ()  # files that must keep their bytes
    absent: tuple[str, ...] = ("PWNED",)  # paths that must not exist afterwards


C = Case
CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ usage errors (click)
    "unknown-command": C(["nosuchcommand"], "No such command"),
    "unknown-command-markup": C(["nosuch[/x]"], "No such command 'nosuch[/x]'"),
    "models-extra-option": C(["models", "--bogus"], "No such option"),
    "generate-batch-not-int": C(["generate", "hi", "--batch-size", "lots"], "Invalid value for '--batch-size'"),
    # ------------------------------------------------------------------ generate: options
    "generate-unknown-model": C(["generate", "hi", "--model", "no-such-model"], "unknown model spec 'no-such-model'"),
    "generate-dtype": C(["generate", "hi", "--dtype", "fp64"], "--dtype: unknown value 'fp64'"),
    "generate-dtype-typo": C(["generate", "hi", "--dtype", "bf61"], "did you mean 'bf16'"),
    "generate-batch-zero": C(["generate", "hi", "--batch-size", "0"], "--batch-size must be at least 1"),
    "generate-tokens-zero": C(["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    "generate-temperature-zero": C(
        ["generate", "hi", "--sample", "--temperature", "0"], "--temperature must be positive"
    ),
    "generate-temperature-nan": C(["generate", "hi", "--sample", "--temperature", "nan"], "must be a finite number"),
    "generate-output-dir": C(["generate", "hi", "-o", "{d}/adir"], "is a folder"),
    # `-o new/` names a folder that does not exist yet: refused while parsing, not written as a file `new`
    "usage-generate-output-slash": C(["generate", "hi", "-o", "{d}/newdir/"], "ends with a slash", absent=("newdir",)),
    "usage-sae-eval-output-slash": C(
        ["sae-eval", "{d}/sae", "-o", "{d}/newdir/"], "ends with a slash", absent=("newdir",)
    ),
    "usage-steer-output-slash": C(
        ["steer", "hi", "--spec", "{d}/spec-good.json", "-o", "{d}/newdir/"], "ends with a slash", absent=("newdir",)
    ),
    "usage-sweep-output-slash": C(
        ["sweep", "--spec", "{d}/grid-good.json", "-o", "{d}/newdir/"], "ends with a slash", absent=("newdir",)
    ),
    "generate-output-under-file": C(
        ["generate", "hi", "-o", "{d}/afile/out.json"], "is a file, not a folder", unchanged=("afile",)
    ),
    "generate-no-prompts": C(["generate"], "no prompts given"),
    "model-manifest-binary": C(["generate", "hi", "--model", "{d}/model-manifest"], "is a binary file"),
    "model-config-broken": C(["generate", "hi", "--model", "{d}/model-config"], "cannot read the model config"),
    "model-gguf-missing": C(["generate", "hi", "--model", "{d}/absent.gguf"], "GGUF file"),
    "generate-seed": C(["generate", "hi", "--seed", "-1"], "--seed must be at least 0"),
    # ------------------------------------------------------------------ prompt files
    "prompts-missing": C(["generate", "-f", "{d}/absent.txt"], "does not exist"),
    "prompts-folder": C(["generate", "-f", "{d}/adir"], "is a folder, not a file"),
    "prompts-binary": C(["generate", "-f", "{d}/bin.txt"], "is a binary file"),
    "prompts-not-utf8": C(["generate", "-f", "{d}/latin1.txt"], "is not UTF-8 text"),
    "prompts-bad-json": C(["generate", "-f", "{d}/bad.json"], "not valid JSON"),
    "prompts-json-object": C(["generate", "-f", "{d}/dict.json"], "holds a JSON dict, not a list"),
    "prompts-json-number": C(["generate", "-f", "{d}/num.json"], "item 0 is not a non-empty prompt string"),
    "prompts-jsonl-field": C(["generate", "-f", "{d}/noprompt.jsonl"], "line 1 has no 'prompt' field"),
    "prompts-jsonl-line": C(["generate", "-f", "{d}/badline.jsonl"], "line 2 of the prompt file"),
    "prompts-empty": C(["generate", "-f", "{d}/empty.txt"], "no prompts given"),
    # ------------------------------------------------------------------ user text with Rich markup
    "markup-closing-tag": C(["generate", "-f", "{d}/[/x]"], "[/x] does not exist"),
    "markup-style-tag": C(["generate", "-f", "{d}/[bold]p.txt"], "[bold]p.txt does not exist"),
    # ------------------------------------------------------------------ run
    "run-profile": C(["run", "--profile", "quik"], "unknown profile 'quik'"),
    "run-dtype": C(["run", "--dtype", "float64"], "--dtype: unknown value"),
    "run-output-file": C(["run", "-o", "{d}/afile"], "is a file, not a folder", unchanged=("afile",)),
    "run-model": C(["run", "--model", "no-such-model"], "unknown model spec"),
    "run-data-dir": C(["run", "--data-dir", "{d}/nodata"], "data folder"),
    "run-workers-zero": C(["run", "--ray", "local", "--workers", "0"], "--workers must be at least 1"),
    "run-workers-without-ray": C(["run", "--workers", "2"], "--workers needs --ray"),
    # ------------------------------------------------------------------ train-sae
    "train-preset": C(["train-sae", "--preset", "huge"], "huge"),
    "train-layer": C(["train-sae", "--layer", "-1"], "--layer must be at least 0"),
    "train-dtype": C(["train-sae", "--dtype", "int8"], "--dtype: unknown value 'int8'"),
    "train-model": C(["train-sae", "--model", "no-such-model"], "unknown model spec"),
    "train-data-dir": C(["train-sae", "--data-dir", "{d}/nodata"], "data folder"),
    "train-output-file": C(["train-sae", "-o", "{d}/afile"], "is a file, not a folder", unchanged=("afile",)),
    # ------------------------------------------------------------------ sae-eval: options and SAE files
    "sae-eval-missing": C(["sae-eval", "{d}/nosae"], "neither an existing SAE file or folder"),
    "sae-eval-n-docs": C(["sae-eval", "{d}/sae", "--n-docs", "0"], "--n-docs must be at least 1"),
    "sae-eval-layer": C(["sae-eval", "{d}/sae", "--layer", "-2"], "--layer must be at least 0"),
    "sae-eval-model": C(["sae-eval", "{d}/sae", "--model", "no-such-model"], "unknown model spec"),
    "sae-eval-dtype": C(["sae-eval", "{d}/sae", "--dtype", "fp64"], "--dtype: unknown value 'fp64'"),
    "sae-eval-data-dir": C(["sae-eval", "{d}/sae", "--data-dir", "{d}/nodata"], "data folder"),
    "sae-eval-output-dir": C(["sae-eval", "{d}/sae", "-o", "{d}/adir"], "is a folder"),
    "sae-cfg-text-number": C(["sae-eval", "{d}/sae-din-text"], "d_in must be an integer, got 'sixty-four'"),
    "sae-cfg-nan": C(["sae-eval", "{d}/sae-k-nan"], "k must be a finite number"),
    "sae-cfg-negative": C(["sae-eval", "{d}/sae-dsae-neg"], "d_sae must be at least 1"),
    "sae-cfg-architecture": C(["sae-eval", "{d}/sae-arch"], "unknown SAE architecture 'gated'"),
    "sae-cfg-hook-type": C(["sae-eval", "{d}/sae-hook"], "hook_name must be a string"),
    "sae-cfg-binary": C(["sae-eval", "{d}/sae-cfg-binary"], "it is not valid JSON"),
    "sae-cfg-list": C(["sae-eval", "{d}/sae-cfg-list"], "holds a JSON list, not an object"),
    "sae-cfg-broken": C(["sae-eval", "{d}/sae-cfg-broken"], "it is not valid JSON"),
    "sae-truncated": C(["sae-eval", "{d}/sae-truncated"], "not a complete safetensors file"),
    "sae-pickle": C(["sae-eval", "{d}/sae-pickle"], "never fully unpickles"),
    "sae-sparsify-k": C(["sae-eval", "{d}/sparsify/layers.1"], "k must be an integer, got 'four'"),
    "sae-llamascope-d-sae": C(["sae-eval", "{d}/llamascope"], "d_sae must be an integer, got 'many'"),
    # ------------------------------------------------------------------ direction
    "direction-n-train": C(["direction", "--n-train", "1"], "--n-train must be at least 2"),
    "direction-n-val": C(["direction", "--n-val", "0"], "--n-val must be at least 1"),
    "direction-stride": C(["direction", "--layer-stride", "0"], "--layer-stride must be at least 1"),
    "direction-n-effect": C(["direction", "--n-effect", "-1"], "--n-effect must be at least 0"),
    "direction-output-file": C(["direction", "-o", "{d}/afile"], "is a file, not a folder", unchanged=("afile",)),
    "direction-model": C(["direction", "--model", "no-such-model"], "unknown model spec"),
    "direction-data-dir": C(["direction", "--data-dir", "{d}/nodata"], "data folder"),
    "direction-seed": C(["direction", "--seed", "-1"], "--seed must be at least 0"),
    "direction-dtype": C(["direction", "--dtype", "fp8"], "--dtype: unknown value"),
    # ------------------------------------------------------------------ discover
    "discover-method": C(["discover", "--method", "cosim+ig"], "did you mean 'cossim+ig'"),
    "discover-baselines": C(["discover", "--baselines", "random,actdif"], "did you mean 'actdiff'"),
    "discover-k": C(["discover", "-k", "0"], "--k must be at least 1"),
    "discover-prefilter": C(["discover", "--prefilter-k", "0"], "--prefilter-k must be at least 1"),
    "discover-ig-steps": C(["discover", "--ig-steps", "0"], "--ig-steps must be at least 1"),
    "discover-n-attribution": C(["discover", "--n-attribution", "0"], "--n-attribution must be at least 1"),
    "discover-n-eval": C(["discover", "--n-eval", "0"], "--n-eval must be at least 1"),
    "discover-eval-sets": C(["discover", "--eval-sets", "harmbench,advbenc"], "did you mean 'advbench'"),
    "discover-eval-sets-empty": C(["discover", "--eval-sets", ","], "--eval-sets names no evaluation set"),
    "discover-suppress-nan": C(["discover", "--suppress=-1,nan"], "must be a finite number"),
    "discover-suppress-text": C(["discover", "--suppress=-1,lots"], "--suppress value 'lots' must be a number"),
    "discover-induce-empty": C(["discover", "--induce", ""], "--induce lists no numbers"),
    "discover-induce-top": C(["discover", "--induce-top", "-1"], "--induce-top must be at least 0"),
    "discover-tokens": C(["discover", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    "discover-preset": C(["discover", "--sae-preset", "huge"], "huge"),
    "discover-output-file": C(["discover", "-o", "{d}/afile"], "is a file, not a folder", unchanged=("afile",)),
    "discover-sae-missing": C(["discover", "--sae", "{d}/nosae"], "neither an existing SAE file or folder"),
    "discover-sae-bad-cfg": C(["discover", "--sae", "{d}/sae-din-text"], "d_in must be an integer"),
    "discover-model": C(["discover", "--model", "no-such-model"], "unknown model spec"),
    "discover-data-dir": C(["discover", "--data-dir", "{d}/nodata"], "data folder"),
    "discover-seed": C(["discover", "--seed", "-3"], "--seed must be at least 0"),
    "discover-dtype": C(["discover", "--dtype", "bf32"], "--dtype: unknown value 'bf32'"),
    # ------------------------------------------------------------------ steering specs (steer, chat, steer-convert)
    "spec-valeu": C(
        ["steer-convert", "{d}/spec-valeu.json", "{d}/out.json"],
        "unknown field 'valeu' (did you mean 'value'?)",
        absent=("out.json", "PWNED"),
    ),
    "spec-moode": C(["steer", "hi", "--spec", "{d}/spec-moode.json"], "unknown field 'moode' (did you mean 'mode'?)"),
    "spec-kind": C(["steer", "hi", "--spec", "{d}/spec-kind.json"], "unknown intervention kind 'actad'"),
    "spec-version": C(["steer", "hi", "--spec", "{d}/spec-version.json"], "version must be an integer, got 'two'"),
    "spec-top-key": C(["chat", "--spec", "{d}/spec-top.json"], "unknown field 'interventionz'"),
    "spec-coef-text": C(
        ["steer", "hi", "--spec", "{d}/spec-coef-text.json"], "coefficient must be a number, got 'lots'"
    ),
    "spec-nan-json": C(["steer", "hi", "--spec", "{d}/spec-nan.json"], "NaN is not a JSON number"),
    "spec-inf-yaml": C(["steer", "hi", "--spec", "{d}/spec-inf.yaml"], "coefficient must be a finite number"),
    "spec-layer-negative": C(["steer", "hi", "--spec", "{d}/spec-layer-neg.json"], "layer must be at least 0"),
    "spec-gate-key": C(
        ["chat", "--spec", "{d}/spec-gate.json"], "unknown field 'treshold' (did you mean 'threshold'?)"
    ),
    "spec-yaml-syntax": C(["steer", "hi", "--spec", "{d}/spec-bad.yaml"], "cannot parse the steering spec"),
    "spec-binary": C(["steer", "hi", "--spec", "{d}/spec-bin.json"], "is a binary file"),
    "spec-missing": C(["steer-convert", "{d}/nospec.json", "{d}/out.yaml"], "does not exist", absent=("out.yaml",)),
    "steer-inline-nan": C(
        ["steer", "hi", "--sae", "{d}/sae", "--feature", "1", "--value", "nan"],
        "feature steering value must be a finite number",
    ),
    "steer-inline-inf-coefficient": C(
        ["steer", "hi", "--actadd", "{d}/direction.json", "--layer", "0", "--coefficient", "inf"],
        "must be a finite number",
    ),
    "steer-file": C(["steer", "--spec", "{d}/spec-good.json", "-f", "{d}/bin.txt"], "is a binary file"),
    "steer-mode": C(
        ["steer", "hi", "--sae", "{d}/sae", "--feature", "1", "--mode", "clampp"], "unknown feature mode 'clampp'"
    ),
    "steer-positions": C(
        ["steer", "hi", "--actadd", "{d}/direction.json", "--layer", "0", "--positions", "middle"],
        "unknown position keyword 'middle'",
    ),
    "steer-ablate-missing": C(["steer", "hi", "--ablate", "{d}/nodir.pt"], "does not exist"),
    "steer-ablate-npy-object": C(["steer", "hi", "--ablate", "{d}/dir-object.npy"], "cannot read the direction file"),
    "steer-ablate-json-nan": C(["steer", "hi", "--ablate", "{d}/dir-nan.json"], "NaN is not a JSON number"),
    "steer-ablate-pickle": C(["steer", "hi", "--ablate", "{d}/lm-pickle.pt"], "never fully unpickles"),
    "steer-model": C(["steer", "hi", "--spec", "{d}/spec-good.json", "--model", "no-such-model"], "unknown model spec"),
    "steer-dtype": C(
        ["steer", "hi", "--spec", "{d}/spec-good.json", "--dtype", "fp64"], "--dtype: unknown value 'fp64'"
    ),
    "chat-model": C(["chat", "--spec", "{d}/spec-good.json", "--model", "no-such-model"], "unknown model spec"),
    "chat-dtype": C(["chat", "--spec", "{d}/spec-good.json", "--dtype", "half"], "--dtype: unknown value 'half'"),
    "chat-tokens-zero": C(
        ["chat", "--spec", "{d}/spec-good.json", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"
    ),
    "steer-tokens-zero": C(
        ["steer", "hi", "--spec", "{d}/spec-good.json", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"
    ),
    "steer-batch-negative": C(
        ["steer", "hi", "--spec", "{d}/spec-good.json", "--batch-size", "-2"], "--batch-size must be at least 1"
    ),
    "steer-output-dir": C(["steer", "hi", "--spec", "{d}/spec-good.json", "-o", "{d}/adir"], "is a folder"),
    "steer-save-spec-under-file": C(
        ["steer", "hi", "--spec", "{d}/spec-good.json", "--save-spec", "{d}/afile/s.json"], "is a file, not a folder"
    ),
    "steer-convert-model": C(
        ["steer-convert", "{d}/spec-good.json", "{d}/o.json", "--model", "no-such-model"],
        "unknown model spec",
        absent=("o.json",),
    ),
    "steer-convert-dtype": C(
        ["steer-convert", "{d}/spec-good.json", "{d}/o.json", "--model", "default", "--dtype", "fp64"],
        "unknown dtype 'fp64'",
        absent=("o.json",),
    ),
    "steer-convert-target": C(
        ["steer-convert", "{d}/spec-good.json", "{d}/o.txt"], "cannot tell the format of 'o.txt'", absent=("o.txt",)
    ),
    # ------------------------------------------------------------------ lm-eval steer files
    "lm-eval-coefficient-text": C(
        ["steer-convert", "{d}/lm-coef.csv", "{d}/o.json"],
        "steering_coefficient must be a number, got 'lots'",
        absent=("o.json",),
    ),
    "lm-eval-coefficient-nan": C(
        ["steer-convert", "{d}/lm-nan.csv", "{d}/o.json"], "must be a finite number", absent=("o.json",)
    ),
    "lm-eval-feature-negative": C(
        ["steer-convert", "{d}/lm-feature.csv", "{d}/o.json"], "feature_index must be at least 0"
    ),
    "lm-eval-column-typo": C(
        ["steer-convert", "{d}/lm-column.csv", "{d}/o.json"], "did you mean 'steering_coefficient'"
    ),
    "lm-eval-extra-cell": C(["steer-convert", "{d}/lm-extra.csv", "{d}/o.json"], "more cells than the header"),
    "lm-eval-binary": C(["steer-convert", "{d}/lm-bin.csv", "{d}/o.json"], "is a binary file"),
    "lm-eval-pickle": C(["steer-convert", "{d}/lm-pickle.pt", "{d}/o.json"], "never fully unpickles"),
    "lm-eval-inf": C(["steer-convert", "{d}/lm-inf.pt", "{d}/o.json"], "must be a finite number", absent=("o.json",)),
    # ------------------------------------------------------------------ sweep: grid files and options
    "sweep-grid-missing": C(
        ["sweep", "--spec", "{d}/nogrid.yaml", "-o", "{d}/results.db"], "does not exist", unchanged=("results.db",)
    ),
    "sweep-grid-key": C(
        ["sweep", "--spec", "{d}/grid-methds.json"], "unknown field 'methds' (did you mean 'methods'?)"
    ),
    "sweep-grid-batch": C(["sweep", "--spec", "{d}/grid-batch.json"], "batch_size must be an integer, got 'lots'"),
    "sweep-grid-batch-zero": C(["sweep", "--spec", "{d}/grid-batch-zero.json"], "batch_size must be at least 1"),
    "sweep-grid-strength-text": C(["sweep", "--spec", "{d}/grid-strength-text.json"], "strength must be a number"),
    "sweep-grid-strength-nan": C(["sweep", "--spec", "{d}/grid-nan.yaml"], "strength must be a finite number"),
    "sweep-grid-limit": C(["sweep", "--spec", "{d}/grid-limit.json"], "limit must be at least 1"),
    "sweep-grid-dataset": C(["sweep", "--spec", "{d}/grid-dataset.json"], "did you mean 'harmful/jailbreakbench'"),
    "sweep-grid-task-key": C(
        ["sweep", "--spec", "{d}/grid-task-key.json"], "unknown field 'limt' (did you mean 'limit'?)"
    ),
    "sweep-grid-spec-typo": C(["sweep", "--spec", "{d}/grid-spec-typo.json"], "did you mean 'value'"),
    "sweep-grid-dtype": C(["sweep", "--spec", "{d}/grid-dtype.json"], "dtype: unknown value 'fp64'"),
    "sweep-grid-list": C(["sweep", "--spec", "{d}/grid-list.json"], "a grid file is a mapping"),
    "sweep-grid-syntax": C(["sweep", "--spec", "{d}/grid-syntax.yaml"], "cannot parse the grid file"),
    "sweep-batch-option": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--batch-size", "0", "-o", "{d}/results.db", "--restart"],
        "--batch-size must be at least 1",
        unchanged=("results.db",),
    ),
    "sweep-dtype-option": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--dtype", "fp64", "-o", "{d}/results.db", "--restart"],
        "--dtype: unknown value",
        unchanged=("results.db",),
    ),
    "sweep-restart-bad-grid": C(
        ["sweep", "--spec", "{d}/grid-batch.json", "-o", "{d}/results.db", "--restart"],
        "batch_size must be an integer",
        unchanged=("results.db",),
    ),
    "sweep-data-dir": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--data-dir", "{d}/nodata", "-o", "{d}/results.db", "--restart"],
        "data folder",
        unchanged=("results.db",),
    ),
    "sweep-model": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--model", "no-such-model", "-o", "{d}/results.db", "--restart"],
        "unknown model spec",
        unchanged=("results.db",),
    ),
    "sweep-dataset-files": C(
        [
            "sweep",
            "--spec",
            "{d}/grid-advbench.json",
            "--data-dir",
            "{d}/data-cols",
            "-o",
            "{d}/results.db",
            "--restart",
        ],
        "missing column(s) 'goal'",
        unchanged=("results.db",),
    ),
    "sweep-workers-zero": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--ray", "local", "--workers", "0"], "--workers must be at least 1"
    ),
    "sweep-workers-without-ray": C(
        ["sweep", "--spec", "{d}/grid-good.json", "--workers", "2"], "--workers needs --ray"
    ),
    "sweep-output-dir": C(["sweep", "--spec", "{d}/grid-good.json", "-o", "{d}/adir"], "is a folder"),
    "sweep-report-under-file": C(
        ["sweep", "--spec", "{d}/grid-good.json", "-o", "{d}/new.db", "--report", "{d}/afile/r.html"],
        "is a file, not a folder",
        absent=("new.db",),
    ),
    # ------------------------------------------------------------------ report
    "report-missing-db": C(["report", "{d}/none.db"], "does not exist"),
    "report-schema-version": C(
        ["report", "{d}/schema.db", "-o", "{d}/r3.html"],
        "schema version 'two' is not a number",
        absent=("r3.html", "r3_data"),
    ),  # the read leaving the file alone is #20's test
    "report-examples": C(
        ["report", "{d}/results.db", "--examples", "-1", "-o", "{d}/r1.html"],
        "--examples must be at least 0",
        unchanged=("results.db",),
        absent=("r1.html", "r1_data"),
    ),
    "report-output-under-file": C(
        ["report", "{d}/results.db", "-o", "{d}/afile/r.html"],
        "is a file, not a folder",
        unchanged=("results.db", "afile"),
    ),
    "report-export-dir-file": C(
        ["report", "{d}/results.db", "-o", "{d}/r2.html", "--export-dir", "{d}/afile"],
        "is a file, not a folder",
        unchanged=("results.db", "afile"),
        absent=("r2.html",),
    ),
    # ------------------------------------------------------------------ datasets
    "datasets-filter": C(["datasets", "jailbrakbench"], "no dataset name contains 'jailbrakbench'"),
    "datasets-file-not-utf8": C(["datasets", "advbench", "--data-dir", "{d}/data-bin"], "not a readable CSV file"),
    "datasets-file-columns": C(["datasets", "advbench", "--data-dir", "{d}/data-cols"], "missing column(s) 'goal'"),
    "datasets-data-dir": C(["datasets", "--data-dir", "{d}/nodata"], "data folder"),
    # ------------------------------------------------------------------ optimize (more rows: tests/unit/test_optimize_cli.py)
    "optimize-methods": C(["optimize", "--direction", "{d}/adir", "--methods", "actad"], "unknown method family actad"),
    "optimize-dtype": C(["optimize", "--direction", "{d}/adir", "--dtype", "fp64"], "--dtype: unknown value"),
    "optimize-n-trials": C(["optimize", "--direction", "{d}/adir", "--n-trials", "0"], "--n-trials must be at least 1"),
    "optimize-n-val": C(["optimize", "--direction", "{d}/adir", "--n-val", "1"], "--n-val must be at least 2"),
    "optimize-loss-budget": C(
        ["optimize", "--direction", "{d}/adir", "--max-loss-increase", "-0.1"], "--max-loss-increase"
    ),
    "optimize-mc-drop": C(["optimize", "--direction", "{d}/adir", "--max-mc-drop", "2"], "--max-mc-drop"),
    "optimize-strengths": C(
        ["optimize", "--direction", "{d}/adir", "--strengths", "2,1"], "--strengths must be LOW,HIGH"
    ),
    "optimize-variance": C(["optimize", "--direction", "{d}/adir", "--variance", "1.5"], "--variance"),
    "optimize-threshold-nan": C(["optimize", "--direction", "{d}/adir", "--first-token-threshold", "nan"], "finite"),
    "optimize-output-file": C(
        ["optimize", "--direction", "{d}/adir", "-o", "{d}/afile"], "is a file, not a folder", unchanged=("afile",)
    ),
    "optimize-no-features": C(
        ["optimize", "--direction", "{d}/adir", "-o", "{d}/opt1"], "need ranked latents", absent=("opt1",)
    ),
    "optimize-features-json": C(
        ["optimize", "--direction", "{d}/adir", "--features", "{d}/bad.json", "-o", "{d}/opt2"],
        "bad.json",
        absent=("opt2",),
    ),
    "optimize-direction": C(
        ["optimize", "--direction", "{d}/adir", "--methods", "actadd", "-o", "{d}/opt3"],
        "holds no refusal direction",
        absent=("opt3",),
    ),
    "optimize-probe-missing": C(
        ["optimize", "--direction", "{d}/adir", "--methods", "actadd", "--probe", "{d}/noprobe", "-o", "{d}/opt4"],
        "noprobe does not exist",
        absent=("opt4",),
    ),
    "optimize-probe-json": C(
        ["optimize", "--direction", "{d}/adir", "--methods", "actadd", "--probe", "{d}/badprobe/probe.json"]
        + ["-o", "{d}/opt5"],
        "is not a refusalscope probe file",
        unchanged=("badprobe/probe.json",),
        absent=("opt5",),
    ),
}


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch, tmp_path):
    """Loading, converting or downloading a model (or training an SAE) fails the case: every
    check in these rows must fire before any of that."""
    import transformers

    import refusalscope.models.loading as loading
    import refusalscope.sae.presets as presets

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    for name in ("_cached_embedded", "_cached_gguf_file", "_convert_gguf", "_hub_snapshot"):
        monkeypatch.setattr(loading, name, boom)
    monkeypatch.setattr(presets, "train_preset", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ws, monkeypatch):
    case = CASES[name]
    monkeypatch.chdir(ws)
    argv = [a.replace("{d}", str(ws)) for a in case.argv]
    before = {f: _digest(ws / f) for f in case.unchanged}
    result = runner.invoke(app, argv)
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{out}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    assert case.fragment in out, out
    if not name.startswith(("unknown-command", "models-extra", "generate-batch-not-int", "usage-")):
        assert "error:" in out and "fix:" in out, out
    for f, digest in before.items():
        assert _digest(ws / f) == digest, f"{f} was modified"
    for f in case.absent:
        assert not (ws / f).exists(), f"{f} was written although the input was bad"


def test_every_command_has_a_bad_input_row():
    import typer.main

    commands = set(typer.main.get_command(app).commands)
    covered = {c.argv[0] for c in CASES.values()}
    # judge-validate, attack, serve, probes … belong to other modules with their own tests
    mine = {
        "models",
        "generate",
        "run",
        "train-sae",
        "sae-eval",
        "direction",
        "discover",
        "steer",
        "chat",
        "steer-convert",
        "sweep",
        "report",
        "datasets",
    }
    assert mine <= commands
    assert mine <= covered, sorted(mine - covered)


# options with no bad value to try (free text), and options whose check still comes only after the
# model has loaded (commands/steer.py: to be moved before `_load_model`)
FREE_TEXT = {("generate", "--system"), ("steer", "--system"), ("chat", "--system"), ("report", "--title")}
CHECKED_LATE: set[tuple[str, str]] = set()  # options only checked after the model loads: none


def test_every_option_has_a_bad_input_row():
    """A new option without a row here fails this test: say what a bad value does, or why none exists."""
    import typer.main

    root = typer.main.get_command(app)
    names = {
        "models",
        "generate",
        "run",
        "train-sae",
        "sae-eval",
        "direction",
        "discover",
        "steer",
        "chat",
        "steer-convert",
        "sweep",
        "report",
        "datasets",
    }
    missing = []
    for name in sorted(names):
        used = {a.split("=")[0] for c in CASES.values() if c.argv[0] == name for a in c.argv if a.startswith("-")}
        for param in root.commands[name].params:
            if param.param_type_name == "argument" or getattr(param, "is_flag", False):
                continue
            if not set(param.opts) & used and (name, param.opts[0]) not in FREE_TEXT | CHECKED_LATE:
                missing.append(f"{name} {param.opts[0]}")
    assert not missing, missing


def test_a_bug_reports_itself_briefly_and_debug_shows_the_traceback(monkeypatch):
    import refusalscope.commands.models as models_cmd

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(models_cmd, "read_prompts", broken)
    plain = runner.invoke(app, ["generate", "hi"])
    assert plain.exit_code == 1
    assert "internal error (a bug in refusalscope): ZeroDivisionError: a bug" in plain.output
    assert "--debug" in plain.output and "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", "generate", "hi"])
    assert debug.exit_code == 1
    assert "Traceback" in debug.output and "ZeroDivisionError" in debug.output
    again = runner.invoke(app, ["generate", "hi"])  # --debug does not stick to the next invocation
    assert "Traceback" not in again.output


def test_an_os_error_naming_a_file_is_a_user_error(monkeypatch, tmp_path):
    import refusalscope.commands.models as models_cmd

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.json"))

    monkeypatch.setattr(models_cmd, "read_prompts", denied)
    result = runner.invoke(app, ["generate", "hi"])
    assert result.exit_code == 2
    assert f"error: Permission denied: {tmp_path / 'out.json'}" in result.output


def test_csv_exports_escape_formulas(tmp_path):
    import csv

    from refusalscope.report import export

    rows = [
        {
            "task": "t",
            "prompt": '=HYPERLINK("http://x")',
            "reply": "+1+1",
            "other": "-2",
            "at": "@SUM(A1)",
            "tab": "\tx",
            "plain": "hello",
            "number": -3.5,
        }
    ]
    export({"examples": rows}, tmp_path)
    read = list(csv.DictReader((tmp_path / "examples.csv").open()))[0]
    assert read["prompt"] == '\'=HYPERLINK("http://x")'
    assert read["reply"] == "'+1+1" and read["other"] == "'-2" and read["at"] == "'@SUM(A1)" and read["tab"] == "'\tx"
    assert read["plain"] == "hello" and read["number"] == "-3.5"  # numbers stay numbers
    assert json.loads((tmp_path / "examples.json").read_text())[0]["prompt"].startswith("=")  # JSON keeps the text


def test_report_output_folder_gets_report_html(tmp_path):
    from refusalscope.report import report_outputs

    page, data = report_outputs(f"{tmp_path}/out/", None)
    assert page == tmp_path / "out" / "report.html" and data == tmp_path / "out" / "report_data"
    (tmp_path / "existing").mkdir()
    page, _ = report_outputs(tmp_path / "existing", None)
    assert page == tmp_path / "existing" / "report.html"
    assert not (tmp_path / "out").exists()  # checking writes nothing


def test_atomic_writes_honour_the_umask(tmp_path):
    from safetensors.torch import save_file

    from refusalscope.paths import atomic_dir, atomic_file

    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "f.txt") as handle:
            handle.write("x")
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "a").write_text("y")
            save_file({"w": torch.zeros(2)}, str(folder / "w.safetensors"))  # safetensors writes 0600
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "d" / "a").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d" / "w.safetensors").stat().st_mode & 0o777 == 0o640
    with atomic_file(tmp_path / "g.txt") as handle:
        handle.write("x")
    assert (tmp_path / "g.txt").stat().st_mode & 0o777 == 0o666 & ~old


def test_atomic_writes_to_a_folder_or_under_a_file_are_clear_errors(tmp_path):
    from refusalscope.errors import RefusalScopeError
    from refusalscope.paths import atomic_dir, atomic_file

    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep")
    with pytest.raises(RefusalScopeError, match="it is a folder"):
        with atomic_file(tmp_path / "folder") as handle:
            handle.write("x")
    with pytest.raises(RefusalScopeError, match="cannot write"):
        with atomic_file(tmp_path / "file" / "out.json") as handle:
            handle.write("x")
    with pytest.raises(RefusalScopeError, match="a file has that name"):
        with atomic_dir(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == [
        "file",
        "folder",
    ]


def test_manifest_names_become_safe_path_components(tmp_path):
    from refusalscope.models.loading import MANIFEST, resolve_spec

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for evil in ("../../x", "/etc/passwd", "a/../../b", "..", "[bold]x"):
        (folder / MANIFEST).write_text(json.dumps({"name": evil}))
        _, identity = resolve_spec(str(folder))
        name = identity["name"]
        assert "/" not in name and name not in ("", ".", "..") and not name.startswith(".")
        assert Path(tmp_path / "runs" / name).resolve().parent == (tmp_path / "runs").resolve()
    (folder / MANIFEST).write_bytes(b"\x00\xff")
    from refusalscope.errors import RefusalScopeError

    with pytest.raises(RefusalScopeError, match="binary"):
        resolve_spec(str(folder))


def test_dtype_is_checked_before_a_conversion(monkeypatch):
    """An unknown dtype with a model that would need converting fails at once (the
    autouse fixture makes any conversion raise)."""
    from refusalscope.errors import RefusalScopeError
    from refusalscope.models import load_model

    with pytest.raises(RefusalScopeError, match="unknown dtype 'fp64'"):
        load_model("default", dtype="fp64")


def test_messages_name_only_commands_that_exist():
    """A fix that says `refusalscope data list` when no such command exists sends the user nowhere."""
    import re

    import typer.main

    import refusalscope

    commands = set(typer.main.get_command(app).commands)
    wrong = []
    for path in Path(refusalscope.__file__).parent.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            wrong += [
                f"{path.name}:{n}: {m.group(0)}"
                for m in re.finditer(r"`refusalscope ([a-z][a-z0-9-]*)", line)
                if m.group(1) not in commands
            ]
    assert not wrong, wrong
