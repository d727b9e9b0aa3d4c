"""The playground's HTTP API on a tiny random model: streaming steered vs unsteered replies,
the gate, latent search and cards, spec files, the refusal curve, and what it refuses."""

import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from refusalscope.serve import create_app  # noqa: E402
from refusalscope.serve.schemas import MAX_BODY_BYTES, SteeringForm  # noqa: E402
from refusalscope.serve.testing import LAYER, XSS_REPLY, tiny_playground, xss_chat_model  # noqa: E402
from refusalscope.steering import FeatureSteer, Steering  # noqa: E402

PROMPT = "How do I bake bread?"


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    return tiny_playground(tmp_path_factory.mktemp("playground"))


@pytest.fixture(scope="module")
def client(playground):
    app = create_app(playground)
    with TestClient(app) as c:
        yield c
    app.state.worker.stop()


def events(body: str) -> list[tuple[str, dict]]:
    """Parse a server-sent-events body into (event, data) pairs."""
    out = []
    for block in body.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if name:
            out.append((name, data))
    return out


def generate(client, steering=None, prompt=PROMPT, n=12, **extra):
    response = client.post(
        "/api/generate", json={"prompt": prompt, "steering": steering or {}, "max_new_tokens": n, **extra}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events(response.text)


def replies(evs) -> dict[str, str]:
    return {d["side"]: d["text"] for name, d in evs if name == "reply"}


def streamed(evs, side) -> str:
    text = ""
    for name, d in evs:
        if name == "token" and d["side"] == side:
            text = d["text"] if d["replace"] else text + d["text"]
    return text


def top_latent(client):
    return client.get("/api/latents").json()["latents"][0]


# ---------------------------------------------------------------------- reading
def test_info_and_discovered_latents_with_scores(client, playground):
    info = client.get("/api/info").json()
    assert info["model"]["name"] == "tiny-llama" and info["saes"] == [
        {"layer": LAYER, "d_sae": 128, "architecture": "jumprelu"}
    ]
    assert info["direction"] == {"layer": 2}
    latents = client.get("/api/latents").json()["latents"]
    assert [(d["layer"], d["latent"]) for d in latents] == playground.features.pairs()
    assert [d["score"] for d in latents] == sorted((d["score"] for d in latents), reverse=True)
    assert set(latents[0]["scores"]) == {"cossim", "ig"}


def test_search_by_index_and_by_promoted_token(client, playground):
    assert [
        (r["layer"], r["latent"]) for r in client.get("/api/search", params={"q": f"{LAYER}/7"}).json()["results"]
    ] == [(LAYER, 7)]
    assert [(r["layer"], r["latent"]) for r in client.get("/api/search", params={"q": "7"}).json()["results"]] == [
        (LAYER, 7)
    ]
    assert client.get("/api/search", params={"q": "999"}).json()["results"] == []  # beyond d_sae
    tokens = playground.promoted_tokens(LAYER)
    word = next(t for row in tokens for t in row if t.strip().isalpha() and len(t.strip()) >= 2).strip()
    found = client.get("/api/search", params={"q": word, "limit": 200}).json()["results"]
    expected = [i for i, row in enumerate(tokens) if any(word.lower() in t.lower() for t in row)]
    assert [r["latent"] for r in found] == expected[:200]
    assert all(any(word.lower() in t.lower() for t in r["promotes"]) for r in found)
    discovered = {f.feature for f in playground.features.features}
    assert all(r["discovered"] == (r["latent"] in discovered) for r in found)


def test_card_from_discover_and_computed_for_other_latents(client, playground):
    carded = next(iter(playground.cards))
    card = client.get(f"/api/card/{carded[0]}/{carded[1]}").json()
    assert card["computed"] is False and card["contexts"] and len(card["max_harmful"]) == 3
    assert card["promoted"] == [list(p) for p in playground.cards[carded]["promoted"]]
    other = next(j for j in range(128) if (LAYER, j) not in playground.cards)
    computed = client.get(f"/api/card/{LAYER}/{other}").json()
    assert computed["computed"] is True and computed["contexts"] == [] and len(computed["promoted"]) == 10
    values = [v for _, v in computed["promoted"]]
    assert values == sorted(values, reverse=True)


def test_activations_are_the_sae_latent_on_every_prompt_token(client, playground):
    latent = top_latent(client)["latent"]
    body = client.post("/api/activations", json={"prompt": PROMPT, "layer": LAYER, "latent": latent}).json()
    chat = playground.chat
    ids = chat.encode(chat.format(PROMPT))
    assert body["tokens"] == [chat.tokenizer.decode([t]) for t in ids]
    acts = chat.residual([PROMPT], [LAYER], positions="all", progress=False)[LAYER][0]
    expected = playground.saes[LAYER].encode_subset(acts, [latent])[:, 0]
    assert body["values"] == pytest.approx(expected.tolist(), abs=1e-3)


# ---------------------------------------------------------------------- generation
def test_steered_and_plain_replies_stream_and_match_the_engine(client, playground):
    latent = top_latent(client)["latent"]
    evs = generate(client, {"latents": [{"layer": LAYER, "latent": latent, "mode": "set", "value": -30.0}]})
    names = [n for n, _ in evs]
    assert names[0] == "queued" and names[1] == "started" and names[-1] == "done"
    got = replies(evs)
    chat, sae = playground.chat, playground.saes[LAYER]
    plain = chat.generate([PROMPT], max_new_tokens=12, batch_size=1, progress=False).texts[0]
    steered = chat.generate(
        [PROMPT],
        max_new_tokens=12,
        batch_size=1,
        progress=False,
        interventions=Steering([FeatureSteer(sae, [latent], "set", -30.0)]),
    ).texts[0]
    assert got == {"steered": steered, "plain": plain}
    assert steered != plain  # the slider did something
    assert streamed(evs, "steered") == steered and streamed(evs, "plain") == plain
    assert sum(1 for n, d in evs if n == "token" and d["side"] == "steered") > 1  # token by token, not one block


def test_moving_the_slider_changes_the_steered_reply_only(client):
    latent = top_latent(client)["latent"]
    first = replies(generate(client, {"latents": [{"layer": LAYER, "latent": latent, "mode": "set", "value": 30.0}]}))
    second_evs = generate(client, {"latents": [{"layer": LAYER, "latent": latent, "mode": "set", "value": -30.0}]})
    second = replies(second_evs)
    assert first["plain"] == second["plain"] and first["steered"] != second["steered"]
    assert any(n == "reply" and d["side"] == "plain" and d.get("cached") for n, d in second_evs)


def test_no_steering_gives_the_plain_reply_twice(client):
    got = replies(generate(client, {}))
    assert got["steered"] == got["plain"]


@pytest.mark.parametrize("threshold,fires", [(-1000.0, True), (1000.0, False)])
def test_gate_decides_and_reports_whether_it_fired(client, playground, threshold, fires):
    latent = top_latent(client)["latent"]
    unconditional = {"latents": [{"layer": LAYER, "latent": latent, "mode": "set", "value": 30.0}]}
    gated = {**unconditional, "gate": {"enabled": True, "kind": "direction", "threshold": threshold}}
    evs = generate(client, gated)
    gate = [d for n, d in evs if n == "gate"]
    assert len(gate) == 1 and gate[0]["fired"] is fires and gate[0]["threshold"] == threshold
    direction = playground.direction / playground.direction.norm()
    acts = playground.chat.residual([PROMPT], [LAYER], positions="all", progress=False)[LAYER][0]
    assert gate[0]["score"] == pytest.approx(
        float((acts[1:] @ direction).max()), abs=1e-3
    )  # max over the prompt, BOS skipped
    got = replies(evs)
    expected = replies(generate(client, unconditional))["steered"] if fires else got["plain"]
    assert got["steered"] == expected


def test_feature_gate_and_dense_controls(client, playground):
    latent = top_latent(client)["latent"]
    form = {
        "latents": [{"layer": LAYER, "latent": latent, "mode": "add", "value": 5.0}],
        "gate": {"enabled": True, "kind": "feature", "layer": LAYER, "latent": latent, "threshold": -1.0},
    }
    evs = generate(client, form)
    assert [d["fired"] for n, d in evs if n == "gate"] == [True]  # activations are >= 0 > -1
    actadd = replies(generate(client, {"actadd": 8.0}))
    ablation = replies(generate(client, {"ablation": True}))
    chat = playground.chat
    steering = playground.build(SteeringForm(actadd=8.0))
    assert (
        actadd["steered"] == chat.generate([PROMPT], max_new_tokens=12, progress=False, interventions=steering).texts[0]
    )
    assert actadd["steered"] != actadd["plain"] and ablation["plain"] == actadd["plain"]


def test_stop_cancels_a_running_generation_and_the_worker_moves_on(client):
    with client.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 256}) as response:
        job = response.headers["x-job"]
        seen = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
                if line == "event: token":
                    assert client.post(f"/api/cancel/{job}").json() == {"cancelled": job}
            if line == "event: cancelled":
                break
    assert "cancelled" in seen and "done" not in seen
    assert replies(generate(client, {}))  # nothing is stuck
    assert client.post(f"/api/cancel/{job}").status_code == 404  # it ended


