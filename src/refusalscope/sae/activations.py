"""Harvest residual activations once, into a memory-mapped on-disk cache, and reuse them.

Running the model is by far the most expensive part of SAE training on a CPU (≈100–500
tokens/s here, against thousands of tokens/s for the SAE itself), so activations are
computed once per (model, layer set, corpus) and stored as float16 `.npy` memmaps, one per
layer, next to the token ids and document ids they came from. Several SAEs, epochs and
runs read the same harvest.

The harvest is resumable: documents are processed in a fixed order and the manifest
records, after every batch and with an fsync, how many documents and rows are complete.
Killing it loses at most the batch in flight.

Which positions are kept: position 0 and the chat-template prefix shared by every
conversation (the default system prompt, identical in every row) carry no information
and position 0 has a norm ~100× the rest; tokens whose norm exceeds `outlier_factor` ×
the median (the "massive activations" some models put on a few delimiter tokens) would
dominate any squared-error loss. Both are left out, and the fraction left out is recorded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RefusalScopeError

if TYPE_CHECKING:
    from ..models.chat import ChatModel

MANIFEST = "harvest.json"


@dataclass
class Document:
    """One sequence to run through the model; `skip` leading tokens are not stored."""

    tokens: list[int]
    kind: str  # chat | chat_answer | text
    skip: int = 1


@dataclass
class HarvestManifest:
    model: dict
    layers: list[int]
    d_model: int
    n_documents: int
    capacity: int
    plan_hash: str
    dtype: str = "float16"
    outlier_factor: float = 10.0
    median_norms: dict | None = None
    documents_done: int = 0
    rows: int = 0
    rows_dropped_outlier: int = 0
    rows_dropped_prefix: int = 0
    seconds: float = 0.0
    complete: bool = False
    # "length": documents run longest first, so a batch of 16 wastes ~1% of its positions
    # on padding instead of ~50% in corpus order (1.5x the harvest tokens/s, measured in
    # benchmarks/sae_training.py); "given": corpus order (harvests written before that)
    order: str = "given"

    def save(self, folder: Path) -> None:
        tmp = folder / f".{MANIFEST}.tmp"
        with open(tmp, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> "HarvestManifest":
        return cls(**json.loads((folder / MANIFEST).read_text()))


def plan_hash(documents: Sequence[Document], layers: Sequence[int], model_id: str) -> str:
    import hashlib

    digest = hashlib.sha256(model_id.encode())
    digest.update(json.dumps(sorted(layers)).encode())
    for doc in documents:
        digest.update(np.asarray(doc.tokens, dtype=np.int64).tobytes())
        digest.update(f"{doc.kind}:{doc.skip};".encode())
    return digest.hexdigest()


class ActivationStore:
    """Read access to a finished (or partial) harvest: rows of one layer, with token ids."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not (self.folder / MANIFEST).is_file():
            raise RefusalScopeError(
                f"{self.folder} holds no activation harvest ({MANIFEST} missing)",
                "run the harvest first (refusalscope train-sae does it)",
            )
        self.manifest = HarvestManifest.load(self.folder)

    @property
    def rows(self) -> int:
        return self.manifest.rows

    def layer(self, layer: int) -> np.ndarray:
        """[rows, d_model] float16 memmap of one layer (only completed rows)."""
        if layer not in self.manifest.layers:
            raise RefusalScopeError(
                f"layer {layer} is not in this harvest (layers {self.manifest.layers})",
                "harvest that layer, or train on one of the harvested layers",
            )
        array = np.load(self.folder / f"layer_{layer}.npy", mmap_mode="r")
        return array[: self.rows]

    def tokens(self) -> np.ndarray:
        return np.load(self.folder / "tokens.npy", mmap_mode="r")[: self.rows]

    def documents(self) -> np.ndarray:
        """Document index of each row (for top-activating contexts)."""
        return np.load(self.folder / "doc_index.npy", mmap_mode="r")[: self.rows]

    def kinds(self) -> list[str]:
        return json.loads((self.folder / "kinds.json").read_text())


def _open(path: Path, shape, dtype, create: bool):
    if create:
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    return np.load(path, mmap_mode="r+")


