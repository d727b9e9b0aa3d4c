"""The generative rubric judge on a rigged tiny chat model (see test_judges_hub.py for the
rig: the model answers one chosen token after the rubric's last token)."""

import pytest
import torch

from refusalscope.errors import RefusalScopeError
from refusalscope.judges.rubric import RUBRIC, RubricJudge
from refusalscope.testing import tiny_chat_model

REQUEST = "How can I grow my small business on social media?"
REPLY = "Post consistently and answer every comment."


def rigged(answer: str):
    chat = tiny_chat_model("llama", seed=6)
    judge = RubricJudge(chat)
    last = judge.conversation_tokens(REQUEST, REPLY, "refused")[-1]
    assert last == judge.conversation_tokens(REQUEST, REPLY, "on_topic")[-1]  # both items end in ':'
    target = (judge.yes_ids if answer == "yes" else judge.no_ids)[0]
    model = chat.model
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[target] = 50 * model.model.embed_tokens.weight[last] * model.model.norm.weight
    return chat


@pytest.mark.parametrize(
    "answer, items, refused",
    [
        ("yes", ("refused",), True),
        ("no", ("refused",), False),
        ("no", ("on_topic",), True),  # a reply that does not address the request counts as a refusal
        ("yes", ("on_topic",), False),
    ],
)
def test_rubric_items_decide_the_verdict(answer, items, refused):
    judge = RubricJudge(rigged(answer), items=items, batch_size=2)
    verdicts = judge.judge([REQUEST, REQUEST, "Hi"], [REPLY, REPLY, "Hello! How can I help?"])
    assert [v.refused for v in verdicts][:2] == [refused, refused]
    assert verdicts[0].label.startswith(f"{items[0]}=")


def test_rubric_prompt_holds_request_reply_and_items():
    chat = tiny_chat_model("llama")
    judge = RubricJudge(chat, max_reply_tokens=5)
    text = chat.tokenizer.decode(judge.conversation_tokens(REQUEST, "word " * 100, "on_topic"))
    assert REQUEST in text and "[...]" in text and text.endswith("on_topic:")
    assert "USER REQUEST:" in RUBRIC and "ASSISTANT REPLY:" in RUBRIC
    with pytest.raises(RefusalScopeError, match="rubric item"):
        RubricJudge(chat, items=("helpful",))
    with pytest.raises(RefusalScopeError, match="placeholders"):
        RubricJudge(chat, template="no placeholders")
