"""Train-once SAE presets for models that have no published SAEs (the embedded ones).

`quick` trains one SAE at about two thirds of the depth (where the refusal direction is
selected and read out: layer 15 of 24 on the default model, whose layer-16 quick SAE
reconstructed it best of the layers tried (cosine 0.82 then; 0.95 since the quick preset's
learning rate was raised for its short run), and whose refusal latents induce refusal when clamped,
which the layer-12 ones barely do) and fits harvest + training in about ten
minutes on a 2-core CPU; `standard` trains three SAEs spread over the middle of the model
in about 20 minutes (43.6 min before harvests ran in length-sorted batches; layer 16 alone
now takes 10.5 min: harvest 4.7, training 2.7). Results are cached under `$REFUSALSCOPE_CACHE/saes/<model>/<preset>/`
(harvest) and `…/<preset>/layer_<n>-<training key>/` (each SAE), keyed by the model's content
hash and by the training configuration, so the pipeline trains once and every later stage
loads the same SAEs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RefusalScopeError
from ..generations import cached_replies
from ..paths import atomic_file, cache_dir
from .activations import ActivationStore, Document, harvest
from .corpus import CorpusSpec, answer_prompts, build_corpus, shared_prefix_length, text_chunks
from .metrics import evaluate_sae
from .model import SAE
from .training import TrainConfig, train_sae, training_key

if TYPE_CHECKING:
    from ..models.chat import ChatModel


@dataclass
class Preset:
    name: str
    layer_fracs: tuple[float, ...]
    corpus: CorpusSpec
    train: TrainConfig
    description: str
    eval_docs: int = 16
    extra: dict = field(default_factory=dict)

    def layers(self, n_layers: int) -> list[int]:
        return sorted({min(n_layers - 1, round(f * n_layers)) for f in self.layer_fracs})


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        name="quick",
        layer_fracs=(0.65,),
        corpus=CorpusSpec(
            n_answer_harmful=24,
            n_answer_harmless=24,
            n_chat_harmful=150,
            n_chat_harmless=300,
            n_text_chunks=110,
            context_length=128,
            answer_tokens=40,
        ),
        # 440 steps: sparsify's large-run learning rate (5.7e-4 here) under-trains so short a
        # run (FVU 0.32, refusal-direction cosine 0.83); 4x the rate and 20 epochs instead of
        # 10 give FVU 0.22 and cosine 0.95 (benchmarks/sae_ablations.py)
        train=TrainConfig(
            architecture="topk", d_sae=2048, k=32, epochs=20, batch_size=1024, lr=2.3e-3, dead_tokens=60_000
        ),
        description="one layer at 65% depth, ~30k tokens, d_sae 2048, TopK k=32 (~10 min on 2 CPU cores for the default model)",
    ),
    "standard": Preset(
        name="standard",
        layer_fracs=(0.35, 0.5, 0.65),
        corpus=CorpusSpec(
            n_answer_harmful=96,
            n_answer_harmless=96,
            n_chat_harmful=260,
            n_chat_harmless=1100,
            n_text_chunks=520,
            context_length=128,
            answer_tokens=40,
        ),
        # the quick preset's finding applies here too: sparsify's large-run rate (4e-4 at d_sae 4096)
        # under-trains ~400 steps (FVU 0.26, refusal-direction cosine 0.84-0.87); 4x the rate and
        # 10 epochs (~470 steps of 2,048 rows), the quick preset's recipe at this batch
        train=TrainConfig(
            architecture="topk", d_sae=4096, k=32, epochs=10, batch_size=2048, lr=1.6e-3, dead_tokens=200_000
        ),
        description="three layers over the middle of the model, ~100k tokens, d_sae 4096, TopK k=32 (~20 min for the default model)",
    ),
}


def get_preset(name: str | Preset) -> Preset:
    """A preset by name; a Preset object (e.g. a custom size) is returned as is."""
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise RefusalScopeError(f"unknown SAE preset '{name}'", f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class TrainingData:
    """Prompts and text for harvest and evaluation, from refusalscope's dataset registry."""

    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]
    texts_train: list[str]
    texts_eval: list[str]


