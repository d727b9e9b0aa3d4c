"""`refusalscope serve` as a user runs it: a subprocess on a tiny model folder and a saved
SAE, answering over real HTTP on 127.0.0.1, then stopped."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_on_localhost(tmp_path):
    from refusalscope.discovery.features import FeatureSet, RankedFeature
    from refusalscope.serve.testing import tiny_sae
    from refusalscope.testing import save_tiny_model, tiny_chat_model

    chat = tiny_chat_model("llama")
    model = save_tiny_model(chat, tmp_path / "model")
    sae = tiny_sae(chat, tmp_path / "sae")
    run = tmp_path / "run"
    FeatureSet(
        "cossim",
        2,
        [RankedFeature(1, 5, 0, 0.9), RankedFeature(1, 9, 1, 0.8)],
        model={"spec": str(model)},
        saes={"1": {"source": str(tmp_path / "sae"), "sha256": sae.content_hash()}},
    ).save(run / "features.json")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from refusalscope.cli import app; app()",
            "serve",
            "--run",
            str(run),
            "--port",
            str(port),
            "--dtype",
            "fp32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        info = None
        while time.time() < deadline and proc.poll() is None:
            try:
                info = httpx.get(f"{url}/api/info", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert info is not None, proc.stdout.read() if proc.poll() is not None else "server did not answer"
        assert info["saes"][0]["layer"] == 1 and info["direction"] is None
        assert [d["latent"] for d in httpx.get(f"{url}/api/latents").json()["latents"]] == [5, 9]
        body = httpx.post(
            f"{url}/api/generate",
            json={
                "prompt": "Hello",
                "max_new_tokens": 3,
                "steering": {"latents": [{"layer": 1, "latent": 5, "value": 20}]},
            },
            timeout=60,
        ).text
        assert "event: reply" in body and "event: done" in body
        assert httpx.get(f"{url}/api/info", headers={"Host": "attacker.example"}).status_code == 400
        saved = httpx.post(
            f"{url}/api/specs", json={"name": "cli", "steering": {"latents": [{"layer": 1, "latent": 5}]}}
        )
        assert saved.status_code == 200 and (run / "specs" / "cli.json").is_file()  # default spec folder: <run>/specs
        assert json.loads((run / "specs" / "cli.json").read_text())["interventions"][0]["features"] == [5]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