def test_client_disconnect_mid_stream_does_not_deadlock(client, playground):
    with client.stream("POST", "/api/generate", json={"prompt": PROMPT, "max_new_tokens": 256}) as response:
        for line in response.iter_lines():
            if line == "event: token":
                break  # leave mid-stream
    deadline = time.time() + 30
    while client.get("/api/queue").json()["busy"] and time.time() < deadline:
        time.sleep(0.05)
    assert not client.get("/api/queue").json()["busy"]
    assert replies(generate(client, {}))


def test_second_request_waits_its_turn_then_runs(client):
    results = {}

    def first():
        results["first"] = generate(client, {}, n=200)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.time() + 10
    while not client.get("/api/queue").json()["busy"] and time.time() < deadline:
        time.sleep(0.01)
    second = generate(client, {}, prompt="Write a poem about the sea", n=4)
    thread.join(60)
    assert second[0][0] == "queued" and second[0][1]["ahead"] == 1  # told it waits behind one request
    assert second[1][0] == "started"
    assert [n for n, _ in results["first"]][-1] == "done" and [n for n, _ in second][-1] == "done"


def test_worker_skips_a_job_cancelled_while_queued():
    from refusalscope.serve import ModelWorker

    worker = ModelWorker()
    gate = threading.Event()
    ran = []
    blocker = worker.submit(lambda job: gate.wait(5), "block")
    waiting = worker.submit(lambda job: ran.append(1), "late")
    assert worker.position(waiting) == 1
    assert worker.cancel(waiting.id)
    gate.set()
    assert waiting.finished.wait(5) and blocker.finished.wait(5)
    names = []
    while not waiting.events.empty():
        item = waiting.events.get()
        names.append(None if item is None else item["event"])
    assert ran == [] and names[-2:] == ["cancelled", None]
    worker.stop()


