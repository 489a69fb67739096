"""The web UI in a real browser: headless Chromium driven by Playwright against one fleet for the module (catalog,
router, provisioner, two hardware probes and the gateway as processes; the Ollama and hub peers)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from contracts.vram import GIB
from tests.harness.browser import DESKTOP, PHONE, Fleet, chromium, fleet, screenshot, sign_in
from tests.harness.cli import ADMIN_TOKEN
from tests.peers.hub_server import HubPeer, generated_file, small_file
from tests.peers.ollama_server import OllamaPeer, library_model

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
CODER = "qwen3-coder:30b"  # the default set's `coding` model
PULLED = "tiny:1b"  # in the Ollama peer's library, pulled by the Provisioning test
REPO = "acme/tiny-GGUF"  # on the hub peer: one GGUF quantization, tagged v1
PAGES = ("library", "import", "hosts", "provision", "inventory", "roles", "chat")


@pytest.fixture(scope="module")
def ui_fleet(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str) -> Iterator[Fleet]:
    with OllamaPeer(library=[library_model(PULLED, 6 * MIB)]) as ollama, HubPeer() as hub:
        repo = hub.repo(REPO)
        repo.tag("v1", repo.commit([small_file("README.md", b"hi"), generated_file("tiny.Q4_K_M.gguf", 3 * MIB)]))
        ollama.install(CODER)
        ollama.pull_step_s = 0.05  # a pull takes a few steps: progress events with bytes, rate and ETA
        with fleet(tmp_path_factory.mktemp("ui"), postgres_server_url, ADMIN_TOKEN, ollama, hub) as f:
            yield f


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser, ui_fleet: Fleet) -> Iterator[Page]:
    """A signed-in page at 1280 px; any Content-Security-Policy violation the page reports fails the test."""
    context = browser.new_context(viewport=DESKTOP)
    p = context.new_page()
    violations: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Refused to" in msg.text:
            violations.append(msg.text)

    p.on("console", on_console)
    p.set_default_timeout(20_000)
    sign_in(p, ui_fleet.url, ADMIN_TOKEN)
    yield p
    context.close()
    assert violations == [], violations


def badges(page: Page) -> dict[tuple[str, str, str], str]:
    """(model, quant, host) -> fit kind, as the Library table shows it."""
    found = page.evaluate(
        """() => [...document.querySelectorAll('tr[data-model] li[data-quant] .badge')].map(b =>
             [b.closest('tr').dataset.model, b.closest('li').dataset.quant, b.dataset.host, b.dataset.fit])"""
    )
    return {(m, q, h): fit for m, q, h, fit in found}


def test_signed_out_csrf_and_security_headers(ui_fleet: Fleet) -> None:
    with httpx.Client(base_url=ui_fleet.url, timeout=10, follow_redirects=False) as http:
        for path in (f"/ui/{p}" for p in PAGES):  # no cookie: to the sign-in page, coming back here after
            r = http.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=%2Fui%2F"), (path, r)
        login = http.get("/ui/login")
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and login.headers["x-frame-options"] == "DENY"
        csrf = http.cookies["modelfleet_csrf"]
        # no inline script and no inline handler anywhere: every <script> has a src
        assert not re.search(r"<script(?![^>]*\bsrc=)", login.text) and not re.search(r"\son\w+=", login.text)

        assert http.post("/ui/login", data={"token": ADMIN_TOKEN}).status_code == 403  # no CSRF field
        wrong = http.post("/ui/login", data={"token": ADMIN_TOKEN, "csrf_token": "x" * 43})
        assert wrong.status_code == 403 and "CSRF" in wrong.json()["detail"]
        bad = http.post("/ui/login", data={"token": "not-a-token", "csrf_token": csrf})
        assert bad.status_code in (401, 403) and "Not signed in" in bad.text and "modelfleet_session" not in bad.cookies
        other_site = http.post(
            "/ui/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert other_site.status_code == 403 and "cross-origin" in other_site.json()["detail"]

        ok = http.post("/ui/login", data={"token": ADMIN_TOKEN, "csrf_token": csrf, "next": "//evil.example/"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/library"  # no open redirect
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        # signed in: the pages render; a change without the CSRF header is refused before it reaches the API
        assert http.get("/ui/library").status_code == 200
        assert http.post("/ui/api/models/provision", json={"models": [PULLED]}).status_code == 403
        assert http.post("/ui/inventory/sync", data={"host": "gpu-1"}).status_code == 403
        assert http.delete(f"/ui/api/inventory/gpu-1/{PULLED}").status_code == 403
        # the same API as the CLI, with the cookie's token: what /api/v1/hosts answers
        listed = http.get("/ui/api/hosts").json()
        assert {h["host_id"] for h in listed["hosts"]} >= {"gpu-1", "small-gpu", "cpu-box"}

        signout = http.post("/ui/logout", data={"csrf_token": csrf})
        assert signout.status_code == 303 and http.get("/ui/library").status_code == 303
        assert http.get("/ui/api/hosts").status_code == 401


def test_library_filters_and_fit_badges_follow_the_context(page: Page, ui_fleet: Fleet) -> None:
    page.goto(f"{ui_fleet.url}/ui/library?num_ctx=2048")
    expect(page.get_by_role("heading", name="Library")).to_be_visible()
    small_ctx = badges(page)
    assert {host for _, _, host in small_ctx} == {"gpu-1", "small-gpu", "cpu-box"}
    on_small = {k: v for k, v in small_ctx.items() if k[2] == "small-gpu"}
    assert {"fits", "offload"} <= set(on_small.values())  # 7 GiB free: small models fit, 14B ones spill over
    screenshot(page, "library")

    page.get_by_label("Context (tokens)").select_option("131072")
    page.wait_for_url(re.compile(r"num_ctx=131072"))
    expect(page.locator("#library-summary")).to_contain_text("131072-token context")
    big_ctx = badges(page)
    order = {"fits": 3, "tight": 2, "offload": 1, "wont": 0}
    changed = {k for k in small_ctx if big_ctx[k] != small_ctx[k]}
    assert changed, "no badge changed between a 2048- and a 131072-token context"
    assert all(order[big_ctx[k]] < order[small_ctx[k]] for k in changed)  # a longer context never fits better
    # the 8 GiB GPU whatever this machine's RAM: a 3B model fits at 2048 tokens, not with a 131072-token KV cache
    assert small_ctx[("llama3.2-3b", "Q4_K_M", "small-gpu")] == "fits"
    assert big_ctx[("llama3.2-3b", "Q4_K_M", "small-gpu")] in ("offload", "wont")

    page.get_by_label("Capability").select_option("embedding")
    page.wait_for_url(re.compile(r"capability=embedding"))
    rows = page.locator("tr[data-model]")
    expect(rows.first).to_be_visible()
    for text in rows.locator("td:nth-child(5)").all_inner_texts():
        assert "embedding" in text

    page.get_by_label("Capability").select_option("")
    page.get_by_label("Runs on host").select_option("gpu-1")
    page.wait_for_url(re.compile(r"host=gpu-1"))
    expect(page.locator("#library-summary")).to_contain_text("that run on gpu-1")
    shown = badges(page)
    assert {host for _, _, host in shown} == {"gpu-1"}
    # exactly the models with a quantization that fits gpu-1 (fully on its GPUs) at this context
    expected = {m for (m, _, h), fit in big_ctx.items() if h == "gpu-1" and fit in ("fits", "tight")}
    assert expected and {m for m, _, _ in shown} == expected
    assert {k: v for k, v in big_ctx.items() if k[2] == "gpu-1" and k[0] in expected} == shown


def test_hosts_page_gauges_and_history_chart(page: Page, ui_fleet: Fleet) -> None:
    page.goto(f"{ui_fleet.url}/ui/hosts")
    card = page.locator('section.host[data-host="gpu-1"]')
    h200 = card.get_by_label(re.compile(r"GPU 0 NVIDIA H200"))
    expect(h200).to_have_attribute("max", str(141 * GIB))
    expect(h200).to_have_attribute("value", str(20 * GIB))
    expect(card.get_by_label(re.compile(r"GPU 1 NVIDIA RTX 4090"))).to_have_attribute("value", str(23 * GIB))
    expect(card).to_contain_text("up")  # its Ollama (the peer) answers
    expect(card.locator(".chart-box canvas")).to_be_visible()  # uPlot drew the stored samples
    expect(page.locator('section.host[data-host="cpu-box"]')).to_contain_text("No GPU")
    screenshot(page, "hosts")

    page.set_viewport_size(PHONE)
    for name in ("hosts", "library"):
        page.goto(f"{ui_fleet.url}/ui/{name}")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at a phone width"
        screenshot(page, f"{name}-phone")


def test_provision_watch_progress_then_inventory_default_and_delete(page: Page, ui_fleet: Fleet) -> None:
    page.goto(f"{ui_fleet.url}/ui/provision")
    page.get_by_label(re.compile("^Models")).fill(PULLED)
    page.get_by_label("gpu-1").check()
    page.get_by_role("button", name="Provision").click()
    page.wait_for_url(re.compile(r"/ui/provision/[0-9a-f-]{36}\?since="))
    row = page.locator(f'#progress tr[data-host="gpu-1"][data-model="{PULLED}"]')
    expect(page.locator("#provision-state")).to_have_text("completed", timeout=60_000)
    expect(row.locator(".c-status")).to_have_text("pulled")
    expect(row.locator(".c-bytes")).to_contain_text("(100 %)")
    expect(page.locator("#actions")).to_contain_text("pulled")
    # the request's audit rows, read after it completed
    audited = page.locator(f'#audit tr[data-model="{PULLED}"][data-action="pull"]')
    expect(audited).to_have_count(1)
    expect(audited.locator(".result")).to_have_text("ok")
    expect(audited).to_contain_text("gpu-1")
    screenshot(page, "provision")
    assert PULLED in ui_fleet.ollama.installed
    page.get_by_role("link", name="Start another").click()
    expect(page.locator(f'#audit tr[data-model="{PULLED}"][data-action="pull"]')).to_have_count(1)

    page.get_by_role("link", name="Inventory").first.click()
    entry = page.locator(f'tr[data-host="gpu-1"][data-model="{PULLED}"]')
    expect(entry).to_be_visible()
    screenshot(page, "inventory")
    entry.get_by_role("button", name=f"Set {PULLED} as the default model").click()
    expect(page.get_by_role("status")).to_contain_text(f"default model is now {PULLED}")
    entry = page.locator(f'tr[data-host="gpu-1"][data-model="{PULLED}"]')
    entry.get_by_role("button", name=re.compile("Delete")).click()
    expect(page.get_by_role("status")).to_contain_text(f"deleted {PULLED} on gpu-1 from the host and the inventory")
    expect(page.locator(f'tr[data-model="{PULLED}"]')).to_have_count(0)
    assert PULLED not in ui_fleet.ollama.installed

    page.get_by_role("button", name="Check for updates now").click()
    expect(page.locator(".flash")).to_contain_text("update check:")
    expect(page.locator("#updates-last")).to_contain_text("Last check")


def test_chat_streams_an_answer_and_names_the_backend(page: Page, ui_fleet: Fleet) -> None:
    page.goto(f"{ui_fleet.url}/ui/chat")
    page.get_by_label("Role").select_option("coding")
    page.get_by_label("Message").fill("write hello world")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-status")).to_have_text("done", timeout=30_000)
    expect(page.locator("#chat-answer")).to_have_text("echo: write hello world")
    expect(page.locator("#chat-backend")).to_have_text(f"gpu-1 {ui_fleet.ollama.url}")
    expect(page.locator("#chat-ttft")).to_contain_text("ms")
    expect(page.locator("#chat-tokens")).to_contain_text("out")
    screenshot(page, "chat")


def test_every_page_has_labelled_controls(page: Page, ui_fleet: Fleet) -> None:
    for name in PAGES:
        page.goto(f"{ui_fleet.url}/ui/{name}")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, meter')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)"""
        )
        assert unlabelled == [], (name, unlabelled)
        title = page.title()  # a page's name, never markup
        assert title.endswith(" · modelfleet") and "<" not in title and len(title) < 60, (name, title)
        page.keyboard.press("Tab")  # the first stop is the skip link
        assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"