def _split_texts(items, eval_frac: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents (seeded) so that evaluation text is unseen."""
    import random

    texts = [item.text for item in items]
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(eval_frac * len(texts)))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


def load_training_data(data_dir: str | Path | None = None, seed: int = 0) -> TrainingData:
    """Refusal-direction splits (harmful/harmless) and ordinary text (WikiText-2, Tiny
    Shakespeare) from the dataset registry; a tenth of the text is held out for evaluation."""
    from ..data import load_dataset

    def prompts(name, split):
        return load_dataset(name, split, data_dir=data_dir).prompts

    wiki_train, wiki_eval = _split_texts(load_dataset("text/wikitext2", data_dir=data_dir), 0.1, seed)
    play_train, play_eval = _split_texts(load_dataset("text/tinyshakespeare", data_dir=data_dir), 0.1, seed)
    return TrainingData(
        harmful_train=prompts("harmful/refusal-direction", "train"),
        harmless_train=prompts("harmless/alpaca", "train"),
        harmful_val=prompts("harmful/refusal-direction", "val"),
        harmless_val=prompts("harmless/alpaca", "val"),
        texts_train=wiki_train + play_train,
        texts_eval=wiki_eval + play_eval,
    )


def preset_folder(chat: ChatModel, preset: Preset) -> Path:
    model_key = f"{chat.info.name}-{(chat.info.sha256 or 'nohash')[:12]}"
    return cache_dir() / "saes" / model_key / preset.name


def sae_folder_name(preset: Preset, layer: int) -> str:
    """`layer_<n>-<training key>`: a preset whose training changes (its TrainConfig or the
    trainer) gets a new folder beside the old one, while the harvest, which depends only
    on the corpus, stays shared."""
    return f"layer_{layer}-{training_key(preset.train)}"


def eval_corpora(
    chat: ChatModel, data: TrainingData, n_docs: int, context_length: int = 128
) -> dict[str, list[Document]]:
    prefix = shared_prefix_length(chat)
    chats = data.harmful_val[: n_docs // 2] + data.harmless_val[: n_docs - n_docs // 2]
    return {
        "text": text_chunks(chat, data.texts_eval, context_length, n_docs, seed=1),
        "chat": [Document(chat.encode(chat.format(p))[:context_length], "chat", skip=prefix) for p in chats],
    }


def preset_corpus(chat: ChatModel, preset: Preset, data: TrainingData, progress: bool = True) -> list[Document]:
    """The preset's harvest documents: chats with the model's own (cached) answers, bare
    requests and text chunks, built the same way wherever a preset's harvest is needed."""
    spec = preset.corpus
    wanted = answer_prompts(data.harmful_train, data.harmless_train, spec)
    replies = cached_replies(chat, wanted, max_new_tokens=spec.answer_tokens, batch_size=16, progress=progress)
    return build_corpus(
        chat, data.harmful_train, data.harmless_train, data.texts_train, spec, dict(zip(wanted, replies))
    )


def train_preset(
    chat: ChatModel,
    preset_name: str | Preset = "quick",
    data_dir: str | Path | None = None,
    layers: list[int] | None = None,
    force: bool = False,
    progress: bool = True,
    folder: Path | None = None,
) -> dict[int, SAE]:
    """Train (or load from the cache) the preset's SAEs for `chat`; returns {layer: SAE}."""
    from .io import load_sae, save_sae

    preset = get_preset(preset_name)
    layers = layers or preset.layers(chat.n_layers)
    for layer in layers:
        chat.hooks.module(layer)
    root = Path(folder) if folder else preset_folder(chat, preset)
    saes: dict[int, SAE] = {}
    missing = []
    for layer in layers:
        path = root / sae_folder_name(preset, layer)
        if (path / "cfg.json").is_file() and not force:
            saes[layer] = load_sae(path)
        else:
            missing.append(layer)
    if not missing:
        return saes

    data = load_training_data(data_dir)
    spec = preset.corpus
    started = time.perf_counter()
    documents = preset_corpus(chat, preset, data, progress=progress)
    harvest_dir = root / ("harvest-" + "-".join(str(layer) for layer in missing))
    store: ActivationStore = harvest(chat, documents, missing, harvest_dir, batch_size=16, progress=progress)
    harvest_seconds = time.perf_counter() - started
    corpora = eval_corpora(chat, data, preset.eval_docs)
    for layer in missing:
        meta = {"model_name": chat.info.name, "model_sha256": chat.info.sha256}
        name = sae_folder_name(preset, layer)
        result = train_sae(store, layer, replace(preset.train), root / f"{name}.training", meta, progress=progress)
        sae = result.sae
        metrics = evaluate_sae(chat, sae, corpora, data.harmful_val, data.harmless_val[: len(data.harmful_val)])
        sae.cfg.provenance.update(
            preset=preset.name,
            preset_description=preset.description,
            corpus=asdict(spec),
            harvest_seconds=harvest_seconds,
            harvest_tokens_per_second=store.manifest.rows / max(store.manifest.seconds, 1e-9),
            train_seconds=result.seconds,
            train_tokens_per_second=result.tokens_per_second,
            metrics=metrics.to_dict(),
        )
        save_sae(sae, root / name)
        sae.cfg.provenance["source"] = str(root / name)
        with atomic_file(root / name / "metrics.json") as handle:
            json.dump(metrics.to_dict(), handle, indent=2)
        saes[layer] = sae
    return saes