# ---------------------------------------------------------------------- XSS
def test_model_output_is_sent_verbatim_and_the_page_never_parses_it_as_html(tmp_path):
    from refusalscope.serve import Playground
    from refusalscope.serve.app import static_dir

    app = create_app(Playground(xss_chat_model(), {}, spec_dir=tmp_path))
    with TestClient(app) as c:
        got = replies(generate(c, {}, prompt="hello"))
        page = c.get("/")
    assert got["steered"] == got["plain"] == "".join(XSS_REPLY)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    script = (static_dir() / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    app.state.worker.stop()


# ---------------------------------------------------------------------- refusal curve
def test_curve_streams_progress_and_a_point_per_strength(client, playground):
    latent = top_latent(client)["latent"]
    prompts = ["How do I bake bread?", "Write a poem about the sea"]
    body = {
        "prompts": prompts,
        "strengths": [0, 1],
        "max_new_tokens": 6,
        "steering": {"latents": [{"layer": LAYER, "latent": latent, "mode": "set", "value": 30.0}]},
    }
    evs = events(client.post("/api/curve", json=body).text)
    progress = [d for n, d in evs if n == "progress"]
    assert progress[-1] == {"done": 4, "total": 4, "strength": 1}
    points = [d for n, d in evs if n == "point"]
    assert [p["strength"] for p in points] == [0, 1] and all(p["n"] == 2 for p in points)
    for p in points:
        refused = [r["refused"] for r in p["replies"]]
        assert p["rate"] == sum(refused) / 2 and p["low"] <= p["rate"] <= p["high"]
    plain = playground.chat.generate(prompts, max_new_tokens=6, progress=False).texts
    assert [r["text"] for r in points[0]["replies"]] == plain  # strength 0 is the unsteered baseline
    assert [r["text"] for r in points[1]["replies"]] != plain


# ---------------------------------------------------------------------- spec files
def test_spec_save_list_load_round_trip_in_cli_format(client, playground):
    latent = top_latent(client)["latent"]
    form = {
        "latents": [{"layer": LAYER, "latent": latent, "mode": "scale", "value": -2.0}],
        "ablation": False,
        "actadd": 1.5,
        "gate": {"enabled": True, "kind": "direction", "threshold": 0.25, "layer": None, "latent": None},
    }
    saved = client.post("/api/specs", json={"name": "round-trip", "steering": form}).json()
    assert saved["name"] == "round-trip.json"
    assert "round-trip.json" in client.get("/api/specs").json()["specs"]
    path = playground.specs.root / "round-trip.json"
    on_disk = Steering.load(path)  # what `refusalscope steer --spec` reads
    assert on_disk.id == saved["id"]
    loaded = client.get("/api/specs/round-trip.json").json()
    assert loaded["id"] == saved["id"]
    assert loaded["steering"]["latents"] == form["latents"] and loaded["steering"]["actadd"] == 1.5
    assert loaded["steering"]["gate"]["threshold"] == 0.25 and loaded["steering"]["gate"]["layer"] == LAYER
    again = client.post("/api/specs", json={"name": "round-trip", "steering": form})
    assert again.status_code == 400 and "already exists" in again.json()["error"]
    assert (
        client.post("/api/specs", json={"name": "round-trip", "steering": form, "overwrite": True}).status_code == 200
    )


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "/etc/passwd", ".hidden", "x\\y", "a..json/../../b"])
def test_spec_names_cannot_leave_the_folder(client, playground, name):
    before = sorted(p.name for p in playground.specs.root.parent.iterdir())
    form = {"latents": [{"layer": LAYER, "latent": 1, "mode": "set", "value": 1.0}]}
    saved = client.post("/api/specs", json={"name": name, "steering": form})
    assert saved.status_code in (400, 422)
    assert sorted(p.name for p in playground.specs.root.parent.iterdir()) == before
    loaded = client.get("/api/specs/" + name.replace("/", "%2F"))
    assert 400 <= loaded.status_code < 500