def harvest(
    chat: ChatModel,
    documents: Sequence[Document],
    layers: Sequence[int],
    folder: str | Path,
    batch_size: int = 16,
    outlier_factor: float = 10.0,
    progress: bool = True,
) -> ActivationStore:
    """Run `documents` through `chat`, storing residual activations at `layers`.

    One forward pass serves all layers and stops after the deepest one. Documents run in
    batches of similar length (longest first, so memory peaks at once); rows record
    their document's index in `documents`. Resumes an interrupted harvest of the same plan
    in `folder`; refuses to mix plans.
    """
    if not documents:
        raise RefusalScopeError("the harvest corpus is empty", "give at least one document")
    layers = sorted(set(int(layer) for layer in layers))
    for layer in layers:
        chat.hooks.module(layer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = plan_hash(documents, layers, chat.info.id)
    capacity = sum(max(len(d.tokens) - d.skip, 0) for d in documents)
    create = True
    if (folder / MANIFEST).is_file():
        manifest = HarvestManifest.load(folder)
        if manifest.plan_hash != digest:
            raise RefusalScopeError(
                f"{folder} holds a harvest of a different model, layer set or corpus",
                "use another folder, or delete this one to start over",
            )
        if manifest.complete:
            return ActivationStore(folder)
        create = False
    else:
        manifest = HarvestManifest(
            model=chat.info.to_dict(),
            layers=layers,
            d_model=chat.d_model,
            n_documents=len(documents),
            capacity=capacity,
            plan_hash=digest,
            outlier_factor=outlier_factor,
            order="length",
        )
        (folder / "kinds.json").write_text(json.dumps(sorted({d.kind for d in documents})))
    arrays = {
        layer: _open(folder / f"layer_{layer}.npy", (capacity, chat.d_model), np.float16, create) for layer in layers
    }
    tokens_out = _open(folder / "tokens.npy", (capacity,), np.int32, create)
    docs_out = _open(folder / "doc_index.npy", (capacity,), np.int32, create)
    if create:
        manifest.save(folder)

    if manifest.order == "length":  # stable: equal lengths keep corpus order
        order = sorted(range(len(documents)), key=lambda i: -len(documents[i].tokens))
    else:
        order = list(range(len(documents)))
    started = time.perf_counter() - manifest.seconds
    start_doc = manifest.documents_done
    bar = tqdm(total=len(documents), initial=start_doc, desc="harvesting activations", unit="doc", disable=not progress)
    processed_tokens = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(start_doc, len(documents), batch_size):
            chunk_index = order[start : start + batch_size]
            chunk = [documents[i] for i in chunk_index]
            batch = chat.pad([d.tokens for d in chunk], chunk_index)
            captured = chat.run_until(batch, layers)  # stops after the deepest layer
            width = batch.input_ids.shape[1]
            keep_rows = []
            for row, doc in enumerate(chunk):
                n = len(doc.tokens)
                if n > doc.skip:
                    keep_rows.append((row, width - n + doc.skip, width))
            if manifest.median_norms is None:
                manifest.median_norms = {
                    str(layer): float(
                        torch.cat([captured[layer][r, a:b] for r, a, b in keep_rows]).norm(dim=-1).median()
                    )
                    for layer in layers
                }
            for (row, a, b), doc_index in zip(keep_rows, [chunk_index[r] for r, _, _ in keep_rows]):
                mask = torch.ones(b - a, dtype=torch.bool)
                for layer in layers:
                    norms = captured[layer][row, a:b].norm(dim=-1)
                    mask &= norms <= outlier_factor * manifest.median_norms[str(layer)]
                n_keep = int(mask.sum())
                manifest.rows_dropped_outlier += (b - a) - n_keep
                lo, hi = manifest.rows, manifest.rows + n_keep
                for layer in layers:
                    arrays[layer][lo:hi] = captured[layer][row, a:b][mask].float().cpu().numpy().astype(np.float16)
                tokens_out[lo:hi] = batch.input_ids[row, a:b][mask].cpu().numpy()
                docs_out[lo:hi] = doc_index
                manifest.rows = hi
            manifest.rows_dropped_prefix += sum(min(d.skip, len(d.tokens)) for d in chunk)
            processed_tokens += int(batch.attention_mask.sum())
            for array in (*arrays.values(), tokens_out, docs_out):
                array.flush()
            manifest.documents_done = start + len(chunk)
            manifest.seconds = time.perf_counter() - started
            manifest.save(folder)
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{processed_tokens / (time.perf_counter() - t0):.0f}", rows=manifest.rows)
    bar.close()
    manifest.complete = True
    manifest.save(folder)
    return ActivationStore(folder)
