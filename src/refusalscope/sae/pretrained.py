"""Pretrained SAE releases: names, where they live on the Hugging Face hub, how to read them.

The registry is data (`resources/pretrained_saes.json`), following SAELens's release
names and in-repo paths so that `"gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"`
means the same SAE in both tools. Files are fetched with `huggingface_hub.hf_hub_download`,
the hub's own code path: with network access it downloads once into the hub cache; offline
(`HF_HUB_OFFLINE=1`) it serves the cached snapshot, so runs are reproducible and the commit
of every loaded file is recorded in the SAE's provenance.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import RefusalScopeError
from .layouts import load_local
from .model import SAE

REGISTRY_FILE = "pretrained_saes.json"


@dataclass(frozen=True)
class Release:
    name: str
    format: str
    repo_id: str
    model: str
    files: tuple[str, ...]
    saes: dict[str, dict[str, Any]]
    site: str = "resid_post"
    norm_scaling_factor: float | None = None
    notes: str = ""


def _expand(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Explicit `saes` plus those a `template` ({layer} in id and path) generates."""
    saes = dict(entry.get("saes") or {})
    template = entry.get("template")
    if template:
        for layer in template["layers"]:
            saes[template["id"].format(layer=layer)] = {
                "path": template["path"].format(layer=layer),
                "layer": layer,
            }
    return saes


@lru_cache(maxsize=1)
def registry() -> dict[str, Release]:
    text = resources.files("refusalscope.resources").joinpath(REGISTRY_FILE).read_text()
    releases = {}
    for name, entry in json.loads(text).items():
        if name.startswith("_"):
            continue
        releases[name] = Release(
            name=name,
            format=entry["format"],
            repo_id=entry["repo_id"],
            model=entry["model"],
            files=tuple(entry["files"]),
            saes=_expand(entry),
            site=entry.get("site", "resid_post"),
            norm_scaling_factor=entry.get("norm_scaling_factor"),
            notes=entry.get("notes", ""),
        )
    return releases


def known_releases() -> list[str]:
    return sorted(registry())


def release_ids(release: str) -> list[str]:
    return list(_release(release).saes)


def split_pretrained(source: str) -> tuple[str, str] | None:
    """('release', 'sae_id') if `source` starts with a known release name, else None.

    SAE ids contain slashes (`layer_12/width_16k/canonical`), so the release is everything
    before the first slash.
    """
    release, _, sae_id = source.partition("/")
    if release not in registry():
        return None
    if not sae_id:
        ids = release_ids(release)
        raise RefusalScopeError(
            f"'{source}' names a release but not an SAE in it",
            f"write '{release}/<sae_id>', e.g. '{release}/{ids[0]}' ({len(ids)} ids; see release_ids('{release}'))",
        )
    return release, sae_id


def _release(release: str) -> Release:
    releases = registry()
    if release not in releases:
        close = difflib.get_close_matches(release, releases, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise RefusalScopeError(
            f"unknown pretrained SAE release '{release}'",
            f"{hint}known releases: {', '.join(sorted(releases))}",
        )
    return releases[release]


def _entry(release: Release, sae_id: str) -> dict[str, Any]:
    if sae_id not in release.saes:
        ids = list(release.saes)
        close = difflib.get_close_matches(sae_id, ids, n=3)
        shown = ", ".join(ids[:8]) + (f", … ({len(ids)} in all)" if len(ids) > 8 else "")
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RefusalScopeError(f"release '{release.name}' has no SAE '{sae_id}'", f"{hint}known ids: {shown}")
    return release.saes[sae_id]


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename=filename, revision=revision))
    except LocalEntryNotFoundError as exc:
        raise RefusalScopeError(
            f"{repo_id}/{filename} is not in the local Hugging Face cache and the hub cannot be reached",
            "connect to the internet once (the file is cached afterwards), or download the SAE and pass its folder",
        ) from exc
    except EntryNotFoundError as exc:
        raise RefusalScopeError(
            f"the hub repository {repo_id} has no file {filename}",
            "the release moved; pass a local folder instead",
        ) from exc
    except GatedRepoError as exc:
        raise RefusalScopeError(
            f"{repo_id} is gated on the hub",
            "accept its terms on huggingface.co and run `hf auth login`",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RefusalScopeError(
            f"the hub has no repository {repo_id}", "the release moved; pass a local folder instead"
        ) from exc
    except HfHubHTTPError as exc:
        raise RefusalScopeError(
            f"the Hugging Face hub refused {repo_id}/{filename}: {exc}",
            "retry, or pass a local folder",
        ) from exc


def _commit(path: Path) -> str | None:
    """The snapshot commit a cached hub file belongs to (…/snapshots/<commit>/…)."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def load_pretrained(
    release: str,
    sae_id: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    model: Any = None,
    revision: str | None = None,
) -> SAE:
    """Fetch (or find in the hub cache) one SAE of a registered release and load it.

    The model name, layer and site come from the registry, which is authoritative where a
    format's own files say nothing (GemmaScope and Llama Scope files do not name the model).
    """
    rel = _release(release)
    entry = _entry(rel, sae_id)
    local = [_download(rel.repo_id, f"{entry['path']}/{name}", revision) for name in rel.files]
    target = local[0] if rel.format == "gemmascope" else local[0].parent
    sae = load_local(
        target,
        device=device,
        dtype=dtype,
        fmt=rel.format,
        norm_scaling_factor=rel.norm_scaling_factor,
    )
    cfg = sae.cfg
    cfg.model_name = rel.model
    if entry.get("layer") is not None:
        cfg.layer, cfg.site = int(entry["layer"]), entry.get("site", rel.site)
        if cfg.site == "resid_post":
            cfg.hook_name = cfg.hook_name or f"blocks.{cfg.layer}.hook_resid_post"
    cfg.provenance = {
        **cfg.provenance,
        "release": rel.name,
        "sae_id": sae_id,
        "repo_id": rel.repo_id,
        "path": entry["path"],
        "revision": _commit(local[0]),
    }
    if model is not None:
        sae.check_model(model)
    return sae