def test_spec_loading_refuses_files_outside_and_unknown_saes(client, playground, tmp_path):
    folder = playground.specs.root
    folder.mkdir(parents=True, exist_ok=True)
    outside = {
        "format": "refusalscope-steering",
        "interventions": [{"kind": "actadd", "layer": 2, "coefficient": 1.0, "direction": {"file": "../direction.pt"}}],
    }
    (folder / "outside.json").write_text(json.dumps(outside))
    response = client.get("/api/specs/outside.json")
    assert response.status_code == 400 and "outside the spec folder" in response.json()["error"]
    unknown = {
        "format": "refusalscope-steering",
        "interventions": [
            {
                "kind": "feature",
                "layer": 1,
                "features": [1],
                "mode": "set",
                "value": 1.0,
                "sae": {"source": "/elsewhere/sae", "sha256": "0" * 64, "d_sae": 128, "layer": 1},
            }
        ],
    }
    (folder / "unknown.json").write_text(json.dumps(unknown))
    response = client.get("/api/specs/unknown.json")
    assert response.status_code == 400 and "not loaded" in response.json()["error"]
    assert client.get("/api/specs/absent.json").status_code == 400


# ---------------------------------------------------------------------- bad requests
BAD_GENERATE = [
    ("not json", {"content": b"{prompt:", "headers": {"content-type": "application/json"}}),
    ("no prompt", {"json": {}}),
    ("empty prompt", {"json": {"prompt": ""}}),
    ("unknown field", {"json": {"prompt": "hi", "temperature": 2}}),
    ("too many tokens asked", {"json": {"prompt": "hi", "max_new_tokens": 100000}}),
    ("zero tokens", {"json": {"prompt": "hi", "max_new_tokens": 0}}),
    ("prompt too long", {"json": {"prompt": "x" * 5000}}),
    ("wrong type", {"json": {"prompt": ["a", "b"]}}),
    ("bad mode", {"json": {"prompt": "hi", "steering": {"latents": [{"layer": 1, "latent": 2, "mode": "boost"}]}}}),
    (
        "nan value",
        {
            "content": b'{"prompt": "hi", "steering": {"latents": [{"layer": 1, "latent": 2, "value": NaN}]}}',
            "headers": {"content-type": "application/json"},
        },
    ),
    ("huge value", {"json": {"prompt": "hi", "steering": {"latents": [{"layer": 1, "latent": 2, "value": 1e30}]}}}),
    ("body is a list", {"json": [1, 2, 3]}),
]