def test_import_a_pinned_quantization_from_the_hub_then_delete_it(page: Page, ui_fleet: Fleet) -> None:
    commit = ui_fleet.hub.repo(REPO).resolve("v1")
    page.goto(f"{ui_fleet.url}/ui/import")
    page.get_by_label("Repository").fill(REPO)
    page.get_by_label(re.compile("^Revision")).fill("v1")
    page.get_by_role("button", name="List quantizations").click()
    expect(page.locator("#import-commit")).to_have_text(str(commit))
    row = page.locator('#hf-quants tr[data-quant="Q4_K_M"]')
    expect(row).to_contain_text("3.0 MiB")
    expect(row.locator('.badge[data-host="gpu-1"]')).to_have_attribute("data-fit", "fits")
    screenshot(page, "import")
    page.get_by_label("Q4_K_M").check()
    page.get_by_label("Host", exact=True).select_option("gpu-1")
    page.get_by_role("button", name="Import", exact=True).click()
    page.wait_for_url(re.compile(r"/ui/provision/[0-9a-f-]{36}"))
    expect(page.locator("#provision-state")).to_have_text("completed", timeout=60_000)
    model = f"hf.co/{REPO}:Q4_K_M@{commit}"  # pinned: the commit v1 resolved to, not the tag
    expect(page.locator("#actions")).to_contain_text("imported")
    expect(page.locator("#actions")).to_contain_text(model)
    row = page.locator(f'#progress tr[data-host="gpu-1"][data-model="{model}"]')
    expect(row.locator(".c-status")).to_have_text(f"pulled as hf.co/{REPO}:Q4_K_M-{str(commit)[:12]}")
    expect(row.locator(".c-bytes")).to_have_text("3.0 MiB / 3.0 MiB (100 %)")
    expect(page.locator("#progress tbody tr")).to_have_count(1)
    screenshot(page, "import-progress")

    page.goto(f"{ui_fleet.url}/ui/inventory")
    entry = page.locator(f'tr[data-host="gpu-1"][data-model="{model}"]')
    expect(entry).to_be_visible()
    entry.get_by_role("button", name=re.compile("Delete")).click()
    expect(page.get_by_role("status")).to_contain_text(f"deleted {model} on gpu-1")
    expect(page.locator(f'tr[data-model="{model}"]')).to_have_count(0)


