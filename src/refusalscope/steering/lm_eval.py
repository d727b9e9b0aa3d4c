"""Exchange steerings with lm-evaluation-harness' `steered` model (lm_eval/models/hf_steered.py).

lm-eval hooks the output of modules of `model.base_model` named by `hookpoint`
("layers.12" is the residual stream after block 12, "embed_tokens" the embeddings) and
applies, at every position of every input, one action per hookpoint:

    add    x + coefficient · v
    clamp  x + (coefficient − (x − bias)·v̂) v̂        v̂ = v / |v|

It reads two files (`--model steered --model_args pretrained=…,steer_path=FILE`):

  * a CSV, one row per SAE latent: loader (sparsify | sae_lens), action (add | clamp),
    sparse_model (hub repo, local folder or SAELens release), hookpoint, feature_index,
    steering_coefficient, sae_id (SAELens id), description. v = W_dec[feature_index],
    bias = b_dec. Rows that share a hookpoint overwrite each other (the last one wins).
  * a .pt file: {hookpoint: {"action", "steering_vector", "steering_coefficient",
    "bias", "head_index"}}, the vectors themselves.

Mapping to refusalscope: a CSV `add` row is exactly FeatureSteer(mode="add") at all
positions (x + c · W_dec[j]); a `clamp` row is DirectionClamp.from_sae_feature (a
projection clamp, which is not FeatureSteer 'set'). Export to CSV needs SAEs lm-eval can
load by name (recorded when a steering was imported from a CSV, or SAELens release
provenance); export to .pt always works for add/ablation/actadd/clamp and sums several
additions at one layer into one vector. Gated steering, 'set'/'scale' of latents and
position-restricted steering have no lm-eval equivalent and are refused with the reason.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..errors import RefusalScopeError
from ..sae.model import SAE
from .conditional import Conditional
from .interventions import ActAdd, DirectionAblation, DirectionClamp, FeatureSteer
from .kinds import Intervention
from .points import Point, sae_point
from .references import resolve_sae, unit_vector
from .spec import Steering

CSV_COLUMNS = (
    "loader",
    "action",
    "sparse_model",
    "hookpoint",
    "feature_index",
    "steering_coefficient",
    "sae_id",
    "description",
)
_LAYER_RE = re.compile(r"^(?:model\.)?(?:language_model\.)?(?:layers|blocks)\.(\d+)(?:\.hook_resid_post)?$")
_PRE_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


# ---------------------------------------------------------------------- hookpoints
def hookpoint(point: Point) -> str:
    """lm-eval's module name (under model.base_model) for a refusalscope hook point."""
    return "embed_tokens" if point == "embed" else f"layers.{int(point)}"


def parse_hookpoint(name: str) -> Point:
    """refusalscope hook point of an lm-eval / TransformerLens hookpoint name."""
    name = name.strip()
    if name in ("embed_tokens", "model.embed_tokens", "hook_embed", "blocks.0.hook_resid_pre"):
        return "embed"
    match = _LAYER_RE.match(name)
    if match:
        return int(match.group(1))
    match = _PRE_RE.match(name)
    if match:
        return int(match.group(1)) - 1
    raise RefusalScopeError(
        f"cannot map the hookpoint '{name}' to a residual-stream layer",
        "refusalscope steers decoder-block outputs ('layers.N') and the embeddings ('embed_tokens')",
    )


# ---------------------------------------------------------------------- export
def _refuse(
    what: str, why: str, fix: str = "export to .pt where possible, or evaluate with refusalscope itself"
) -> NoReturn:
    raise RefusalScopeError(f"{what} cannot be expressed in lm-evaluation-harness' steered model: {why}", fix)


def _flat(steering: Steering) -> list[Intervention]:
    out = []
    for item in steering.interventions:
        if isinstance(item, Conditional):
            _refuse("a conditional (gated) steering", "lm-eval steers every input the same way")
        if item.positions != "all":
            _refuse(f"'{item.describe()}'", "lm-eval steers all token positions")
        out.append(item)
    return out


