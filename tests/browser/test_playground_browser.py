"""The playground page in a real browser: Playwright for Python driving Debian's headless
Chromium (/usr/bin/chromium; Playwright's own browser download cannot run here) against a
real uvicorn server on tiny models.

Screenshots land in $REFUSALSCOPE_ARTIFACTS (default: out/browser/, git-ignored), kept as
test artefacts. Without playwright or chromium the tests skip and say why; `.ci/run`
installs both, so they run in CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("REFUSALSCOPE_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("REFUSALSCOPE_ARTIFACTS", REPO / "out" / "browser"))

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e '.[serve]')")
if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set REFUSALSCOPE_CHROMIUM)", allow_module_level=True
    )


class Server:
    """A uvicorn server for one app on a free local port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.worker.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from refusalscope.serve import create_app
    from refusalscope.serve.testing import CARD_XSS, tiny_playground

    playground = tiny_playground(tmp_path_factory.mktemp("browser"))
    first = next(iter(playground.cards.values()))
    first["contexts"].append(
        {"activation": 0.5, "corpus": "text", "tokens": ["before ", CARD_XSS, " after"], "peak": 1}
    )
    app = create_app(playground)
    with Server(app) as url:
        yield url, playground, app


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def wait_idle(page):
    """Until the current request has finished (its stop button is disabled again)."""
    page.wait_for_function("() => document.getElementById('stop').disabled", timeout=30_000)


def test_slider_changes_the_steered_reply_and_not_the_plain_one(page, site):
    url, playground, _ = site
    open_page(page, url)
    rows = page.locator("#latent-list tbody tr")
    assert rows.count() == len(playground.features.features)
    page.fill("#prompt", "How do I bake bread?")
    page.fill("#max-tokens", "12")
    page.click("#send")
    page.wait_for_function("() => document.getElementById('plain-meta').textContent.includes('tokens')", timeout=30_000)
    wait_idle(page)
    plain, steered = page.text_content("#plain"), page.text_content("#steered")
    assert plain and plain == steered  # nothing is steered yet

    rows.first.locator(".latent-add").click()  # pick the top latent: a slider appears, and its card
    control = page.locator("#controls .control")
    assert control.count() == 1
    page.wait_for_selector("#card .logit-effect")
    control.locator("input[type=range]").fill("-30")  # move the slider: the page re-runs the prompt
    page.wait_for_function(
        "(before) => document.getElementById('steered').textContent !== before && "
        "document.getElementById('plain-meta').textContent.includes('cached')",
        arg=steered,
        timeout=30_000,
    )
    wait_idle(page)
    assert page.text_content("#plain") == plain
    from refusalscope.serve.schemas import SteeringForm

    latent = playground.features.features[0].feature
    form = SteeringForm.model_validate({"latents": [{"layer": 1, "latent": latent, "mode": "set", "value": -30}]})
    expected = playground.chat.generate(
        ["How do I bake bread?"], max_new_tokens=12, progress=False, interventions=playground.build(form)
    ).texts[0]
    assert page.text_content("#steered") == expected != plain
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-tiny.png"), full_page=True)
    assert (ARTIFACTS / "playground-tiny.png").stat().st_size > 10_000


def test_feature_card_shows_contexts_histogram_and_escapes_context_text(page, site):
    url, playground, _ = site
    open_page(page, url)
    layer, latent = next(iter(playground.cards))
    page.locator(f"#latent-list tr[data-latent='{layer}/{latent}'] .latent-card").click()
    page.wait_for_selector("#card .logit-effect")
    assert page.locator("#card svg.hist rect").count() > 0
    contexts = page.locator("#card .ctx")
    assert contexts.count() == len(playground.cards[(layer, latent)]["contexts"])
    assert page.locator("#card .ctx .peak").count() == contexts.count()
    from refusalscope.serve.testing import CARD_XSS

    assert CARD_XSS in page.text_content("#card")  # shown as text ...
    assert page.locator("#card img").count() == 0  # ... never parsed into an element
    assert page.evaluate("window.__xss") is None
    page.click("#card-activations-run")
    page.wait_for_selector("#card-activations .ctx .tok")
    chat = playground.chat
    assert page.locator("#card-activations .tok").count() == len(chat.encode(chat.format(page.input_value("#prompt"))))