def test_roles_profiles_overrides_and_manifest_export(page: Page, ui_fleet: Fleet) -> None:
    page.goto(f"{ui_fleet.url}/ui/roles")
    coding = page.locator('#roles tr[data-role="coding"]')
    expect(coding).to_contain_text(CODER)
    expect(page.locator("#profiles tbody tr").first).to_be_visible()
    page.get_by_label(re.compile("^Overrides")).fill('{"temperature": 0.3}')
    page.get_by_role("button", name="Save overrides").click()
    expect(page.locator(".flash")).to_contain_text("overrides of admin saved")
    expect(page.get_by_label(re.compile("^Overrides"))).to_have_value('{"temperature": 0.3}')
    page.get_by_label(re.compile("^Overrides")).fill("[1]")
    page.get_by_role("button", name="Save overrides").click()
    expect(page.get_by_role("alert")).to_contain_text("overrides: a JSON object is needed, not list")

    page.get_by_label("Name", exact=True).fill("ui-coder")
    page.get_by_label("Type", exact=True).select_option("engineering")
    page.get_by_label("Model", exact=True).fill(CODER)
    page.get_by_label(re.compile("^Parameters")).fill('{"temperature": 0.1}')
    page.get_by_role("button", name="Create profile").click()
    expect(page.locator(".flash")).to_contain_text(f"profile ui-coder created (engineering, {CODER})")
    made = page.locator('#profiles tr[data-profile="ui-coder"]')
    expect(made).to_contain_text('{"temperature": 0.1}')
    # edit it: PUT /api/v1/profiles/{id}, with the checks of a create
    edit = page.locator('details.profile-edit[data-profile="ui-coder"]')
    edit.locator("summary").click()
    edit.get_by_label(re.compile("^Edit parameters")).fill('{"temperature": 0.4, "num_ctx": 4096}')
    edit.get_by_label("Edit description").fill("edited in the browser")
    edit.get_by_role("button", name="Save profile ui-coder").click()
    expect(page.locator(".flash")).to_contain_text(f"profile ui-coder saved (engineering, {CODER})")
    expect(made).to_contain_text('"temperature": 0.4')
    expect(made).to_contain_text('"num_ctx": 4096')
    edit = page.locator('details.profile-edit[data-profile="ui-coder"]')
    expect(edit.get_by_label("Edit description")).to_have_value("edited in the browser")
    edit.locator("summary").click()
    edit.get_by_label(re.compile("^Edit parameters")).fill('{"temperature": 9}')
    edit.get_by_role("button", name="Save profile ui-coder").click()
    expect(page.get_by_role("alert")).to_contain_text("edit profile 'ui-coder' (422): parameters.temperature")
    expect(made).to_contain_text('"temperature": 0.4')
    made.get_by_role("button", name="Use ui-coder for engineering").click()
    expect(page.locator(".flash")).to_contain_text("engineering: profile ui-coder")
    expect(made.locator(".in-use")).to_be_visible()
    screenshot(page, "roles")
    made.get_by_role("button", name="Stop using ui-coder for engineering").click()
    expect(page.locator(".flash")).to_contain_text("engineering: system default")
    expect(made.locator(".in-use")).to_have_count(0)
    made.get_by_role("button", name="Delete profile ui-coder").click()
    expect(page.locator(".flash")).to_contain_text("profile ui-coder deleted")
    expect(page.locator('#profiles tr[data-profile="ui-coder"]')).to_have_count(0)
    page.get_by_label(re.compile("^Parameters")).fill("{")
    page.get_by_label("Name", exact=True).fill("broken")
    page.get_by_label("Model", exact=True).fill(CODER)
    page.get_by_role("button", name="Create profile").click()
    expect(page.get_by_role("alert")).to_contain_text("parameters: not JSON")

    with page.expect_download() as got:
        page.get_by_role("link", name="models.txt").click()
    assert Path(got.value.path()).read_text().startswith("# modelfleet models.txt")
    with page.expect_download() as got:
        page.get_by_role("link", name="JSON").click()
    exported = Path(got.value.path())
    assert got.value.suggested_filename.endswith(".json") and CODER in exported.read_text()
    # the same file imported back: one transaction through POST /api/v1/catalog/import
    page.get_by_label(re.compile("^Import a manifest")).set_input_files(exported)
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#manifest-result")).to_contain_text("imported")
    expect(page.locator("#manifest-result")).to_contain_text("(json)")