def _lm_eval_identity(sae: SAE) -> dict[str, str]:
    prov = sae.cfg.provenance or {}
    if prov.get("lm_eval"):
        return dict(prov["lm_eval"])
    if prov.get("release") and prov.get("sae_id"):
        return {"loader": "sae_lens", "sparse_model": prov["release"], "sae_id": prov["sae_id"]}
    raise RefusalScopeError(
        "an SAE in this steering is a local file that lm-evaluation-harness cannot load by name",
        "export to a .pt file instead: it holds the steering vectors themselves",
    )


def csv_rows(steering: Steering) -> list[dict[str, Any]]:
    rows, seen = [], {}
    for item in _flat(steering):
        if isinstance(item, FeatureSteer):
            if item.mode != "add" or not item.keep_error:
                _refuse(
                    f"'{item.describe()}'",
                    "lm-eval can add a decoder row (action=add) or clamp a projection (action=clamp), "
                    "not set or scale an SAE latent",
                )
            ident = _lm_eval_identity(item.sae)
            scale = float(item.sae.cfg.input_scale)
            for feature, value in zip(item.features, item.values):
                rows.append(_row(ident, "add", item.layer, feature, value / scale, steering))
        elif isinstance(item, DirectionClamp) and item.origin is not None:
            ident = _lm_eval_identity(item.origin["sae"])
            rows.append(_row(ident, "clamp", item.layer, item.origin["feature"], item.value, steering))
        else:
            _refuse(f"'{item.describe()}'", "a CSV row names an SAE latent, and this intervention has none")
    for row in rows:
        if row["hookpoint"] in seen:
            _refuse(
                f"two rows at hookpoint {row['hookpoint']}",
                "lm-eval keeps one row per hookpoint (the last overwrites the others)",
                "export to .pt, which sums several additions at one layer into one vector",
            )
        seen[row["hookpoint"]] = row
    return rows


def _row(ident, action, point, feature, coefficient, steering) -> dict[str, Any]:
    return {
        "loader": ident.get("loader", "sae_lens"),
        "action": action,
        "sparse_model": ident.get("sparse_model", ""),
        "hookpoint": ident.get("hookpoint") or hookpoint(point),
        "feature_index": int(feature),
        "steering_coefficient": float(coefficient),
        "sae_id": ident.get("sae_id", ""),
        "description": f"refusalscope {steering.id}" + (f" {steering.name}" if steering.name else ""),
    }


def pt_config(steering: Steering) -> dict[str, dict[str, Any]]:
    config: dict[str, dict[str, Any]] = {}

    def put(point, action, vector, coefficient, bias=None):
        name = hookpoint(point)
        entry = config.get(name)
        if entry is not None:
            if action == "add" and entry["action"] == "add":
                entry["steering_vector"] = entry["steering_vector"] + vector * coefficient
                return
            _refuse(f"two interventions at {name}", "lm-eval applies one action per hookpoint (adds can be summed)")
        config[name] = {
            "action": action,
            "steering_vector": (vector * coefficient if action == "add" else vector).float().contiguous(),
            "steering_coefficient": 1.0 if action == "add" else float(coefficient),
            "bias": None if bias is None else bias.float().contiguous(),
            "head_index": None,
        }

    for item in _flat(steering):
        if isinstance(item, FeatureSteer):
            if item.mode != "add" or not item.keep_error:
                _refuse(
                    f"'{item.describe()}'", "lm-eval cannot set or scale an SAE latent, only add or clamp a direction"
                )
            dirs = item.sae.decoder_directions(item.features).detach().float()
            put(item.layer, "add", torch.tensor(item.values) @ dirs, 1.0)
        elif isinstance(item, ActAdd):
            put(item.layer, "add", item.vector.float(), 1.0)
        elif isinstance(item, DirectionAblation):
            for point in item.layers if item.layers != "all" else ["embed", *range(_n_layers(steering, item))]:
                put(point, "clamp", item.unit, 0.0)
        elif isinstance(item, DirectionClamp):
            put(item.layer, "clamp", item.direction, item.value, item.bias)
        else:
            _refuse(f"'{item.describe()}'", "unsupported intervention kind")
    return config


def _n_layers(steering: Steering, item: DirectionAblation) -> int:
    n = (steering.model or {}).get("n_layers")
    if n is None:
        raise RefusalScopeError(
            "an ablation at 'all' layers needs the model's layer count to export",
            "export with the model given (refusalscope steer-convert --model …), or list the layers explicitly",
        )
    return int(n)


