"""The workbench end to end in headless Chromium: data preview and stats, a bad upload, a short
training to 100 %, an abort (after a page reload re-attaches to the job), a streamed chat reply,
an evaluation, an export; screenshots of every tab in both languages go to test-artifacts/.

Needs /usr/bin/chromium (scripts/setup.sh --dev installs it) and the playwright package; the
browser is the system's, never one downloaded by `playwright install`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Needed, not optional: without playwright or /usr/bin/chromium these tests fail (setup.sh --dev installs both).
import playwright.sync_api as playwright_api
import pytest
from conftest import start_workbench, stop_workbench

from app.i18n import t

CHROMIUM = Path("/usr/bin/chromium")

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BAD_DATA = REPO / "tests" / "bad_data"
TABS = ("data", "params", "train", "evaluate", "chat", "export")
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """The workbench on a free localhost port, preselecting the tiny model and a copy of the tiny data."""
    root = tmp_path_factory.mktemp("workbench")
    data_dir = root / "data"
    shutil.copytree(tiny_data_dir, data_dir)
    with open(root / "launch.log", "w") as log:
        proc, url = start_workbench(["--workdir", str(root / "work"), "--model", str(tiny_model_dir),
                                     "--data_dir", str(data_dir)], log)
        yield url + "/"
        stop_workbench(proc)
    # No job may outlive the test: abort whatever is still running.
    from trainer_core import jobs

    for run_dir in jobs.running_jobs(root / "work" / "outputs"):
        jobs.abort_job(run_dir, grace_seconds=10, log=lambda _: None)


# Every toast Gradio shows is recorded as it appears (they fade), with its kind (error, warning, ...).
RECORD_TOASTS = """
window.__qhToasts = [];
new MutationObserver(records => { for (const r of records) for (const node of r.addedNodes) {
    if (!(node instanceof Element)) continue;
    const toast = '[data-testid=toast-body]';
    const bodies = node.matches(toast) ? [node] : node.querySelectorAll(toast);
    for (const b of bodies) window.__qhToasts.push({kind: b.className, text: b.innerText});
} }).observe(document, {subtree: true, childList: true});
"""


class PageErrors:
    """Error toasts, console errors and page errors seen since the last check; a test that expects
    one names it with `expect(text)`, and every other one fails the test (guard fixture below)."""

    def __init__(self, page) -> None:
        self.page = page
        self.console: list[str] = []
        self.expected: list[str] = []
        page.on("console", lambda msg: self.console.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.console.append(f"page error: {exc}"))

    def expect(self, text: str) -> None:
        self.expected.append(text)

    def take(self) -> list[str]:
        toasts = self.page.evaluate("() => (window.__qhToasts || []).splice(0)")
        seen = [f"{'error' if 'error' in t['kind'] else t['kind']} toast: {t['text']}" for t in toasts
                if "error" in t["kind"] or "warning" in t["kind"]] + self.console
        self.console = []
        unexpected = [s for s in seen if not any(e in s for e in self.expected)]
        self.expected = []
        return unexpected


@pytest.fixture(scope="module")
def browser_page(app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.add_init_script(RECORD_TOASTS)
        page.errors = PageErrors(page)
        page.goto(app_url)
        page.wait_for_selector("#tab-data")
        page.wait_for_timeout(1500)  # the load events (the Parameters tab's checks among them) have run
        yield page
        browser.close()


@pytest.fixture
def page(browser_page):
    """The shared page, guarded: the test fails on any error toast, console error or page error it
    did not expect (`page.errors.expect(text)`), including those the page showed on load."""
    yield browser_page
    browser_page.wait_for_timeout(500)  # a toast from the last action has time to appear
    unexpected = browser_page.errors.take()
    assert not unexpected, "the page showed errors: " + "; ".join(unexpected)


def open_tab(page, name: str, lang: str = "zh") -> None:
    page.get_by_role("tab", name=t("tab." + name, lang), exact=True).click()
    page.wait_for_timeout(300)


def wait_text(page, selector: str, *texts: str, timeout: int = TIMEOUT_MS) -> None:
    """Until the element's text contains one of texts."""
    page.wait_for_function(
        "([sel, texts]) => { const e = document.querySelector(sel); "
        "return !!e && texts.some(x => e.innerText.includes(x)); }", arg=[selector, list(texts)], timeout=timeout)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")  # commit the value (a change event)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_preview_a_dataset_and_see_its_stats(page):
    wait_text(page, "#data-preview", "黄芪")  # the first dataset is shown as soon as the page opens
    page.click("#data-inspect-btn")  # with token statistics this time
    wait_text(page, "#data-stats", "token 数 P95")
    assert page.locator("#data-preview .qh-user").count() == 5  # one page of conversations as bubbles
    assert page.locator("#data-preview .qh-assistant").count() == 5
    assert "记录数" in page.inner_text("#data-stats") and "48" in page.inner_text("#data-stats")
    assert page.locator("#data-hist img, #data-hist svg").count() >= 1  # the histogram
    page.click("#data-next")
    wait_text(page, "#data-page-info", "第 2 / 10 页")
    shot(page, "data-preview-zh")


def test_a_bad_upload_shows_its_problems(page):
    page.get_by_text(t("data.upload", "zh"), exact=True).click()
    page.locator("#data-upload-file input[type=file]").set_input_files(str(BAD_DATA / "three_problems.json"))
    page.wait_for_function("() => document.querySelector('#data-upload-name textarea, #data-upload-name input')"
                           ".value !== ''")
    page.click("#data-upload-check")
    wait_text(page, "#data-problems", "empty question")
    problems = page.inner_text("#data-problems")
    assert "must be a string, got list" in problems and "missing" in problems
    page.click("#data-upload-register")
    wait_text(page, "#data-msg", "3 problem")  # refused: fix the file first
    assert "Traceback" not in page.inner_text("body")
    shot(page, "data-bad-upload-zh")


