import os
from pathlib import Path

import pytest
import torch

# respect OMP_NUM_THREADS (e.g. 1 while other jobs share the machine); default: up to 2 threads
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data (or $REFUSALSCOPE_DATA): the public benchmark files tests read."""
    env = os.environ.get("REFUSALSCOPE_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(
            f"shared data folder {path} not found; set REFUSALSCOPE_DATA to the folder holding the benchmark files"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def tiny_llama():
    from refusalscope.testing import tiny_chat_model

    return tiny_chat_model("llama")


@pytest.fixture(scope="session")
def tiny_qwen():
    from refusalscope.testing import tiny_chat_model

    return tiny_chat_model("qwen2", seed=1)


@pytest.fixture(scope="session")
def qwen():
    """The embedded default model (converted once into the cache, then reused)."""
    from refusalscope import load_model

    return load_model("default", dtype="fp32", progress=False)


@pytest.fixture(scope="session")
def smol():
    from refusalscope import load_model

    return load_model("smollm2-135m-instruct", dtype="fp32", progress=False)


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


def pytest_report_header(config):
    """Say which dtype `auto` resolves to and which CPU flags decided it: the suite must pass
    either way (`REFUSALSCOPE_DTYPE=bf16|fp32` forces the other machine's choice)."""
    from refusalscope.provenance import environment

    env = environment()
    forced = os.environ.get("REFUSALSCOPE_DTYPE") or "not set"
    return (
        f"refusalscope: auto dtype = {env['auto_dtype']} (REFUSALSCOPE_DTYPE {forced}); "
        f"cpu {env['cpu']['model']} [{' '.join(env['cpu']['flags'])}], torch threads {env['threads']}"
    )
