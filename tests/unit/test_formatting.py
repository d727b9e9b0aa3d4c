"""Chat formatting through the tokenizer's template."""

import pytest

from refusalscope import RefusalScopeError
from refusalscope.testing import tiny_chat_model


def test_user_prompt_gets_the_generation_prompt(tiny_llama):
    text = tiny_llama.format("How do I bake bread?")
    assert text == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"


def test_system_prompt_and_multi_turn(tiny_llama):
    convo = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bake bread?"},
    ]
    text = tiny_llama.format(convo, system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert "<|im_start|>assistant\nHello!<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nBake bread?<|im_end|>\n<|im_start|>assistant\n")


def test_template_without_system_role_folds_it_into_the_first_turn():
    chat = tiny_chat_model("gemma2")
    text = chat.format("Hi", system="Be brief.")
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat.tokenizer.decode(chat.eoi_ids) == "<end_of_turn>\n<start_of_turn>model\n"


def test_malformed_conversations_are_rejected(tiny_llama):
    with pytest.raises(RefusalScopeError, match="role"):
        tiny_llama.format([{"text": "hi"}])
    with pytest.raises(RefusalScopeError, match="non-empty"):
        tiny_llama.format([])


def test_missing_chat_template_is_a_clear_error():
    chat = tiny_chat_model("llama")
    chat.tokenizer.chat_template = None
    with pytest.raises(RefusalScopeError, match="no chat template"):
        chat.format("hi")
