"""Fixtures shared by the unit tests: tiny random chat models built in the test, seconds each."""

import pytest
import torch


@pytest.fixture(scope="module")
def chat(request):
    """A tiny random chat model, fresh for each test module (so hooks, caches or weight edits
    of one module never reach another). The default is `tiny_chat_model("llama")`; a module
    that needs another one says so with a module-level `TINY_CHAT`, the keyword arguments of
    `refusalscope.testing.tiny_chat_model`, e.g. `TINY_CHAT = dict(family="qwen2", seed=4)`."""
    from refusalscope.testing import tiny_chat_model

    return tiny_chat_model(**getattr(request.module, "TINY_CHAT", {}))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny models gain nothing from a second thread, and on a shared, busy machine two spinning
    OpenMP threads make each matmul ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def optimize_ws(tmp_path, monkeypatch):
    """A folder for `refusalscope optimize` bad-input tests: a valid refusal direction in
    direction/, a private cache, and model loading replaced by a failure, so a test that passes
    proves its error came before any model loaded."""
    import refusalscope.models as models
    import refusalscope.models.loading as loading
    from refusalscope.direction import RefusalDirection

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(loading, "load_model", boom)
    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    raw = torch.randn(8)
    RefusalDirection(1, -1, raw, raw.expand(2, 1, 8).clone(), [5], {}).save(tmp_path / "direction")
    return tmp_path
