"""SAE harvest and training throughput, and SAE quality, against EleutherAI sparsify, in one run.

The `quick` preset (one layer at 65% depth, TopK, d_sae 2048, k 32) on one model:

1. Harvest. The preset's corpus is harvested once into the preset's cache folder with
   refusalscope's harvester (reused when it is already there). Then, side by side, on the
   first `--time-docs` documents split into chunks (order alternating per chunk, so load
   from other processes hits both alike), the same documents through
     - refusalscope's `harvest()` (memmaps, manifest + fsync per batch, outlier filter;
       documents batched by length, longest first),
     - a bare baseline: `register_forward_hook` on the same decoder layer that copies the
       output and raises to stop the forward, rows copied to a float16 numpy array, in
       corpus-order batches of 16 (and, as a variant, in length-sorted batches: the
       same batches as refusalscope's, so that column isolates refusalscope's overhead);
   tokens/s = tokens the model processed (real, non-padding tokens) / seconds.
2. Training, on the same cached rows (the same held-out documents left out, the same
   per-epoch permutations, the same batch size and number of steps):
     - refusalscope `train_sae` with the preset's TrainConfig;
     - sparsify's own `Trainer.fit` (its SparseCoder, loss, optimiser, dead-latent
       bookkeeping and decoder normalisation) fed the cached rows through a stand-in
       "model" whose only module is an embedding holding the activations, so sparsify's
       forward hook sees them as a layer output. sparsify trains on raw activations (no
       input normalisation, decoder bias set to the first batch's mean); its optimiser
       defaults (SignSGD + schedule-free, lr 5e-3/sqrt(d_sae/2^14)) are kept. Its 1.3.3
       default `auxk_alpha` is 0 (AuxK off); it is set to the preset's 1/32 and its dead
       threshold to the preset's `dead_tokens`, so both minimise FVU + AuxK/32.
   Training tokens/s is the median over epochs (timestamps after each optimiser step).
3. The sparsify SAE is converted to a refusalscope `SAE` (W_enc = encoder.weight.T,
   b_enc = encoder.bias, W_dec, b_dec as is) and its reconstruction is asserted equal to
   sparsify's own forward; both SAEs are then evaluated with `evaluate_sae` on the
   preset's evaluation corpora (FVU, L0, dead/dense latents, CE recovered and KL on text
   and chat, refusal-direction cosine).

    python benchmarks/sae_training.py --model smollm2            # a few minutes
    python benchmarks/sae_training.py                            # default model (~20+ min)
    python benchmarks/sae_training.py --model smollm2 --epochs 2 --time-docs 64

sparsify is an optional dependency: pip install eai-sparsify==1.3.3 torch==2.13.0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refusalscope import load_model
from refusalscope.sae import SAE, SAEConfig
from refusalscope.sae import training as rs_training
from refusalscope.sae.activations import ActivationStore, harvest
from refusalscope.sae.metrics import evaluate_sae
from refusalscope.sae.presets import eval_corpora, get_preset, load_training_data, preset_corpus, preset_folder
from refusalscope.sae.training import holdout_metrics, sparse_decode, split_rows, train_sae


# --------------------------------------------------------------------------- environment
def environment() -> dict:
    """refusalscope's provenance record, plus what makes CPU timings comparable."""
    from importlib import metadata

    from refusalscope.provenance import environment as provenance

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = provenance()
    for name in ("eai-sparsify", "schedulefree"):
        try:
            env["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env["versions"][name] = None
    return {
        **env,
        "cpu": cpu,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "os_cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


# --------------------------------------------------------------------------- harvest
class _Stop(Exception):
    pass


def layer_module(chat, layer: int) -> torch.nn.Module:
    """The decoder block, found without refusalscope's hook manager."""
    for path in ("model.layers", "model.model.layers", "transformer.h"):
        obj = chat.model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj[layer]
    raise RuntimeError("could not find the decoder layers")


@torch.no_grad()
def baseline_harvest(
    model, module, documents, d_model: int, pad_id: int, batch_size: int = 16
) -> tuple[np.ndarray, int]:
    """A bare forward hook that stops the forward; returns (float16 rows, tokens processed)."""
    capacity = sum(max(len(d.tokens) - d.skip, 0) for d in documents)
    out = np.empty((capacity, d_model), dtype=np.float16)
    captured = {}

    def hook(mod, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = module.register_forward_hook(hook)
    rows = tokens = 0
    try:
        for start in range(0, len(documents), batch_size):
            chunk = documents[start : start + batch_size]
            width = max(len(d.tokens) for d in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, d in enumerate(chunk):
                ids[r, width - len(d.tokens) :] = torch.tensor(d.tokens)
                mask[r, width - len(d.tokens) :] = 1
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            try:
                model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
            except _Stop:
                pass
            hidden = captured.pop("h")
            for r, d in enumerate(chunk):
                a = width - len(d.tokens) + d.skip
                n = width - a
                if n > 0:
                    out[rows : rows + n] = hidden[r, a:width].float().numpy()
                    rows += n
            tokens += int(mask.sum())
    finally:
        handle.remove()
    return out[:rows], tokens


def time_harvesters(
    chat, documents, layer: int, n_docs: int, chunk_docs: int, workdir: Path, variants: list[str]
) -> dict:
    """refusalscope's harvest() vs the bare hook, same documents and batches, interleaved."""
    docs = documents[:n_docs]
    chunks = [docs[i : i + chunk_docs] for i in range(0, len(docs), chunk_docs)]
    module = layer_module(chat, layer)
    pad_id = chat.tokenizer.pad_token_id if chat.tokenizer.pad_token_id is not None else 0
    extra = {"sdpa": "bare hook + sdpa", "sorted": "bare hook, sorted"}
    if chunk_docs <= 16:  # one batch per chunk: sorting within a chunk changes nothing
        variants = [v for v in variants if v != "sorted"]
    names = ["refusalscope", "bare hook"] + [extra[v] for v in variants]
    rates = {name: [] for name in names}
    seconds = {name: 0.0 for name in names}
    tokens = {name: 0 for name in names}
    max_diff = None
    attn = getattr(chat.model.config, "_attn_implementation", None)
    for i, chunk in enumerate(chunks):
        n_tok = sum(len(d.tokens) for d in chunk)
        order = names if i % 2 == 0 else names[::-1]
        results = {}
        for name in order:
            started = time.perf_counter()
            if name == "refusalscope":
                store = harvest(chat, chunk, [layer], workdir / f"chunk_{i}", batch_size=16, progress=False)
                elapsed = time.perf_counter() - started
                # harvest() runs documents longest first: put its rows back in corpus order
                results[name] = np.asarray(store.layer(layer))[np.argsort(store.documents(), kind="stable")]
            else:
                if name.endswith("sdpa"):
                    chat.model.set_attn_implementation("sdpa")
                    started = time.perf_counter()
                try:
                    batches = sorted(chunk, key=lambda d: -len(d.tokens)) if name.endswith("sorted") else chunk
                    rows, n_tok_b = baseline_harvest(chat.model, module, batches, chat.d_model, pad_id)
                finally:
                    if name.endswith("sdpa"):
                        chat.model.set_attn_implementation(attn)
                elapsed = time.perf_counter() - started
                assert n_tok_b == n_tok
                results[name] = rows
            rates[name].append(n_tok / elapsed)
            seconds[name] += elapsed
            tokens[name] += n_tok
        ours, base = results["refusalscope"], results["bare hook"]
        if ours.shape == base.shape:  # no outliers dropped: the rows must agree
            diff = float(np.abs(ours.astype(np.float32) - base.astype(np.float32)).max())
            max_diff = diff if max_diff is None else max(max_diff, diff)
    out = {
        "documents": len(docs),
        "chunks": len(chunks),
        "tokens": tokens["refusalscope"],
        "padded_fraction": padded_fraction(docs, 16),
        "padded_fraction_sorted_chunks": statistics.mean(
            padded_fraction(sorted(c, key=lambda d: -len(d.tokens)), 16) for c in chunks
        ),
        "max_abs_diff_rows": max_diff,
        "attn_implementation": attn,
    }
    for name in names:
        out[name] = {
            "median_tok_s": statistics.median(rates[name]),
            "overall_tok_s": tokens[name] / seconds[name],
            "chunk_tok_s": rates[name],
        }
    return out


def padded_fraction(documents, batch_size: int) -> float:
    """Share of the computed positions that are padding, for the harvest's batching."""
    real = padded = 0
    for start in range(0, len(documents), batch_size):
        lens = [len(d.tokens) for d in documents[start : start + batch_size]]
        real += sum(lens)
        padded += max(lens) * len(lens)
    return 1 - real / padded


# --------------------------------------------------------------------------- training
def epoch_rates(before: list[float], after: list[float], steps_per_epoch: int, batch_size: int) -> list[float]:
    """tokens/s per epoch from per-step (start, end) timestamps."""
    rates = []
    for e in range(len(after) // steps_per_epoch):
        first, last = e * steps_per_epoch, (e + 1) * steps_per_epoch - 1
        start = before[0] if e == 0 else after[first - 1]
        rates.append(steps_per_epoch * batch_size / (after[last] - start))
    return rates


def train_refusalscope(store, layer, cfg, meta, workdir: Path) -> dict:
    before, after = [], []
    original = rs_training.Trainer.step

    def timed(self, x):
        before.append(time.perf_counter())
        stats = original(self, x)
        after.append(time.perf_counter())
        return stats

    rs_training.Trainer.step = timed
    try:
        result = train_sae(store, layer, replace(cfg), workdir / "refusalscope", meta, progress=False)
    finally:
        rs_training.Trainer.step = original
    n_train = len(split_rows(store.documents(), cfg.holdout_frac, cfg.seed)[0])
    steps_per_epoch = n_train // cfg.batch_size
    rates = epoch_rates(before, after, steps_per_epoch, cfg.batch_size)
    return {
        "sae": result.sae,
        "steps": result.steps,
        "tokens": result.tokens_seen,
        "seconds": result.seconds,
        "overall_tok_s": result.tokens_per_second,
        "median_tok_s": statistics.median(rates),
        "epoch_tok_s": rates,
        "input_scale": result.sae.cfg.provenance.get("input_scale"),
    }


class CachedActivations(torch.nn.Module):
    """A stand-in 'model' for sparsify's Trainer: input ids are row indices into a cache.

    sparsify hooks `base_model.<hookpoint>`; hooking `embed` hands its hook the cached
    activations [batch, seq, d] exactly as a decoder layer's output would.
    """

    def __init__(self, acts: torch.Tensor):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(acts, freeze=True)

    @property
    def base_model(self):
        return self

    @property
    def device(self):
        return self.embed.weight.device

    @property
    def dummy_inputs(self):
        return {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    def forward(self, input_ids, **kwargs):
        return self.embed(input_ids)


class RowOrder(torch.utils.data.Dataset):
    """Fixed-length 'sequences' of row indices, in a given order (sparsify does not shuffle)."""

    def __init__(self, order: torch.Tensor, seq_len: int):
        self.order = order.view(-1, seq_len)

    def __len__(self):
        return self.order.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.order[i]}


def train_sparsify(store, layer, cfg, workdir: Path, optimizer: str, normalise: bool) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify import TrainConfig as SpTrainConfig
    from sparsify import Trainer as SpTrainer

    torch.manual_seed(cfg.seed)
    acts = store.layer(layer)
    train_idx, _ = split_rows(store.documents(), cfg.holdout_frac, cfg.seed)
    x_all = torch.from_numpy(np.asarray(acts, dtype=np.float32))
    scale = 1.0
    if normalise:  # refusalscope's normalisation, E‖x‖ = √d over the training rows
        scale = math.sqrt(x_all.shape[1]) / float(x_all[torch.from_numpy(train_idx)].norm(dim=-1).mean())
        x_all = x_all * scale
    # the same rows, permutations and step count as refusalscope's train_sae
    n_train = len(train_idx)
    steps_per_epoch = n_train // cfg.batch_size
    train_rows = torch.from_numpy(train_idx)
    epochs = []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        epochs.append(train_rows[perm[: steps_per_epoch * cfg.batch_size]])
    seq_len = math.gcd(cfg.batch_size, 64)
    dataset = RowOrder(torch.cat(epochs), seq_len)
    model = CachedActivations(x_all)
    sp_cfg = SpTrainConfig(
        SparseCoderConfig(activation="topk", num_latents=cfg.d_sae, k=cfg.k),
        batch_size=cfg.batch_size // seq_len,  # in sequences
        optimizer=optimizer,
        auxk_alpha=cfg.aux_coeff,
        dead_feature_threshold=cfg.dead_tokens,
        hookpoints=["embed"],
        init_seeds=[cfg.seed],
        log_to_wandb=False,
        save_every=10**9,
        save_dir=str(workdir / "sparsify"),
        run_name=optimizer,
    )
    precision = torch.get_float32_matmul_precision()
    trainer = SpTrainer(sp_cfg, dataset, model)
    before, after = [], []
    model.register_forward_pre_hook(lambda mod, args: before.append(time.perf_counter()))
    for opt in trainer.optimizers:
        step = opt.step

        def timed_step(*args, _step=step, **kwargs):
            out = _step(*args, **kwargs)
            after.append(time.perf_counter())
            return out

        opt.step = timed_step
    started = time.perf_counter()
    trainer.fit()  # also saves (schedule-free: the averaged weights) at the end
    seconds = time.perf_counter() - started
    torch.set_float32_matmul_precision(precision)  # fit() sets "high" process-wide
    after = after[:: len(trainer.optimizers)]
    rates = epoch_rates(before, after, steps_per_epoch, cfg.batch_size)
    train_seconds = after[-1] - before[0]
    coder = SparseCoder.load_from_disk(workdir / "sparsify" / optimizer / "embed")
    return {
        "coder": coder,
        "scale": scale,
        "steps": trainer.global_step,
        "tokens": trainer.global_step * cfg.batch_size,
        "seconds": train_seconds,
        "fit_seconds": seconds,
        "overall_tok_s": trainer.global_step * cfg.batch_size / train_seconds,
        "median_tok_s": statistics.median(rates),
        "epoch_tok_s": rates,
        "config": {k: v for k, v in asdict(sp_cfg).items() if k not in ("hookpoints", "save_dir", "run_name")},
    }


@torch.no_grad()
def sparsify_to_refusalscope(coder, scale: float, layer: int, meta: dict) -> SAE:
    """sparsify SparseCoder → refusalscope SAE; x̂ identical (asserted by the caller)."""
    assert coder.cfg.activation == "topk" and not coder.cfg.transcode and coder.W_skip is None
    sae = SAE(
        SAEConfig(
            d_in=coder.d_in,
            d_sae=coder.num_latents,
            architecture="topk",
            k=coder.cfg.k,
            layer=layer,
            input_scale=scale,
            provenance={"trainer": "sparsify"},
            **meta,
        )
    )
    sae.W_enc.copy_(coder.encoder.weight.T)  # nn.Linear weight is [d_sae, d_in]
    sae.b_enc.copy_(coder.encoder.bias)
    sae.W_dec.copy_(coder.W_dec)  # [d_sae, d_in]: decode is embedding_bag over its rows
    sae.b_dec.copy_(coder.b_dec)
    sae.fold_input_scale()
    sae.requires_grad_(False)
    return sae


@torch.no_grad()
def check_conversion(coder, sae: SAE, scale: float, x: torch.Tensor) -> float:
    ref = coder(x * scale).sae_out / scale
    recon, f = sae(x)
    err = float((ref - recon).norm() / ref.norm())
    assert err < 1e-5, f"converted sparsify SAE differs from sparsify's forward (relative error {err:.2e})"
    top = coder.encode(x * scale)
    ours = set(map(tuple, torch.nonzero(f).tolist()))
    theirs = {(r, int(i)) for r in range(x.shape[0]) for i, v in zip(top.top_indices[r], top.top_acts[r]) if v > 0}
    assert ours == theirs, "converted SAE activates different latents"
    return err


# --------------------------------------------------------------------------- decoder microbenchmark
def decoder_backward(d_sae: int, d_in: int, k: int, batch: int, repeats: int = 5) -> dict:
    """Forward+backward of the k-sparse decode: torch embedding_bag (what sparsify runs on
    CPU) against refusalscope's sparse_decode (embedding_bag forward, dense GEMM backward)."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(d_sae, d_in, generator=gen, requires_grad=True)
    idx = torch.stack([torch.randperm(d_sae, generator=gen)[:k] for _ in range(batch)])
    vals = torch.rand(batch, k, generator=gen, requires_grad=True)
    grad = torch.randn(batch, d_in, generator=gen)
    fns = {
        "embedding_bag": lambda: F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum"),
        "refusalscope sparse_decode": lambda: sparse_decode(idx, vals, weight),
    }
    out = {}
    for name, fn in fns.items():
        times = []
        for _ in range(repeats + 1):
            weight.grad = vals.grad = None
            t = time.perf_counter()
            fn().backward(grad)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times[1:]) * 1e3
    return out


# --------------------------------------------------------------------------- report
def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def print_table(title: str, columns: list[str], rows: list[tuple[str, list]], ratio: bool = True) -> None:
    head = ["", *columns] + (["ratio"] if ratio else [])
    body = []
    for label, values in rows:
        cells = [fmt(v) for v in values]
        if ratio:
            a, b = values[0], values[1]
            cells.append(f"{a / b:.2f}" if a is not None and b not in (None, 0) else "-")
        body.append([label, *cells])
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        print("| " + " | ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model spec (default, smollm2, ...)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layer", type=int, default=None, help="default: the quick preset's layer")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's (20)")
    parser.add_argument("--time-docs", type=int, default=128, help="documents timed side by side (0: skip)")
    parser.add_argument("--chunk-docs", type=int, default=32, help="documents per timed chunk")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["sdpa", "sorted"],
        choices=["sdpa", "sorted"],
        help="extra bare-hook harvests: with SDPA attention; with length-sorted batches",
    )
    parser.add_argument("--sparsify-optimizer", nargs="+", default=["signum"], choices=["signum", "adam"])
    parser.add_argument(
        "--sparsify-normalise",
        action="store_true",
        help="feed sparsify refusalscope's normalised inputs (default: raw, as sparsify does)",
    )
    parser.add_argument("--no-eval", action="store_true", help="skip evaluate_sae (model forwards)")
    parser.add_argument(
        "--eval-docs",
        type=int,
        default=None,
        help="evaluation documents (default: the preset's 32)",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--harvest-dir",
        default=None,
        help="harvest folder (default: the quick preset's cache folder, shared with train-sae)",
    )
    parser.add_argument("--json", default=None, help="also write all numbers to this file")
    args = parser.parse_args()

    try:
        import sparsify  # noqa: F401
    except ImportError:
        sys.exit("sparsify is not installed: pip install eai-sparsify==1.3.3 torch==2.13.0")

    env = environment()
    print("environment:", json.dumps(env, indent=1))
    preset = get_preset("quick")
    cfg = replace(preset.train)
    if args.epochs:
        cfg.epochs = args.epochs
    chat = load_model(args.model, dtype=args.dtype, progress=False)
    layer = args.layer if args.layer is not None else preset.layers(chat.n_layers)[0]
    print(
        f"model {chat.info.name} ({chat.n_layers} layers, d_model {chat.d_model}, {chat.dtype}), layer {layer}, "
        f"train config {asdict(cfg)}"
    )
    data = load_training_data(args.data_dir)
    started = time.perf_counter()
    documents = preset_corpus(chat, preset, data, progress=True)
    corpus_seconds = time.perf_counter() - started  # mostly the model's answers, when not cached
    results: dict = {
        "environment": env,
        "model": chat.info.name,
        "layer": layer,
        "train_config": asdict(cfg),
        "corpus_seconds": corpus_seconds,
        "documents": len(documents),
    }

    # 1. harvest: once into the cache, then timed side by side on a subset
    folder = Path(args.harvest_dir) if args.harvest_dir else preset_folder(chat, preset) / f"harvest-{layer}"
    cached = (folder / "harvest.json").is_file() and ActivationStore(folder).manifest.complete
    started = time.perf_counter()
    store = harvest(chat, documents, [layer], folder, batch_size=16, progress=True)
    m = store.manifest
    processed = sum(len(d.tokens) for d in documents)
    results["harvest"] = {
        "folder": str(folder),
        "reused_cache": cached,
        "seconds_this_run": time.perf_counter() - started,
        "manifest_seconds": m.seconds,
        "tokens_processed": processed,
        "rows": m.rows,
        "rows_dropped_prefix": m.rows_dropped_prefix,
        "rows_dropped_outlier": m.rows_dropped_outlier,
        "tok_s_full": processed / max(m.seconds, 1e-9),
        "padded_fraction": padded_fraction(documents, 16),
        "padded_fraction_sorted": padded_fraction(sorted(documents, key=lambda d: -len(d.tokens)), 16),
    }
    print(
        f"harvest {'reused from' if cached else 'written to'} {folder}: {processed} tokens processed, {m.rows} rows "
        f"stored ({m.rows_dropped_prefix} prefix, {m.rows_dropped_outlier} outlier rows left out), "
        f"{processed / max(m.seconds, 1e-9):.0f} tok/s when it was made; padding {results['harvest']['padded_fraction']:.0%} "
        f"of computed positions in its batches of 16 ({results['harvest']['padded_fraction_sorted']:.0%} if sorted by length)"
    )
    with tempfile.TemporaryDirectory(prefix="sae-bench-") as tmp:
        tmp = Path(tmp)
        if args.time_docs:
            h = time_harvesters(
                chat,
                documents,
                layer,
                args.time_docs,
                args.chunk_docs,
                tmp / "harvest",
                args.variants,
            )
            results["harvest_side_by_side"] = h
            print(
                f"side by side on {h['documents']} documents ({h['tokens']} tokens, {h['chunks']} chunks, "
                f"{h['padded_fraction']:.0%} padding, {h['padded_fraction_sorted_chunks']:.0%} sorted): "
                f"refusalscope vs bare-hook rows max |diff| {h['max_abs_diff_rows']}"
            )

        # 2. training on the same cached rows
        meta = {"model_name": chat.info.name, "model_sha256": chat.info.sha256}
        print("training refusalscope TopK ...", flush=True)
        ours = train_refusalscope(store, layer, cfg, meta, tmp)
        print(
            f"  {ours['steps']} steps, {ours['tokens']} tokens, {ours['seconds']:.1f} s, "
            f"epochs {[round(r) for r in ours['epoch_tok_s']]} tok/s"
        )
        theirs = {}
        for opt in args.sparsify_optimizer:
            print(f"training sparsify SparseCoder ({opt}) ...", flush=True)
            t = train_sparsify(store, layer, cfg, tmp, opt, args.sparsify_normalise)
            t["sae"] = sparsify_to_refusalscope(t["coder"], t["scale"], layer, meta)
            rows = torch.from_numpy(np.asarray(store.layer(layer)[:256], dtype=np.float32))
            t["conversion_rel_err"] = check_conversion(t["coder"], t["sae"], t["scale"], rows)
            print(
                f"  {t['steps']} steps, {t['tokens']} tokens, {t['seconds']:.1f} s, epochs "
                f"{[round(r) for r in t['epoch_tok_s']]} tok/s; conversion rel. error {t['conversion_rel_err']:.1e}"
            )
            theirs[opt] = t
    micro = decoder_backward(cfg.d_sae, chat.d_model, cfg.k, cfg.batch_size)
    results["decoder_fwd_bwd_ms"] = micro

    # holdout FVU on cached rows (cheap) and evaluate_sae (model forwards)
    acts = store.layer(layer)
    _, hold_idx = split_rows(store.documents(), cfg.holdout_frac, cfg.seed)
    x_hold = torch.from_numpy(np.asarray(acts[hold_idx], dtype=np.float32))
    saes = {"refusalscope": ours["sae"], **{f"sparsify ({o})": t["sae"] for o, t in theirs.items()}}
    holdout = {name: holdout_metrics(sae, x_hold) for name, sae in saes.items()}
    metrics = {}
    if not args.no_eval:
        corpora = eval_corpora(chat, data, args.eval_docs or preset.eval_docs)
        for name, sae in saes.items():
            print(f"evaluating {name} ...", flush=True)
            started = time.perf_counter()
            metrics[name] = evaluate_sae(
                chat, sae, corpora, data.harmful_val, data.harmless_val[: len(data.harmful_val)]
            )
            print(f"  {time.perf_counter() - started:.0f} s")

    # tables
    h = results.get("harvest_side_by_side")
    if h:
        names = [n for n in ("refusalscope", "bare hook", "bare hook + sdpa", "bare hook, sorted") if n in h]
        print_table(
            f"Harvest, {chat.info.name} layer {layer}, {h['documents']} docs / {h['tokens']} tokens, batch 16 "
            f"(attention: {h['attn_implementation']}; model tokens/s, ratio = refusalscope / bare hook)",
            names,
            [
                ("median tok/s over chunks", [h[n]["median_tok_s"] for n in names]),
                ("overall tok/s", [h[n]["overall_tok_s"] for n in names]),
            ],
        )
    columns = list(saes)
    train = [ours, *theirs.values()]

    def metric(fn):
        return [fn(metrics[n]) if n in metrics else None for n in columns]

    bare = h["bare hook"]["median_tok_s"] if h else None
    rows = [
        (
            "harvest tok/s (sparsify: bare hook)",
            [h["refusalscope"]["median_tok_s"] if h else None] + [bare] * len(theirs),
        ),
        ("train tok/s (median epoch)", [t["median_tok_s"] for t in train]),
        ("train tok/s (overall)", [t["overall_tok_s"] for t in train]),
        ("train steps × batch", [t["tokens"] for t in train]),
        ("holdout FVU (cached rows)", [holdout[n]["fvu"] for n in columns]),
        ("FVU", metric(lambda m: m.fvu)),
        ("L0", metric(lambda m: m.l0)),
        ("dead %", metric(lambda m: 100 * m.dead_frac)),
        ("dense % (>10% of tokens)", metric(lambda m: 100 * m.dense_frac)),
        ("CE recovered, text", metric(lambda m: m.ce_recovered.get("text"))),
        ("CE recovered, chat", metric(lambda m: m.ce_recovered.get("chat"))),
        ("KL, text", metric(lambda m: m.kl.get("text"))),
        ("KL, chat", metric(lambda m: m.kl.get("chat"))),
        ("refusal-direction cosine", metric(lambda m: m.refusal_cosine)),
    ]
    print_table(
        f"quick preset, {chat.info.name} layer {layer}: TopK d_sae {cfg.d_sae}, k {cfg.k}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs (ratio = refusalscope / first sparsify column)",
        columns,
        rows,
    )
    shape = f"batch {cfg.batch_size}, k {cfg.k}, d_sae {cfg.d_sae}, d_in {chat.d_model}"
    print(f"\ndecoder forward+backward, ms ({shape}):", {k: round(v, 1) for k, v in micro.items()})
    print("load average at the end:", os.getloadavg())

    if args.json:
        results["training"] = {
            "refusalscope": {k: v for k, v in ours.items() if k != "sae"},
            **{f"sparsify ({o})": {k: v for k, v in t.items() if k not in ("sae", "coder")} for o, t in theirs.items()},
        }
        results["holdout"] = holdout
        results["metrics"] = {n: m.to_dict() for n, m in metrics.items()}
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