def test_a_reply_with_html_renders_as_text(page, browser, tmp_path):
    from refusalscope.serve import Playground, create_app
    from refusalscope.serve.testing import XSS_REPLY, xss_chat_model

    with Server(create_app(Playground(xss_chat_model(), {}, spec_dir=tmp_path))) as url:
        open_page(page, url)
        page.fill("#prompt", "hello")
        page.click("#send")
        page.wait_for_function(
            "() => document.getElementById('plain-meta').textContent.includes('tokens')", timeout=30_000
        )
        for pane in ("#steered", "#plain"):
            assert page.text_content(pane) == "".join(XSS_REPLY)
            assert page.locator(f"{pane} script, {pane} img").count() == 0
        assert page.evaluate("window.__xss") is None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground-xss.png"))


def test_spec_save_and_load_through_the_page(page, site):
    url, playground, _ = site
    open_page(page, url)
    page.uncheck("#live")
    page.locator("#latent-list tbody tr").nth(1).locator(".latent-add").click()
    page.locator("#controls .control input[type=number]").fill("7.5")
    page.locator("#controls .control input[type=number]").dispatch_event("change")
    page.fill("#spec-name", "from-browser")
    page.click("#spec-save")
    page.wait_for_function("() => document.getElementById('spec-message').textContent.startsWith('saved')")
    assert (playground.specs.root / "from-browser.json").is_file()
    page.locator("#controls .remove").click()
    assert page.locator("#controls .control").count() == 0
    page.select_option("#spec-select", "from-browser.json")
    page.click("#spec-load")
    page.wait_for_function("() => document.getElementById('spec-message').textContent.startsWith('loaded')")
    assert page.locator("#controls .control input[type=number]").input_value() == "7.5"
    page.fill("#spec-name", "../outside")
    page.click("#spec-save")
    page.wait_for_function("() => document.getElementById('spec-message').className === 'error'")
    assert "not a valid spec name" in page.text_content("#spec-message")


def test_refusal_curve_with_progress(page, site):
    url, _, _ = site
    open_page(page, url)
    page.uncheck("#live")
    page.locator("#latent-list tbody tr").first.locator(".latent-add").click()
    page.fill("#curve-prompts", "How do I bake bread?\nWrite a poem about the sea")
    page.fill("#curve-strengths", "0, 1, 2")
    page.click("#curve-run")
    page.wait_for_function("() => document.querySelectorAll('#curve-table tbody tr').length === 3", timeout=60_000)
    assert page.eval_on_selector("#curve-progress", "bar => [bar.value, bar.max]") == [6, 6]
    assert page.locator("#curve path.line").count() == 1
    assert [c.strip() for c in page.locator("#curve-table tbody tr td:first-child").all_text_contents()] == [
        "0",
        "1",
        "2",
    ]


def test_a_second_tab_waits_its_turn_and_can_cancel(page, site):
    url, _, app = site
    open_page(page, url)
    page.uncheck("#live")
    release = threading.Event()
    busy = app.state.worker.submit(lambda job: release.wait(30), "other-tab")  # another tab's long request
    try:
        page.fill("#prompt", "How do I bake bread?")
        page.click("#send")
        page.wait_for_function("() => document.getElementById('message').textContent.includes('1 request(s) ahead')")
        assert page.text_content("#steered") == ""
        page.click("#stop")  # give up waiting
        page.wait_for_function("() => document.getElementById('stop').disabled")
    finally:
        release.set()
    assert busy.finished.wait(10)
    page.click("#send")  # the queue is free again and the page still works
    page.wait_for_function("() => document.getElementById('plain-meta').textContent.includes('tokens')", timeout=30_000)
    deadline = time.time() + 10
    while app.state.worker.busy and time.time() < deadline:
        time.sleep(0.05)
    assert not app.state.worker.busy
