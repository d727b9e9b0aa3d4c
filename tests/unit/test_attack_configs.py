"""Attack configurations: the --config option, and specs for another model refused."""

import pytest
import torch

from refusalscope.attacks import AttackConfig, check_steering_for, load_config
from refusalscope.attacks.configs import parse_config_option
from refusalscope.errors import RefusalScopeError
from refusalscope.steering import ActAdd, Steering

TINY_CHAT = dict(seed=9, n_layers=2, d_model=32)  # the `chat` fixture's model (tests/unit/conftest.py)


def test_config_option_forms():
    assert parse_config_option("steered=a/b.json") == ("steered", "a/b.json")
    assert parse_config_option("unsteered") == ("unsteered", None)
    assert parse_config_option("specs/gated-0.5.yaml") == ("gated-0.5", "specs/gated-0.5.yaml")
    with pytest.raises(RefusalScopeError, match="NAME=SPEC_FILE"):
        parse_config_option("=x.json")


def test_spec_for_another_model_is_refused_by_hash_or_by_name(chat, tmp_path):
    add = ActAdd(torch.ones(chat.d_model), 0, 1.0)
    check_steering_for(chat, Steering([add]))  # no model recorded: nothing to compare
    mine = Steering([add]).for_model(chat)
    check_steering_for(chat, mine)
    by_name = Steering([add], model={"name": "other", "spec": "other"})
    with pytest.raises(RefusalScopeError, match="written for other, not for tiny-llama"):
        check_steering_for(chat, by_name)
    path = Steering([add], model={"name": "other", "spec": "other"}).save(tmp_path / "other.json")
    with pytest.raises(RefusalScopeError, match="written for other"):
        load_config("other", path, chat)
    ok = load_config("mine", mine.save(tmp_path / "mine.json"), chat)
    assert ok.steering_id == mine.id and not ok.gated and ok.describe().startswith("mine: steering")


def test_spec_with_a_layer_the_model_lacks_is_refused(chat):
    with pytest.raises(RefusalScopeError, match="out of range"):
        check_steering_for(chat, Steering([ActAdd(torch.ones(chat.d_model), 7, 1.0)]))
    assert AttackConfig("unsteered").steering_id is None