def export_lm_eval(steering: Steering, path: str | Path, model: Any = None) -> Path:
    """Write `steering` as an lm-eval steer file (.csv or .pt, by suffix)."""
    from ..paths import atomic_file

    path = Path(path)
    if model is not None:
        steering.for_model(model)
        assert steering.model is not None  # for_model recorded it
        steering.model.setdefault("n_layers", model.n_layers)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = csv_rows(steering)
        with atomic_file(path) as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix in (".pt", ".pth"):
        config = pt_config(steering)
        with atomic_file(path, "wb") as handle:
            torch.save(config, handle)
    else:
        raise RefusalScopeError(f"cannot tell the lm-eval format of '{path.name}'", "use a .csv or .pt file name")
    return path


# ---------------------------------------------------------------------- import
def _default_sae_loader(loader: str, sparse_model: str, hookpoint_name: str, sae_id: str):
    """Find the SAE a CSV row names: a local folder first, then load_sae's own lookup."""
    from ..sae import load_sae

    base = Path(sparse_model)
    for local in (base / sae_id if sae_id else None, base / hookpoint_name if hookpoint_name else None, base):
        if local is not None and local.exists():
            return load_sae(str(local)), str(local)
    name = (
        f"{sparse_model}/{sae_id}"
        if loader == "sae_lens" and sae_id
        else (f"{sparse_model}/{hookpoint_name}" if loader == "sparsify" and hookpoint_name else sparse_model)
    )
    return load_sae(name), name


def import_lm_eval(
    path: str | Path, *, saes: dict[str, Any] | None = None, sae_loader: Callable | None = None
) -> Steering:
    """Read an lm-eval steer file (.csv or .pt) as a Steering with the same effect.

    CSV rows name SAEs; `saes` maps "sparse_model" or "sparse_model/sae_id" (or
    "sparse_model/hookpoint" for sparsify) to an SAE (or a path load_sae reads), otherwise
    `sae_loader(loader, sparse_model, hookpoint, sae_id) -> (SAE, source)` or a local-folder /
    load_sae lookup finds them.
    """
    path = Path(path)
    if not path.is_file():
        raise RefusalScopeError(f"lm-eval steer file {path} does not exist", "check the path")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _import_csv(path, saes or {}, sae_loader)
    if suffix in (".pt", ".pth"):
        return _import_pt(path)
    raise RefusalScopeError(f"cannot tell the lm-eval format of '{path.name}'", "use a .csv or .pt file")


def _import_csv(path: Path, saes: dict[str, Any], sae_loader) -> Steering:
    import io

    from ..checks import check_keys, parse_number, read_text

    text = read_text(path, "lm-eval steer file")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise RefusalScopeError(
                    f"{path.name} line {reader.line_num}: more cells than the header has columns",
                    f"give each row the header's columns: {', '.join(CSV_COLUMNS)}",
                )
            records.append({(k or "").strip(): (v or "").strip() for k, v in row.items() if k})
    except csv.Error as exc:
        raise RefusalScopeError(f"{path} is not a readable CSV file: {exc}", "save it as plain CSV") from None
    if not records:
        raise RefusalScopeError(f"{path} has no rows", f"a header ({', '.join(CSV_COLUMNS)}) and one row per latent")
    for row in records[:1]:
        check_keys(row, (*CSV_COLUMNS, "hook_action"), f"{path.name} header")
    by_point: dict[Any, Any] = {}
    notes = []
    for n, row in enumerate(records, start=2):
        where = f"{path.name} line {n}"
        missing = [c for c in ("sparse_model", "feature_index", "steering_coefficient") if not row.get(c)]
        if missing:
            raise RefusalScopeError(f"{where}: missing {', '.join(missing)}", f"columns are {', '.join(CSV_COLUMNS)}")
        loader = row.get("loader") or "sparsify"
        action = row.get("action") or row.get("hook_action") or "add"
        if loader not in ("sparsify", "sae_lens"):
            raise RefusalScopeError(f"{where}: unknown loader '{loader}'", "lm-eval knows sparsify and sae_lens")
        if action not in ("add", "clamp"):
            raise RefusalScopeError(f"{where}: unknown action '{action}'", "lm-eval knows add and clamp")
        feature = parse_number(row["feature_index"], f"{where}: feature_index", integer=True, minimum=0)
        coefficient = parse_number(row["steering_coefficient"], f"{where}: steering_coefficient")
        hp, sae_id = row.get("hookpoint", ""), row.get("sae_id", "")
        sae, source = _resolve_row_sae(saes, sae_loader, loader, row["sparse_model"], hp, sae_id)
        sae.cfg.provenance = {
            **(sae.cfg.provenance or {}),
            "lm_eval": {"loader": loader, "sparse_model": row["sparse_model"], "sae_id": sae_id},
        }
        point = parse_hookpoint(hp) if hp else sae_point(sae)
        item: Intervention
        if action == "add":
            item = FeatureSteer(
                sae, [feature], "add", coefficient * float(sae.cfg.input_scale), layer=point, sae_source=source
            )
        else:
            item = DirectionClamp.from_sae_feature(sae, feature, coefficient, layer=point, sae_source=source)
        if point in by_point:
            warnings.warn(f"{where} replaces an earlier row at the same hookpoint, as lm-eval does", stacklevel=3)
        by_point[point] = item
        if row.get("description"):
            notes.append(row["description"])
    return Steering(
        list(by_point.values()), name=path.stem, description="; ".join(notes), metadata={"imported_from": str(path)}
    )


