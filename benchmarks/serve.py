"""Time to the first steered token in the playground, over HTTP, on the default model.

`refusalscope serve`'s promise (issue 15): on 2 cores, the first token of a steered reply
reaches the client within 2 s of the request. This starts the real server (uvicorn on
127.0.0.1, the app `refusalscope serve` builds) in this process, posts /api/generate with
an httpx client and clocks, per request:

  first steered token   request sent → the first `token` event of the steered reply
  steered reply         request sent → the steered `reply` event (12 new tokens)

for a steering of 3 latents clamped high (set) at one layer, the same behind the refusal-
direction gate when a direction is loaded, and no steering at all (the floor: prefill of
one prompt plus one decode step). Prompts rotate (harmful and harmless), so no request
reuses another's work; the median over `--repeats` rounds is reported, rounds interleaved.

SAEs: `--run` (a `refusalscope run`/`discover` folder) serves what `refusalscope serve
--run` would; otherwise the cached quick-preset SAEs if `train-sae --preset quick` (or
`make demo`) has run, else a random TopK SAE at layer 16 (d_sae 2048, k 32), which costs
the same per token as a trained one; the output says which.

    python benchmarks/serve.py [--run runs/qwen2.5-coder-0.5b-instruct-quick | --features f.json] [--repeats 5]
    python benchmarks/serve.py --screenshot docs/playground.png    # also the README screenshot
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

PROMPTS = [
    "How do I pick a lock?",
    "Write a short poem about the sea.",
    "How can I make a weapon at home?",
    "Give me a recipe for bread.",
    "Explain how to hack into my neighbour's wifi.",
    "What is the capital of Australia?",
]


def build_playground(run: str | None, features: str | None, dtype: str, spec_dir: Path):
    from refusalscope.serve.loading import load_playground, resolve_sources

    if run or features:
        sources = resolve_sources(
            Path(run) if run else None, features=Path(features) if features else None, spec_dir=spec_dir
        )
        return load_playground(sources, dtype=dtype), f"{run or features}: SAEs {sources.saes}"
    from refusalscope import load_model
    from refusalscope.sae import SAE, SAEConfig
    from refusalscope.sae.io import load_sae
    from refusalscope.sae.presets import get_preset, preset_folder
    from refusalscope.serve import Playground

    chat = load_model("default", dtype=dtype)
    folder = preset_folder(chat, get_preset("quick"))
    saes = {}
    for path in sorted(folder.glob("layer_*")):
        if (path / "cfg.json").is_file():
            sae = load_sae(path)
            saes[sae.layer] = sae
    what = f"cached quick SAEs at layers {sorted(saes)} ({folder})"
    if not saes:
        cfg = SAEConfig(d_in=chat.d_model, d_sae=2048, architecture="topk", k=32, layer=16)
        saes = {16: SAE.random(cfg, seed=0)}
        what = "a random TopK SAE at layer 16 (d_sae 2048, k 32): the quick SAEs are not cached"
    return Playground(chat, saes, spec_dir=spec_dir), what


class Server:
    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


def timed_request(client, url: str, prompt: str, steering: dict, max_new_tokens: int) -> dict:
    """Seconds from sending the request to the first steered token event and to the reply."""
    out = {}
    started = time.perf_counter()
    with client.stream(
        "POST",
        f"{url}/api/generate",
        json={"prompt": prompt, "steering": steering, "max_new_tokens": max_new_tokens, "baseline": False},
    ) as r:
        r.raise_for_status()
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if name == "token" and data["side"] == "steered" and "first" not in out:
                    out["first"] = time.perf_counter() - started
                elif name == "reply" and data["side"] == "steered":
                    out["reply"] = time.perf_counter() - started
                    out["tokens"] = data["tokens"]
                elif name == "gate":
                    out["gate_fired"] = data["fired"]
                elif name == "error":
                    raise RuntimeError(data)
    return out


def screenshot(url: str, path: Path, latents: list[tuple[int, int, float]]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("REFUSALSCOPE_CHROMIUM", "/usr/bin/chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1050})
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.uncheck("#live")
        for layer, latent, _ in latents:
            row = page.locator(f"#latent-list tr[data-latent='{layer}/{latent}'] .latent-add")
            if row.count():
                row.click()
            else:  # no discovered list: find it by index
                page.fill("#search", f"{layer}/{latent}")
                page.click("#search-form button")
                page.locator("#search-results button", has_text="steer").first.click()
        for number, (_, _, value) in zip(page.locator("#controls .control input[type=number]").all(), latents):
            number.fill(f"{value:.2f}")
            number.dispatch_event("change")
        page.fill("#prompt", "Give me a recipe for bread.")
        page.fill("#max-tokens", "40")
        page.click("#send")
        page.wait_for_function(
            "() => document.getElementById('plain-meta').textContent.includes('tokens')", timeout=180_000
        )
        page.click("#card-activations-run")
        page.wait_for_selector("#card-activations .tok", timeout=60_000)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1400, "height": 1050})
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="serve this run folder (features, cards, direction) instead of bare SAEs")
    parser.add_argument("--features", help="serve this features.json (and the SAEs it names)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument(
        "--value", type=float, default=None, help="clamp value (default: 2 × each latent's harmful peak, else 20)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--screenshot", type=Path, help="also save a screenshot of the page here (needs playwright + chromium)"
    )
    args = parser.parse_args()

    import tempfile

    import httpx
    import torch

    from refusalscope.serve import create_app

    loaded = time.perf_counter()
    playground, what = build_playground(args.run, args.features, args.dtype, Path(tempfile.mkdtemp()) / "specs")
    loaded = time.perf_counter() - loaded
    listed = playground.latents()
    if listed:
        picks = [(d["layer"], d["latent"], d["peak"]) for d in listed[:3]]
    else:
        layer = max(playground.saes)
        picks = [(layer, j, None) for j in (0, 1, 2)]
    # clamp each at 2x its harmful peak (the README's induction setting), or a fixed value
    picks = [
        (layer, latent, args.value if args.value is not None else (2 * peak if peak else 20.0))
        for layer, latent, peak in picks
    ]
    steering = {
        "latents": [{"layer": layer, "latent": latent, "mode": "set", "value": v} for layer, latent, v in picks]
    }
    configs = {"no steering": {}, "3 latents clamped (set)": steering}
    if playground.direction is not None:
        configs["3 latents, behind the direction gate"] = {
            **steering,
            "gate": {"enabled": True, "kind": "direction", "threshold": -1e3},
        }
    chat = playground.chat
    print(
        f"model {chat.info.name} ({chat.info.dtype}), torch threads {torch.get_num_threads()}, loaded in {loaded:.1f}s"
    )
    print(f"SAEs: {what}")
    print(
        f"steered latents (layer, latent, value) {[(l, j, round(v, 2)) for l, j, v in picks]}; {args.max_new_tokens} new tokens; "
        f"{args.repeats} rounds × {len(configs)} configurations, interleaved"
    )
    server = Server(create_app(playground, allowed_hosts=["127.0.0.1"]))
    results: dict[str, list[dict]] = {name: [] for name in configs}
    with httpx.Client(timeout=600) as client:
        timed_request(client, server.url, "Hello", steering, 2)  # warm-up: first-call costs (allocations, caches)
        for r in range(args.repeats):
            for c, (name, form) in enumerate(configs.items()):
                prompt = PROMPTS[(r * len(configs) + c) % len(PROMPTS)]
                results[name].append(timed_request(client, server.url, prompt, form, args.max_new_tokens))
    print()
    print(f"{'configuration':40s} {'first steered token (median, s)':>32s} {'range':>14s} {'whole reply (s)':>16s}")
    for name, rows in results.items():
        firsts = [row["first"] for row in rows]
        replies = [row["reply"] for row in rows]
        print(
            f"{name:40s} {statistics.median(firsts):32.3f} {min(firsts):6.3f}–{max(firsts):<6.3f} "
            f"{statistics.median(replies):16.3f}"
        )
    worst = max(statistics.median([row["first"] for row in rows]) for rows in results.values())
    print(
        f"\ntarget: first steered token within 2 s of the request — {'met' if worst <= 2 else 'NOT met'} "
        f"(slowest median {worst:.3f} s)"
    )
    if args.screenshot:
        screenshot(server.url, args.screenshot, picks)
        print(f"screenshot: {args.screenshot}")
    server.close()


if __name__ == "__main__":
    main()
