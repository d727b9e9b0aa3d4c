"""Tiny randomly initialised chat models, for tests that must run in seconds.

They have real tokenizers (a byte-level BPE trained here on a few sentences) and real
chat templates, so everything that touches formatting, padding, hooks and generation is
exercised exactly as with a real model, only smaller.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from .models.chat import ChatModel
    from .probes.linear import LinearProbe
    from .sae.presets import Preset

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
_CORPUS = [
    "I'm sorry, but I can't help with that request.",
    "Sure! Here is a short poem about the sea and the sky.",
    "How do I bake bread? Mix flour, water, salt and yeast.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Write a python function that reverses a list of numbers.",
    "Explain how photosynthesis works in simple terms.",
] * 20


def tiny_tokenizer(template: str = CHATML, vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    eos = "<end_of_turn>" if template is GEMMA else "<|im_end|>"
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token=eos, padding_side="left"
    )
    wrapped.chat_template = template
    return wrapped


def tiny_config(
    family: str, vocab_size: int, eos_id: int, pad_id: int, n_layers: int = 4, d_model: int = 64
) -> PretrainedConfig:
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "qwen2":
        return transformers.Qwen2Config(**common)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=None)
    if family == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=16, query_pre_attn_scalar=16, sliding_window=64)
    if family == "phi3":
        return transformers.Phi3Config(**common, original_max_position_embeddings=256)
    raise ValueError(f"no tiny config for {family}")


def tiny_chat_model(
    family: str = "llama", seed: int = 0, n_layers: int = 4, d_model: int = 64, dtype: torch.dtype = torch.float32
) -> ChatModel:
    """A ChatModel with random weights of the given family (a few hundred kB)."""
    import transformers

    from .models.attention import register
    from .models.chat import ChatModel

    template = GEMMA if family.startswith("gemma") else CHATML
    tokenizer = tiny_tokenizer(template)
    config = tiny_config(
        family, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, n_layers=n_layers, d_model=d_model
    )
    config._attn_implementation = register()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=register())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval().requires_grad_(False)
    return ChatModel(model, tokenizer, {"name": f"tiny-{family}", "source": "tiny", "spec": f"tiny-{family}"})


def save_tiny_model(chat: ChatModel, folder: Path) -> Path:
    """Write a tiny ChatModel as a transformers folder (safetensors), e.g. for hub-layout tests."""
    folder = Path(folder)
    chat.model.save_pretrained(folder, safe_serialization=True)
    chat.tokenizer.save_pretrained(folder)
    return folder


# prompts of very different lengths: batches of them are heavily left-padded, which is what
# batch-invariance and KV-cache tests need to exercise
MIXED_LENGTH_PROMPTS = [
    "Hello there",
    "Write a poem about the sea and the sky, please",
    "How do I bake bread?",
    "Explain photosynthesis",
    "The capital of France",
    "Write a python function that reverses a list of numbers and prints it",
]


def tiny_sae_preset() -> Preset:
    """An SAE preset at toy sizes (one layer at half depth, a few hundred tokens, d_sae 128,
    TopK k 8, 2 epochs): what the tiny end-to-end pipeline tests train in seconds."""
    from .sae.corpus import CorpusSpec
    from .sae.presets import Preset
    from .sae.training import TrainConfig

    return Preset(
        name="tiny",
        layer_fracs=(0.5,),
        corpus=CorpusSpec(
            n_answer_harmful=4,
            n_answer_harmless=4,
            n_chat_harmful=8,
            n_chat_harmless=8,
            n_text_chunks=8,
            context_length=48,
            answer_tokens=6,
        ),
        train=TrainConfig(architecture="topk", d_sae=128, k=8, epochs=2, batch_size=128, dead_tokens=2_000),
        description="toy sizes for the pipeline tests",
        eval_docs=4,
    )


def minimal_pair_refusal_tasks(chat: ChatModel) -> list:
    """The sweep tasks the tiny sweep tests share: first-token refusal on the built-in harmful
    minimal pairs (with a reply check every 3 items, refusal tokens "I" and "Sorry") and two
    example replies on the benign ones, 4 tokens each, so a test exercises scoring, checks and
    generation in seconds."""
    from .evaluation.grid import TaskSpec
    from .evaluation.tasks import RefusalTask

    refusal_ids = [chat.encode("I")[0], chat.encode("Sorry")[0]]
    return [
        TaskSpec(
            RefusalTask(
                "pairs-harmful",
                "builtin/minimal-pairs",
                "harmful",
                refusal_token_ids=refusal_ids,
                check_every=3,
                max_new_tokens=4,
            ),
            7,
        ),
        TaskSpec(RefusalTask("examples", "builtin/minimal-pairs", "benign", max_new_tokens=4), 3),
    ]


def dense_harm_probe(
    chat: ChatModel, harmful: list[str], harmless: list[str], layer: int, name: str, *, threshold: bool = True
) -> LinearProbe:
    """A dense residual probe at `layer`, fitted on `harmful` (1) vs `harmless` (0) prompts and
    recording `name` and the model it was trained on, as `refusalscope probes` saves its gate
    probe: the probe-gate tests (sweeps, optimize) gate steering with it. `threshold` sets the
    probe's threshold to its best on the training prompts (else the fit's default)."""
    import numpy as np

    from .probes import FeatureSpec, best_threshold, fit_probe
    from .probes.features import ResidualBank

    prompts = list(harmful) + list(harmless)
    x = ResidualBank(chat, prompts, [layer]).dense(layer, prompts)
    y = np.array([1] * len(harmful) + [0] * len(harmless))
    probe = fit_probe(FeatureSpec("dense", layer), x, y, cv=3)
    if threshold:
        probe.threshold = best_threshold(probe.decision_function(x), y)
    probe.info.update(name=name, model=chat.info.to_dict())
    return probe