def _resolve_row_sae(saes, sae_loader, loader, sparse_model, hp, sae_id):
    for key in (f"{sparse_model}/{sae_id}" if sae_id else None, f"{sparse_model}/{hp}" if hp else None, sparse_model):
        if key and key in saes:
            return resolve_sae(saes[key], key if not isinstance(saes[key], (str, Path)) else None)
    if sae_loader is not None:
        return sae_loader(loader, sparse_model, hp, sae_id)
    return _default_sae_loader(loader, sparse_model, hp, sae_id)


def _import_pt(path: Path) -> Steering:
    from ..checks import number
    from ..sae.files import load_weights_only

    data = load_weights_only(path, "lm-eval steer file")
    if isinstance(data, list):  # an early format: a list of entries carrying their hookpoint
        if not all(isinstance(entry, dict) and isinstance(entry.get("hookpoint"), str) for entry in data):
            raise RefusalScopeError(
                f"{path} is not an lm-eval steering file", "a list holds {'hookpoint': ..., ...} entries"
            )
        data = {entry["hookpoint"]: entry for entry in data}
    if not isinstance(data, dict):
        raise RefusalScopeError(f"{path} is not an lm-eval steering file", "expected {hookpoint: {...}}")
    items: list[Intervention] = []
    for name, entry in data.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise RefusalScopeError(f"{path} is not an lm-eval steering file", "expected {hookpoint: {...}}")
        point = parse_hookpoint(name)
        if entry.get("head_index") is not None:
            raise RefusalScopeError(
                f"{path}: {name} steers one attention head", "refusalscope steers the residual stream only"
            )
        if not torch.is_tensor(entry.get("steering_vector")):
            raise RefusalScopeError(
                f"{path}: {name} has no steering_vector tensor",
                "expected {hookpoint: {'steering_vector': tensor, ...}}",
            )
        vector = entry["steering_vector"].float()
        coefficient = entry.get("steering_coefficient", 1.0)
        coefficient = number(
            coefficient.item() if torch.is_tensor(coefficient) and coefficient.numel() == 1 else coefficient,
            f"{path}: {name} steering_coefficient",
        )
        if entry.get("action", "add") == "add":
            items.append(ActAdd(vector, point, coefficient))
        elif entry["action"] == "clamp":
            bias = entry.get("bias")
            if bias is None and coefficient == 0.0:
                items.append(DirectionClamp(unit_vector(vector), point, 0.0))
            else:
                items.append(DirectionClamp(vector, point, coefficient, bias=bias))
        else:
            raise RefusalScopeError(f"{path}: unknown action '{entry['action']}' at {name}", "use add or clamp")
    return Steering(items, name=path.stem, metadata={"imported_from": str(path)})
