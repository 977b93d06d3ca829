"""What the browser tests share: the workbench on a free port, a Chromium page with the error
guard, and small helpers (tabs, waits, numbers, screenshots, what each tab must show).

The guard: every Gradio error or warning toast, console error and page error is recorded as it
appears; a test names the ones it expects with `page.errors.expect(text)`, and any other one
fails it (`assert_no_errors`, which the `page` fixtures call after every test).

Needs /usr/bin/chromium (scripts/setup.sh --dev installs it) and the playwright package; the
browser is the system's, never one downloaded by `playwright install`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

# Needed, not optional: without playwright or /usr/bin/chromium these tests fail (setup.sh --dev installs both).
import playwright.sync_api as playwright_api
from conftest import start_workbench, stop_workbench

from app.i18n import t

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BAD_DATA = REPO / "tests" / "bad_data"
TABS = ("data", "params", "train", "evaluate", "chat", "export")
TIMEOUT_MS = 120_000
LANG_RADIO = {"zh": "中文", "en": "English"}

# What each tab must show whenever it is open: its main controls (elem_ids).
MAIN_CONTROLS = {
    "data": ("data-dir", "data-refresh", "data-datasets", "data-inspect", "data-inspect-btn", "data-preview"),
    "params": ("params-preset", "params-model-source", "cfg-stage", "cfg-finetuning_type", "cfg-learning_rate",
               "params-preview", "params-save", "params-load"),
    "train": ("train-start", "train-abort", "train-resume", "train-run", "train-progress", "train-loss",
              "train-console", "train-runs"),
    "evaluate": ("eval-run", "eval-tasks", "eval-datasets", "eval-start", "eval-progress"),
    "chat": ("chat-source", "chat-run", "chat-load", "chat-tuned", "chat-input", "chat-send"),
    "export": ("export-run", "export-dtype", "export-gguf", "export-start", "export-progress", "export-files"),
}


@contextlib.contextmanager
def workbench(root: Path, model_dir: Path, data_dir: Path) -> Iterator[str]:
    """launch.py on a free localhost port with the model, a copy of the data folder and root/work;
    yields the page's URL. No job may outlive it: whatever still runs is aborted."""
    data = root / "data"
    shutil.copytree(data_dir, data)
    with open(root / "launch.log", "w") as log:
        proc, url = start_workbench(["--workdir", str(root / "work"), "--model", str(model_dir),
                                     "--data_dir", str(data)], log)
        try:
            yield url + "/"
        finally:
            stop_workbench(proc)
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


@contextlib.contextmanager
def chromium_page(url: str) -> Iterator[object]:
    """The system Chromium, headless, on the workbench; the page carries its guard as `page.errors`."""
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.add_init_script(RECORD_TOASTS)
            page.errors = PageErrors(page)
            page.goto(url)
            page.wait_for_selector("#tab-data")
            page.wait_for_timeout(1500)  # the load events (the Parameters tab's checks among them) have run
            yield page
        finally:
            browser.close()


def assert_no_errors(page) -> None:
    """The guard: fails on any error toast, console error or page error not expected."""
    page.wait_for_timeout(500)  # a toast from the last action has time to appear
    unexpected = page.errors.take()
    assert not unexpected, "the page showed errors: " + "; ".join(unexpected)


# ---- helpers -------------------------------------------------------------------------------

def open_tab(page, name: str, lang: str = "zh") -> None:
    page.get_by_role("tab", name=t("tab." + name, lang), exact=True).click()
    page.wait_for_timeout(300)


def set_language(page, lang: str) -> None:
    """The language radio; returns once the page is re-labelled."""
    page.locator("#qh-lang").get_by_text(LANG_RADIO[lang], exact=True).click()
    page.get_by_role("tab", name=t("tab.params", lang), exact=True).wait_for()
    # The header is re-labelled by the same event as every other label.
    wait_text(page, "#qh-header", t("app.header", lang).lstrip("# ").split(" · ")[1])
    page.wait_for_timeout(400)


def wait_text(page, selector: str, *texts: str, timeout: int = TIMEOUT_MS) -> None:
    """Until the element's text contains one of texts (a timeout says what it showed)."""
    try:
        page.wait_for_function(
            "([sel, texts]) => { const e = document.querySelector(sel); "
            "return !!e && texts.some(x => e.innerText.includes(x)); }", arg=[selector, list(texts)], timeout=timeout)
    except playwright_api.TimeoutError:
        shown = page.evaluate("(sel) => { const e = document.querySelector(sel); return e && e.innerText; }", selector)
        raise AssertionError(f"{selector} never showed {texts}; it shows {shown!r}") from None


def set_number(page, elem_id: str, value: float | int | str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")  # commit the value (a change event)


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def assert_tab_shows(page, name: str, lang: str) -> None:
    """What a picture of the tab must show: the tab open under its name in `lang`, its main
    controls visible, and no toast on the page (an error would be in the picture)."""
    tab = page.get_by_role("tab", name=t("tab." + name, lang), exact=True)
    assert tab.get_attribute("aria-selected") == "true", f"tab {name} is not the open one"
    hidden = [elem_id for elem_id in MAIN_CONTROLS[name] if not page.locator(f"#{elem_id}").first.is_visible()]
    assert not hidden, f"tab {name} ({lang}): not visible: {hidden}"
    toasts = page.locator("[data-testid=toast-body]")
    assert toasts.count() == 0, f"tab {name} ({lang}): a toast is showing: {toasts.all_inner_texts()}"


def shoot_every_tab(page, prefix: str = "tab") -> list[Path]:
    """Every tab in English, then in Chinese, each checked (assert_tab_shows) before its picture."""
    taken = []
    for lang in ("en", "zh"):
        set_language(page, lang)
        for name in TABS:
            open_tab(page, name, lang)
            page.wait_for_timeout(700)
            assert_tab_shows(page, name, lang)
            taken.append(shot(page, f"{prefix}-{name}-{lang}"))
    return taken