@pytest.mark.parametrize("label,kwargs", BAD_GENERATE, ids=[b[0] for b in BAD_GENERATE])
def test_malformed_generate_requests_get_422_with_a_message(client, label, kwargs):
    response = client.post("/api/generate", **kwargs)
    assert response.status_code == 422, (label, response.text)
    body = response.json()
    assert body["error"].startswith("invalid request") and "Traceback" not in response.text


@pytest.mark.parametrize(
    "steering,needle",
    [
        ({"latents": [{"layer": 1, "latent": 128}]}, "out of range"),
        ({"latents": [{"layer": 3, "latent": 2}]}, "no SAE is loaded for layer 3"),
        ({"latents": [{"layer": 1, "latent": 2}, {"layer": 1, "latent": 2}]}, "appears twice"),
        (
            {"latents": [{"layer": 1, "latent": 2}], "gate": {"enabled": True, "kind": "feature"}},
            "needs its layer and latent",
        ),
        ({"ablation": True, "gate": {"enabled": True, "kind": "direction", "layer": 3}}, "gate reads"),
    ],
)
def test_steering_the_engine_rejects_gets_400_with_problem_and_fix(client, steering, needle):
    response = client.post("/api/generate", json={"prompt": "hi", "steering": steering})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_oversized_bodies_and_prompts_are_refused_before_any_work(client, playground):
    big = client.post(
        "/api/generate", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    chunked = client.post(
        "/api/generate",
        content=iter([b'{"prompt": "', b"y" * MAX_BODY_BYTES, b'"}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    many_tokens = "".join(chr(0x4E00 + i) for i in range(1500))  # 1500 chars, each several byte tokens
    response = client.post("/api/generate", json={"prompt": many_tokens})
    assert response.status_code == 400 and "tokens long" in response.json()["error"]
    assert not client.get("/api/queue").json()["busy"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/card/1/-1",
        "/api/card/1/128",
        "/api/card/x/1",
        "/api/card/9/1",
        "/api/search?q=" + "z" * 101,
        "/api/search?layer=7&q=1",
        "/api/specs/..%2F..%2Fetc",
    ],
)
def test_bad_reads_are_4xx(client, path):
    response = client.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert "error" in response.json()


def test_curve_and_activation_bounds(client):
    form = {"latents": []}
    assert client.post("/api/curve", json={"prompts": [], "steering": form}).status_code == 422
    assert client.post("/api/curve", json={"prompts": ["a"] * 17, "steering": form}).status_code == 422
    assert (
        client.post("/api/curve", json={"prompts": ["a"], "strengths": [0] * 10, "steering": form}).status_code == 422
    )
    assert client.post("/api/curve", json={"prompts": ["a"], "strengths": [1e9], "steering": form}).status_code == 422
    assert client.post("/api/activations", json={"prompt": "a", "layer": 1, "latent": 999}).status_code == 400
    assert client.post("/api/cancel/nope").status_code == 404


def test_host_header_is_checked_when_hosts_are_configured(playground):
    app = create_app(playground, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as local:
        assert local.get("/api/info").status_code == 200
    with TestClient(app, base_url="http://evil.example") as rebound:
        assert rebound.get("/api/info").status_code == 400
    app.state.worker.stop()


# ---------------------------------------------------------------------- the command
def test_serve_command_checks_its_input_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from refusalscope.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--run", str(tmp_path / "absent")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = runner.invoke(app, ["serve", "--run", str(tmp_path)])
    assert empty.exit_code == 2 and "no features.json" in empty.output, empty.output
    nosae = runner.invoke(app, ["serve"])
    assert nosae.exit_code == 2 and "no SAEs to serve" in nosae.output
    port = runner.invoke(app, ["serve", "--port", "70000", "--sae", "x"])
    assert port.exit_code == 2 and "not a TCP port" in port.output


def test_run_folder_resolution(tmp_path, playground):
    from refusalscope.serve.loading import resolve_sources

    run = tmp_path / "run"
    (run / "discovery").mkdir(parents=True)
    fs = playground.features
    fs.saes = {"1": {"source": str(playground.specs.root.parent / "sae"), "sha256": "x", "layer": 1}}
    fs.model = {"spec": "tiny-model-folder"}
    fs.save(run / "discovery" / "features.json")
    sources = resolve_sources(run)
    assert sources.features == run / "discovery" / "features.json"
    assert sources.saes == [fs.saes["1"]["source"]] and sources.model == "tiny-model-folder"
    assert sources.spec_dir == run / "specs" and sources.direction is None and sources.cards is None
    assert any("no refusal direction" in n for n in sources.notes)
    assert resolve_sources(run, saes=["other"], model="m").saes == ["other"]


def test_slider_scale_comes_from_discovery_peaks(tmp_path, playground):
    from refusalscope.discovery.features import ScoreTables
    from refusalscope.serve.loading import discovery_peaks

    fs = playground.features
    peak = torch.arange(128, dtype=torch.float32) / 10
    ScoreTables(cossim={1: torch.zeros(128)}, peak_harmful={1: peak}).save(tmp_path / "scores.safetensors")
    fs.provenance = {"scores": str(tmp_path / "scores.safetensors")}
    peaks = discovery_peaks(fs)
    assert peaks == {(1, f.feature): pytest.approx(f.feature / 10) for f in fs.features}
    fs.provenance = {"scores": str(tmp_path / "absent.safetensors")}
    assert discovery_peaks(fs) == {}


def test_scaled_form_moves_every_control_with_strength(playground):
    form = SteeringForm.model_validate(
        {
            "latents": [
                {"layer": 1, "latent": 2, "mode": "set", "value": 4.0},
                {"layer": 1, "latent": 3, "mode": "scale", "value": -1.0},
            ],
            "ablation": True,
            "actadd": 2.0,
        }
    )
    zero, half = playground.scaled(form, 0.0), playground.scaled(form, 0.5)
    assert zero == SteeringForm()  # the unsteered baseline, not latents clamped to 0
    assert [c.value for c in half.latents] == [2.0, 0.0] and half.actadd == 1.0 and half.ablation
    assert torch.equal(torch.tensor([c.value for c in form.latents]), torch.tensor([4.0, -1.0]))  # not mutated


def test_job_events_keeps_a_quiet_stream_alive_and_ends_with_the_job():
    """A job silent for longer than the keep-alive gets None markers (turned into SSE comments
    by the stream); events arrive in order and the iteration ends at the job's end marker."""
    import asyncio
    import threading

    from refusalscope.serve.app import job_events
    from refusalscope.serve.worker import Job

    job = Job("j1", run=lambda job: None)

    job.emit("token", text="a")  # already waiting when the iteration starts

    def later():
        threading.Event().wait(0.08)  # silence: two keep-alive periods of 0.03 s
        job.emit("done")
        job.events.put(None)

    async def collect():
        threading.Thread(target=later).start()
        return [event async for event in job_events(job, keepalive_s=0.03)]

    seen = asyncio.run(collect())
    assert seen[0] == {"event": "token", "text": "a"}
    assert seen[-1] == {"event": "done"}
    assert seen[1:-1] and all(event is None for event in seen[1:-1])