def _loss_points(page, series: int) -> int:
    """Markers (one per logged point) of a drawn loss series: 0 train, 1 eval."""
    return page.locator(f"#train-loss g#loss-{series} use").count()


def test_short_training_reaches_100_percent_with_a_loss_curve(page):
    open_tab(page, "params")
    page.get_by_text(t("params.advanced", "zh"), exact=True).click()  # logging and saving are folded there
    set_number(page, "cfg-max_steps", 8)
    set_number(page, "cfg-logging_steps", 2)
    set_number(page, "cfg-save_steps", 4)
    set_number(page, "cfg-eval_steps", 4)
    page.click("#params-preview")
    wait_text(page, "#params-command", "trainer_core train")
    open_tab(page, "train")
    page.click("#train-start")
    wait_text(page, "#train-msg", "已开始")
    wait_text(page, "#train-progress", "8 / 8 · 100%", timeout=180_000)
    wait_text(page, "#train-progress", "已完成")
    page.wait_for_function("() => document.querySelectorAll('#train-loss g#loss-1 use').length === 2")
    assert _loss_points(page, 0) == 5  # training loss at steps 1 (always logged), 2, 4, 6, 8
    assert _loss_points(page, 1) == 2  # eval loss at steps 4 and 8
    wait_text(page, "#train-runs", "已完成")
    shot(page, "train-finished-zh")


def test_abort_a_running_job_after_the_page_reattaches(page, app_url):
    open_tab(page, "params")
    set_number(page, "cfg-max_steps", 100000)
    set_number(page, "cfg-save_steps", 100000)
    set_number(page, "cfg-eval_steps", 100000)
    open_tab(page, "train")
    page.click("#train-start")
    wait_text(page, "#train-progress", "运行中")
    page.wait_for_function("() => /\\b[1-9]\\d* \\/ \\d+/.test(document.querySelector('#train-progress').innerText)")
    # The reload cuts the page's open requests (its timers' polls): those errors are expected.
    page.errors.expect("signal is aborted without reason")
    page.errors.expect("Connection errored out")
    page.reload()  # state lives in the run folder: a fresh page finds the running job
    page.wait_for_selector("#tab-data")
    open_tab(page, "train")
    wait_text(page, "#train-progress", "运行中")
    page.wait_for_selector("#train-abort:not([disabled])")
    page.click("#train-abort")
    wait_text(page, "#train-msg", "正在中止")
    wait_text(page, "#train-progress", "已中止", timeout=150_000)
    shot(page, "train-aborted-zh")


def test_chat_receives_a_streamed_reply(page):
    open_tab(page, "chat")
    page.wait_for_function("() => document.querySelector('#chat-run input, #chat-run textarea').value !== ''")
    page.click("#chat-load")
    wait_text(page, "#chat-status", "已加载")
    # Record every text the reply shows: a streamed reply shows several, growing.
    page.evaluate("""() => { window.qhReplies = [];
        new MutationObserver(() => { const bots = document.querySelectorAll('#chat-tuned [data-testid=bot]');
            if (bots.length) window.qhReplies.push(bots[bots.length - 1].innerText); })
        .observe(document.querySelector('#chat-tuned'), {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#chat-input textarea", "黄芪的功效是什么？")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelectorAll('#chat-tuned [data-testid=bot]').length === 1 && "
                           "document.querySelector('#chat-input textarea').value === ''")
    page.wait_for_timeout(1500)
    replies = [r for r in dict.fromkeys(page.evaluate("() => window.qhReplies")) if r.strip()]
    assert len(replies) >= 2, replies  # it grew on the page, token by token
    assert page.inner_text("#chat-tuned [data-testid=user]").strip() == "黄芪的功效是什么？"
    shot(page, "chat-zh")


def test_evaluate_a_run_and_see_its_results(page):
    open_tab(page, "evaluate")
    page.wait_for_function("() => document.querySelector('#eval-run input, #eval-run textarea').value !== ''")
    page.locator("#eval-tasks").get_by_text(t("task.ppl", "zh"), exact=True).click()
    page.click("#eval-start")
    wait_text(page, "#eval-msg", "已开始评估")
    wait_text(page, "#eval-progress", "已完成", "失败", timeout=180_000)
    assert "已完成" in page.inner_text("#eval-progress"), page.inner_text("#eval-progress")
    wait_text(page, "#eval-results", "perplexity")  # the core's result table, rendered
    shot(page, "evaluate-zh")


def test_export_writes_the_model_and_its_card(page):
    open_tab(page, "export")
    page.wait_for_function("() => document.querySelector('#export-run input, #export-run textarea').value !== ''")
    page.click("#export-start")
    wait_text(page, "#export-msg", "已开始导出")
    wait_text(page, "#export-progress", "100%", timeout=180_000)
    wait_text(page, "#export-files", "model.safetensors")
    wait_text(page, "#export-card", "ShuZhiQiHuang")
    assert "model-f16.gguf" in page.inner_text("#export-files")
    shot(page, "export-zh")


def test_screenshots_of_every_tab_in_both_languages(page):
    for lang, radio in (("en", "English"), ("zh", "中文")):
        page.locator("#qh-lang").get_by_text(radio, exact=True).click()
        page.get_by_role("tab", name=t("tab.params", lang), exact=True).wait_for()  # the page re-labelled
        for name in TABS:
            open_tab(page, name, lang)
            page.wait_for_timeout(700)
            shot(page, f"tab-{name}-{lang}")
    (ARTIFACTS / "index.json").write_text(json.dumps(sorted(p.name for p in ARTIFACTS.glob("*.png"))))
