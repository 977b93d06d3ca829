"""A walk of every control of the workbench, in Chinese and in English, under the error guard:
every tab, every dropdown opened and every option picked, every radio and checkbox, one invalid
value in each number of the Parameters tab (its own message under it, gone once corrected),
and every button that is safe without a job. `CASES` names each control the walk exercises and
`SKIPPED` the few it must not press; a control the tabs register in neither fails
`test_every_control_has_a_case_in_the_walk`.

Then: the English page has no Chinese outside user data and model output, the Chinese page no
English beyond technical tokens; and checked screenshots (each tab, the flagged Parameters tab).

The workbench starts with two seeded runs (one finished with an adapter, one failed), so the run
pickers, the run table and the Train buttons have something to show; no job is ever started.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from pagekit import (
    BAD_DATA,
    CJK,
    TABS,
    assert_no_errors,
    assert_tab_shows,
    chromium_page,
    open_tab,
    set_language,
    shot,
    wait_text,
    workbench,
)

from app import form
from app.i18n import t, translate
from trainer_core.planner import FAMILIES  # architecture names (the plan panel's model line)

# ---- what the walk covers ------------------------------------------------------------------

# The preference keys show only for their stages: the walk types into them there (walk_params).
NUMBER_KEYS = [k for k in form.FORM_KEYS if str(form.KEYS[k].type).startswith(("int", "float"))
               and not form.KEYS[k].metadata["choices"] and k not in form.TEXT_PICKERS and k not in form.PREF_KEYS]
PREF_NUMBER_KEYS = [k for k in form.PREF_KEYS if k != "pref_loss"]
TEXT_KEYS = [k for k in form.FORM_KEYS if str(form.KEYS[k].type).startswith("str")
             and not form.KEYS[k].metadata["choices"] and k != "deepspeed"]
CHECK_KEYS = [k for k in form.FORM_KEYS if str(form.KEYS[k].type).startswith("bool") and k != "packing"]
# A text field with a value the page refuses (outside the folders it may use), else None: typed, then undone.
TEXT_INVALID = {"output_dir": "/etc/qh-walk", "resume_from_checkpoint": "/etc", "hostfile": "/etc/hosts",
                "lora_target": None, "eval_dataset": None}

CASES = {
    "qh-lang": "both languages, the whole walk in each",
    **{f"tab-{name}": "visited" for name in TABS},
    # Data
    "data-dir": "a folder outside the allowed ones (its message), then the real one again",
    "data-refresh": "pressed",
    "data-datasets": "cleared, every option picked, back to the first two",
    "data-weights": "bad weights (the core's message under it, translated), then weights (the composition follows), "
                    "then emptied",
    "data-mix-strategy": "every strategy (the composition names the one that applies)",
    "data-inspect": "every dataset picked (the preview shows it)",
    "data-inspect-btn": "pressed: token statistics",
    "data-prev": "pressed", "data-next": "pressed", "data-page": "typed, Enter",
    "data-upload-acc": "opened",
    "data-upload-file": "a file with three problems",
    "data-upload-name": "typed",
    "data-upload-format": "every format picked, back to alpaca",
    "data-upload-columns": "an invalid mapping (its message), then emptied",
    "data-upload-check": "pressed without a file, with a bad mapping, with the file",
    "data-upload-register": "pressed without a file and with the bad file (refused)",
    # Parameters
    "params-preset": "every preset picked, then sft_lora again",
    "params-acc-model": "closed and opened", "params-acc-method": "closed and opened",
    "params-acc-main": "closed and opened", "params-acc-advanced": "opened", "params-acc-hardware": "opened",
    "params-model-source": "every source (the model folder and known models show and hide)",
    "params-known-model": "every known model picked",
    "params-model-path": "a folder outside the allowed ones (flagged), then the model again",
    **{f"cfg-{k}": "an invalid number (flagged under it), then the old value" for k in NUMBER_KEYS},
    **{f"cfg-{k}": "typed (flagged where refused), then the old value" for k in TEXT_KEYS},
    **{f"cfg-{k}": "on and off, all at once (bf16 with fp16 flags both)" for k in CHECK_KEYS},
    "cfg-stage": "every stage (the preference keys show for dpo and kto)",
    "cfg-finetuning_type": "every method (rows show and hide)",
    "cfg-pref_loss": "every loss (under stage dpo)",
    **{f"cfg-{k}": "under its stage: an invalid number (flagged under it), then the old value"
       for k in PREF_NUMBER_KEYS},
    "cfg-template": "every template", "cfg-quantization_bit": "every bit width (under QLoRA)",
    "cfg-lr_scheduler_type": "every schedule", "cfg-packing": "every choice",
    "cfg-deepspeed": "every preset (ZeRO-3 with QLoRA is flagged)", "cfg-report_to": "every choice",
    "cfg-data_engine": "every choice",
    "cfg-per_device_train_batch_size": "every choice (auto and the sizes), then auto2 typed in (its message under "
                                       "it), then the old value",
    "params-preview": "pressed: the command", "params-config-path": "a name that is no .yaml, then the default",
    "params-save": "pressed with a bad name (its message) and a good one", "params-load": "pressed",
    "params-upload": "the saved YAML uploaded",
    "params-acc-lrfind": "opened", "lrfind-use": "disabled: no range test has run",
    "plan-acc": "closed and opened", "plan-kind": "every kind (the plan names it; this machine again)",
    "plan-gpus": "0 (its message in the panel), then 2 (the plan is for 2), then 1",
    "plan-nodes": "2 (the plan is for 2 nodes), then 1", "plan-price": "a price (the cost shows), then emptied",
    "plan-apply": "disabled: the walk's form fits (test_workbench.py applies the 14B case's fix)",
    # Train
    "train-run": "every run picked (the buttons follow its state)",
    "train-overlay": "every run added, then cleared",
    "train-runs": "every row clicked (the run picker follows)",
    "train-abort": "disabled: no run is running",
    # Evaluate
    "eval-run": "every finished run", "eval-base-only": "on and off", "eval-tasks": "every task on and off",
    "eval-datasets": "every dataset added, then cleared", "eval-split": "every split",
    "eval-max-samples": "typed", "eval-n-shot": "typed", "eval-max-new-tokens": "typed", "eval-batch-size": "typed",
    "eval-job": "opened (no job yet)", "eval-compare-acc": "opened", "eval-compare-jobs": "opened (no job yet)",
    # Chat
    "chat-source": "every source", "chat-run": "every finished run", "chat-unload": "pressed",
    "chat-system": "typed", "chat-compare": "on (the base column shows) and off", "chat-settings-acc": "opened",
    "chat-max-new-tokens": "set", "chat-temperature": "set", "chat-top-p": "set", "chat-top-k": "set",
    "chat-repetition-penalty": "set", "chat-greedy": "on and off", "chat-input": "typed",
    "chat-send": "pressed without a model (asks for one)", "chat-clear": "pressed",
    "arena-acc": "opened", "arena-contestants": "every option added, then cleared",
    "arena-load": "pressed with none picked (asks for 2 to 4)", "arena-question": "typed",
    "arena-send": "pressed without contestants (asks to load them), before each vote button",
    "arena-vote-a": "pressed before any answer (asks for a question first)", "arena-vote-b": "the same",
    "arena-vote-tie": "the same", "arena-vote-bad": "the same", "arena-correction": "typed, then emptied",
    "arena-reviewer": "typed, then emptied", "arena-train-dpo": "pressed before any vote (no pairs yet: says so)",
    # Export
    "export-run": "every finished run", "export-dtype": "every dtype", "export-shard": "typed",
    "export-gguf": "every type on and off", "export-overwrite": "off and on", "export-job": "opened (no job yet)",
    "export-card-acc": "closed and opened",
}
SKIPPED = {
    "train-start": "starts a training job (test_workbench.py trains)",
    "train-resume": "starts a job; the walk only checks it is enabled for the failed run",
    "eval-start": "starts an evaluation job (test_workbench.py evaluates)",
    "export-start": "starts an export job (test_workbench.py exports)",
    "chat-load": "loads a model into the UI process (test_workbench.py chats)",
    "arena-vote-c": "shown only with three or four contestants, which the walk never loads (a vote for C: "
                    "tests/test_arena.py)",
    "arena-vote-d": "shown only with four contestants, which the walk never loads",
    "lrfind-start": "starts an LR range test job (test_workbench.py runs one and uses its suggestion)",
}
# Components that show, never take input (or take it only as a job's output).
CONTROL_TYPES = ("Button", "UploadButton", "Dropdown", "Radio", "Checkbox", "CheckboxGroup", "Number", "Textbox",
                 "Slider", "File", "Tab", "Accordion", "Dataframe")


def registered_controls(ctx) -> dict[str, str]:
    """elem_id -> type of every control the tabs register: inputs that are not read-only, tabs,
    accordions, and any component an event listens to (a read-only table's row click)."""
    import gradio as gr

    from app.ui import build_app

    demo = build_app(ctx)
    # A read-only component's own change (its value was updated) is no user action; a click or select is.
    triggers = {block_id for fn in demo.fns.values() for block_id, event in fn.targets if event != "change"}
    found: dict[str, str] = {}
    for block_id, block in demo.blocks.items():
        kind = type(block).__name__
        if isinstance(block, gr.Timer) or kind not in CONTROL_TYPES:
            continue
        if getattr(block, "interactive", None) is False and block_id not in triggers:
            continue
        label = getattr(block, "label", None)
        assert block.elem_id, f"a {kind} labelled {label!r} has no elem_id: the walk cannot find it"
        found[block.elem_id] = kind
    return found


def test_every_control_has_a_case_in_the_walk(tmp_path, tiny_data_dir, tiny_model_dir):
    from app.context import make_context

    controls = registered_controls(make_context(tmp_path / "work", tiny_data_dir, str(tiny_model_dir)))
    missing = sorted(set(controls) - set(CASES) - set(SKIPPED))
    assert not missing, f"controls without a case in the walk (add one to CASES, or to SKIPPED with why): {missing}"
    stale = sorted((set(CASES) | set(SKIPPED)) - set(controls))
    assert not stale, f"cases for controls that no longer exist: {stale}"
    assert not set(CASES) & set(SKIPPED)


# ---- the workbench, with two seeded runs ---------------------------------------------------

FAILED_ERROR = ("The job's processes are gone without a report (killed, or the machine restarted); resume with "
                "resume_from_checkpoint=auto.")


def seed_run(outputs: Path, name: str, state: str, started: str, model: Path, data: Path, error: str = "") -> None:
    from trainer_core.config import config_from_dict, config_to_yaml

    run = outputs / name
    run.mkdir(parents=True)
    cfg = config_from_dict({"model_name_or_path": str(model), "dataset": "qa", "dataset_dir": str(data),
                            "output_dir": str(run), "max_steps": 4})
    (run / "run.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
    status = {"state": state, "started_at": started, "ended_at": started, "pid": None, "pgid": None}
    if error:
        status["error"] = error
    (run / "status.json").write_text(json.dumps(status), encoding="utf-8")
    log = [{"step": s, "total_steps": 4, "loss": 2.0 - s / 4} for s in range(1, 5 if state == "finished" else 3)]
    (run / "trainer_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log), encoding="utf-8")
    (run / "console.log").write_text("step 1\nstep 2\n", encoding="utf-8")
    if state == "finished":
        (run / "adapter").mkdir()
        (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")


@pytest.fixture(scope="module")
def workroot(tmp_path_factory):
    return tmp_path_factory.mktemp("walk")


@pytest.fixture(scope="module")
def app_url(workroot, tiny_model_dir, tiny_data_dir):
    outputs = workroot / "work" / "outputs"
    seed_run(outputs, "sft-lora-done", "finished", "2026-01-01T10:00:00", tiny_model_dir, workroot / "data")
    seed_run(outputs, "sft-lora-broken", "failed", "2026-01-02T10:00:00", tiny_model_dir, workroot / "data",
             FAILED_ERROR)
    with workbench(workroot, tiny_model_dir, tiny_data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(app_url):
    with chromium_page(app_url) as page:
        # One step of the walk; long waits say their own. 90 s, not 30: on a CI machine the queue has
        # answered a step after more than 30 s (the composition, the language switch), with no error.
        page.set_default_timeout(90_000)
        yield page


@pytest.fixture
def page(browser_page):
    """The shared page under the guard (pagekit.assert_no_errors) after every test."""
    yield browser_page
    assert_no_errors(browser_page)


# ---- the walk ------------------------------------------------------------------------------

class Walk:
    """Actions on the page by elem_id; each records the control it exercised in `done`."""

    USER_DATA = {"data-datasets", "data-inspect", "eval-datasets"}  # options named after the user's data
    # Pickers whose options are plain values, the same in both languages: every one is picked in
    # the Chinese walk; the English one checks the list and picks one (the walk stays ~4 minutes).
    SAME_IN_BOTH = {"params-preset", "params-known-model", "cfg-template", "cfg-lr_scheduler_type", "cfg-report_to",
                    "cfg-pref_loss",
                    "cfg-per_device_train_batch_size",
                    "cfg-quantization_bit", "data-upload-format", "data-inspect", "export-dtype", "eval-run",
                    "chat-run", "export-run", "plan-kind"}

    def __init__(self, page, lang: str) -> None:
        self.page, self.lang, self.done = page, lang, set()

    def el(self, eid: str):
        return self.page.locator(f"#{eid}").first

    def info(self, eid: str) -> str:
        return self.page.locator(f"#{eid} .info-text").first.inner_text()

    def wait(self, js: str, *args) -> None:
        self.page.wait_for_function(js, arg=list(args), timeout=30_000)

    def wait_info(self, eid: str, text: str, exact: bool = True) -> None:
        self.wait("([id, want, exact]) => { const e = document.querySelector('#' + id + ' .info-text'); "
                  "return !!e && (exact ? e.innerText.trim() === want.trim() : e.innerText.includes(want)); }",
                  eid, text, exact)

    def wait_value(self, eid: str, value: str) -> None:
        self.wait("([id, v]) => { const e = document.querySelector('#' + id + ' input, #' + id + ' textarea'); "
                  "return !!e && e.value === v; }", eid, value)

    def wait_visible(self, eid: str, visible: bool = True) -> None:
        self.el(eid).wait_for(state="visible" if visible else "hidden", timeout=30_000)

    # -- dropdowns
    def show(self, eid: str, expect_options: bool = True) -> None:
        """The option list open: a picker opens on focus, a focused one again only after a blur (one
        round trip; a click on an option waits for the list by itself)."""
        opened = self.page.evaluate("""(id) => {
            if (document.querySelector('#' + id + ' [role=option]')) return true;
            const box = document.querySelector('#' + id + ' input[role=combobox]');
            box.blur(); box.focus(); return false; }""", eid)
        if expect_options and not opened:
            self.page.locator(f"#{eid} [role=option]").first.wait_for(timeout=10_000)

    def open(self, eid: str) -> list[str]:
        self.show(eid)
        labels = self.page.evaluate("(id) => [...document.querySelectorAll('#' + id + ' [role=option]')]"
                                    ".map(o => o.getAttribute('aria-label'))", eid)
        if self.lang == "en" and eid not in self.USER_DATA:
            assert not [x for x in labels if CJK.search(x or "")], f"{eid}: Chinese options on the English page"
        return labels

    def close(self, eid: str) -> None:
        self.el(eid).locator("input[role=combobox]").press("Escape")
        self.page.locator(f"#{eid} [role=option]").first.wait_for(state="detached", timeout=10_000)

    def choose(self, eid: str, label: str, multi: bool = False) -> None:
        """The option clicked; a single picker then shows it, its list closed (one wait for both)."""
        if not self.page.locator(f"#{eid} [role=option]").count():
            self.show(eid, expect_options=False)
        self.page.locator(f'#{eid} [role=option][aria-label="{label}"]').click()
        if not multi:
            self.wait("([id, v]) => !document.querySelector('#' + id + ' [role=option]') && "
                      "document.querySelector('#' + id + ' input').value === v", eid, label)

    def value(self, eid: str) -> str:
        return self.el(eid).locator("input, textarea").first.input_value()

    def pick_each(self, eid: str, after=None) -> list[str]:
        """Every option in turn (`after(label)` checks what each one shows), then the first value again."""
        before = self.value(eid)
        labels = self.open(eid)  # left open: the first pick clicks in it
        assert labels, f"{eid} has no options"
        picks = [*labels, before] if before in labels else labels
        if self.lang == "en" and eid in self.SAME_IN_BOTH:
            picks = [next((x for x in labels if x != before), labels[0]), *([before] if before in labels else [])]
        for label in picks:
            self.choose(eid, label)
            if after:
                after(label)
        self.done.add(eid)
        return labels

    def open_empty(self, eid: str) -> None:
        """A picker with nothing to pick yet: it opens, shows no option, closes."""
        self.show(eid, expect_options=False)
        self.page.wait_for_timeout(200)
        assert self.page.locator(f"#{eid} [role=option]").count() == 0
        self.el(eid).locator("input[role=combobox]").press("Escape")
        self.done.add(eid)

    def tokens(self, eid: str) -> list[str]:
        return [x.strip() for x in self.page.locator(f"#{eid} .token > span").all_inner_texts()]

    def multi_each(self, eid: str, keep: list[str] | None = None) -> None:
        """Cleared, every option added, then only `keep` (the first selection when None) left."""
        keep = self.tokens(eid) if keep is None else keep
        if self.tokens(eid):
            self.el(eid).locator(".remove-all").click()
            self.wait("(id) => document.querySelectorAll('#' + id + ' .token').length === 0", eid)
        labels = self.open(eid)
        self.close(eid)
        for n, label in enumerate(labels, 1):
            self.choose(eid, label, multi=True)
            self.wait("([id, n]) => document.querySelectorAll('#' + id + ' .token').length === n", eid, n)
        self.close(eid)
        if not keep:
            self.el(eid).locator(".remove-all").click()
        else:
            for label in labels:
                if label not in keep:
                    self.page.locator(f"#{eid} .token").filter(has_text=label).locator(".token-remove").click()
        self.wait("([id, n]) => document.querySelectorAll('#' + id + ' .token').length === n", eid, len(keep))
        assert self.tokens(eid) == keep
        self.done.add(eid)

    # -- radios, checkboxes
    def radio(self, eid: str, label: str) -> None:
        self.el(eid).locator("label").get_by_text(label, exact=True).click()
        self.wait("([id, l]) => [...document.querySelectorAll('#' + id + ' label')].some("
                  "x => x.innerText.trim() === l && x.querySelector('input').checked)", eid, label)

    def radio_each(self, eid: str, labels: list[str], after=None) -> None:
        checked = self.el(eid).locator("label:has(input:checked)").inner_text().strip()
        for label in [*labels, checked]:
            self.radio(eid, label)
            if after:
                after(label)
        self.done.add(eid)

    def toggle(self, eid: str, after=None) -> None:
        box = self.el(eid).locator("input[type=checkbox]")
        first = box.is_checked()
        for state in (not first, first):
            box.click()
            self.wait("([id, s]) => document.querySelector('#' + id + ' input[type=checkbox]').checked === s",
                      eid, state)
            if after:
                after(state)
        self.done.add(eid)

    def group_each(self, eid: str) -> None:
        boxes = self.el(eid).locator("input[type=checkbox]")
        for i in range(boxes.count()):
            for _ in range(2):
                boxes.nth(i).click()
        self.wait("(id) => [...document.querySelectorAll('#' + id + ' input')].every(x => !x.checked) || true", eid)
        self.done.add(eid)

    # -- typing
    def type(self, eid: str, text: str, enter: bool = False) -> None:
        box = self.el(eid).locator("textarea, input:not([type=range])").first
        box.fill(text)
        box.press("Enter" if enter else "Tab")

    def fill(self, eid: str, text: str) -> None:
        """Typed and committed by a blur, without waiting for what the page answers."""
        box = self.el(eid).locator("input").first
        box.fill(text)
        box.evaluate("e => e.blur()")

    # -- many fields in one round trip
    FIELD = "document.querySelector('#' + id + ' textarea, #' + id + ' input')"

    def values(self, eids: list[str]) -> dict[str, str]:
        return self.page.evaluate(f"(ids) => Object.fromEntries(ids.map(id => [id, {self.FIELD}.value]))", eids)

    def fill_all(self, values: dict[str, str]) -> None:
        """Each field typed and committed by a blur, as `fill` does one (the value set, then input
        and change events), all in one round trip; the page's checks of the changes coalesce."""
        self.page.evaluate("""(values) => { for (const [id, v] of Object.entries(values)) {
            const e = """ + self.FIELD + """;
            e.focus();
            Object.getOwnPropertyDescriptor(Object.getPrototypeOf(e), 'value').set.call(e, v);
            e.dispatchEvent(new Event('input', {bubbles: true}));
            e.dispatchEvent(new Event('change', {bubbles: true}));
            e.blur(); } }""", values)

    def checked(self, eids: list[str]) -> dict[str, bool]:
        return self.page.evaluate("(ids) => Object.fromEntries(ids.map(id => "
                                  "[id, document.querySelector('#' + id + ' input[type=checkbox]').checked]))", eids)

    def click_all(self, eids: list[str]) -> None:
        """Each checkbox clicked (a click event: it toggles and tells the page), in one round trip."""
        self.page.evaluate("(ids) => ids.forEach(id => document.querySelector('#' + id + ' input[type=checkbox]')"
                           ".click())", eids)

    def infos(self, eids: list[str]) -> dict[str, str]:
        return self.page.evaluate("(ids) => Object.fromEntries(ids.map(id => [id, "
                                  "document.querySelector('#' + id + ' .info-text')?.innerText ?? null]))", eids)

    def wait_infos(self, wanted: dict[str, str], exact: bool = True) -> None:
        """Until every field's line shows its text (wait_info for many at once; a timeout names the rest)."""
        try:
            self.wait("([wanted, exact]) => Object.entries(wanted).every(([id, want]) => { "
                      "const e = document.querySelector('#' + id + ' .info-text'); "
                      "return !!e && (exact ? e.innerText.trim() === want.trim() : e.innerText.includes(want)); })",
                      wanted, exact)
        except playwright_api.TimeoutError:
            shown = self.infos(list(wanted))
            rest = {eid: shown[eid] for eid, want in wanted.items()
                    if shown[eid] is None or (shown[eid].strip() != want.strip() if exact else want not in shown[eid])}
            raise AssertionError(f"lines never shown: {rest} (wanted {[wanted[e] for e in rest]})") from None

    def accordion(self, eid: str, *, toggle: bool) -> None:
        """Opened (a closed one), or closed and opened again (toggle=True)."""
        button = self.el(eid).locator("button.label-wrap").first
        already = "open" in (button.get_attribute("class") or "").split()
        for _ in range(2 if toggle or already else 1):
            button.click()
            self.page.wait_for_timeout(150)
        assert "open" in (button.get_attribute("class") or "").split(), f"{eid} did not open"
        self.done.add(eid)

    def click(self, eid: str) -> None:
        self.el(eid).click()
        self.done.add(eid)


def walk_data(w: Walk, workroot: Path) -> None:
    page, lang = w.page, w.lang
    data_dir = str(workroot / "data")
    chosen = w.tokens("data-datasets")
    w.type("data-dir", "/nonexistent-qh-walk", enter=True)
    wait_text(page, "#data-msg", "⚠", "dataset_dir")
    w.type("data-dir", data_dir, enter=True)
    page.wait_for_function("() => !document.querySelector('#data-msg').innerText.includes('⚠')")
    w.done.add("data-dir")
    w.click("data-refresh")
    w.multi_each("data-datasets", keep=chosen)
    walk_mix(w)
    def inspected(label: str) -> None:  # the preview's head names the dataset, with no error
        name = label.split(" · ")[0]
        try:
            page.wait_for_function("(name) => { const m = document.querySelector('#data-msg').innerText; "
                                   "return m.startsWith(name) && !m.includes('⚠'); }", arg=name, timeout=150_000)
        except playwright_api.TimeoutError:
            pytest.fail(f"inspecting {name}: {page.inner_text('#data-msg')!r}")

    w.pick_each("data-inspect", after=inspected)
    w.click("data-inspect-btn")
    wait_text(page, "#data-stats", t("stat.tokens_p95", lang))

    def page_of(n: int) -> str:  # "第 n / " or "page n of"
        return t("data.page_of", lang, page=n, pages="§", records="§").split("§")[0]

    w.click("data-next")
    wait_text(page, "#data-page-info", page_of(2))
    w.click("data-prev")
    wait_text(page, "#data-page-info", page_of(1))
    w.type("data-page", "3", enter=True)
    wait_text(page, "#data-page-info", page_of(3))
    w.done.add("data-page")
    w.accordion("data-upload-acc", toggle=False)
    clear = page.locator("#data-upload-file button[aria-label=Clear]")
    if clear.count():  # the file of the walk in the other language
        clear.click()
        clear.wait_for(state="detached")
    w.click("data-upload-check")
    wait_text(page, "#data-msg", t("data.no_file", lang))
    w.click("data-upload-register")  # the same answer
    page.wait_for_timeout(300)
    wait_text(page, "#data-msg", t("data.no_file", lang))
    page.locator("#data-upload-file input[type=file]").set_input_files(str(BAD_DATA / "three_problems.json"))
    w.wait_value("data-upload-name", "three_problems")
    w.done.add("data-upload-file")
    w.type("data-upload-name", "walk_upload")
    w.done.add("data-upload-name")
    w.pick_each("data-upload-format")
    w.type("data-upload-columns", "nonsense")
    w.click("data-upload-check")
    wait_text(page, "#data-msg", "'nonsense'")
    assert ("应写成" if lang == "zh" else "should look like") in page.inner_text("#data-msg")
    w.type("data-upload-columns", "")
    w.done.add("data-upload-columns")
    w.click("data-upload-check")
    wait_text(page, "#data-problems", "empty question")
    w.click("data-upload-register")
    wait_text(page, "#data-msg", "3 个问题" if lang == "zh" else "3 problem(s)")


def walk_mix(w: Walk) -> None:
    """Weights and mix strategy of the two picked datasets: a bad weight shows the core's message
    under the field, good ones change the composition, each strategy is named in it."""
    page, lang = w.page, w.lang
    w.wait_visible("data-weights")
    strategy = {s: t("mix." + s, lang) for s in ("concat", "interleave_under", "interleave_over")}
    wait_text(page, "#data-mix", strategy["concat"])  # no weights: every record once
    for bad, shown in (("x,1", "'x'"), ("1", "1 ")):  # not a number > 0; a count that does not match
        w.type("data-weights", bad)
        message = f"⚠ {translate(form.mix_problem({'datasets': ['a', 'b'], 'weights': bad}) or '(none)', lang)}"
        assert shown in message
        try:  # the core's message under the field, and no composition of bad weights
            w.wait("([want]) => document.querySelector('#data-weights .info-text')?.innerText.trim() === want && "
                   "document.querySelector('#data-mix').innerText.trim() === ''", message)
        except playwright_api.TimeoutError:
            raise AssertionError(f"weights {bad!r}: the line under them shows {w.info('data-weights')!r}, the "
                                 f"composition {page.inner_text('#data-mix')!r}") from None
    w.type("data-weights", "3,1")
    w.wait_info("data-weights", form.field_info("weights", lang))
    wait_text(page, "#data-mix", strategy["interleave_under"])  # weights alone: drawn by weight
    # The strategy that applies: concat with weights draws as interleave_under.
    w.pick_each("data-mix-strategy", after=lambda label: wait_text(
        page, "#data-mix", strategy["interleave_under"] if label == strategy["concat"] else label))
    w.type("data-weights", "")
    wait_text(page, "#data-mix", strategy["concat"])
    w.done.add("data-weights")


def number_invalid(key: str) -> float:
    meta = form.KEYS[key].metadata
    value = meta["min"] - 1
    return -1 if value == 0 and meta["optional"] else value


def walk_params(w: Walk, model_dir: Path) -> None:
    page, lang = w.page, w.lang
    ok = t("params.ok", lang)
    flagged = "超出范围" if lang == "zh" else "out of range"

    def form_ok() -> None:
        wait_text(page, "#params-summary", ok)

    form_ok()
    for eid in ("params-acc-model", "params-acc-method", "params-acc-main"):
        w.accordion(eid, toggle=True)
    w.accordion("params-acc-advanced", toggle=False)
    w.accordion("params-acc-hardware", toggle=False)

    w.pick_each("params-preset", after=lambda _: page.wait_for_timeout(300))
    if w.value("params-preset") != form.DEFAULT_PRESET:  # the form a newcomer sees, again
        w.choose("params-preset", form.DEFAULT_PRESET)
        w.wait_value("params-preset", form.DEFAULT_PRESET)
        page.wait_for_timeout(300)
    form_ok()

    source = {s: t("source." + s, lang) for s in form.MODEL_SOURCES}

    def on_source(label: str) -> None:
        w.wait_visible("params-model-path", label != source["builtin"])
        w.wait_visible("params-known-model", label == source["known"])
        if label == source["known"] and "params-known-model" not in w.done:
            template = w.value("cfg-template")
            w.pick_each("params-known-model")
            w.choose("cfg-template", template)
            w.wait_value("cfg-template", template)

    w.radio_each("params-model-source", [source["builtin"], source["known"], source["local"]], after=on_source)
    w.type("params-model-path", "/nonexistent-qh-walk")
    w.wait_info("params-model-path", "⚠", exact=False)
    w.type("params-model-path", str(model_dir))
    w.wait_info("params-model-path", form.field_info("model_path", lang))
    w.done.add("params-model-path")
    form_ok()

    stages = {s: t("stage." + s, lang) for s in ("pt", "dpo", "kto", "sft")}

    def on_stage(label: str) -> None:
        stage = next(s for s, text in stages.items() if text == label)
        for key, shown in form.pref_shown(stage).items():
            w.wait_visible(f"cfg-{key}", shown)
        if stage == "dpo":
            w.pick_each("cfg-pref_loss")
        keys = [f"cfg-{k}" for k, shown in form.pref_shown(stage).items() if shown and k in PREF_NUMBER_KEYS]
        keys = [eid for eid in keys if eid not in w.done]
        if keys:  # an invalid number in each (flagged, naming it), then the old values
            before = w.values(keys)
            w.fill_all({eid: str(number_invalid(eid[4:])) for eid in keys})
            w.wait_infos(dict.fromkeys(keys, "⚠"), exact=False)
            for eid, message in w.infos(keys).items():
                assert eid[4:] in message and flagged in message, message
            w.fill_all(before)
            w.wait_infos({eid: form.field_info(eid[4:], lang) for eid in keys})
            w.done.update(keys)

    w.radio_each("cfg-stage", list(stages.values()), after=on_stage)
    method = {m: t("finetuning_type." + m, lang) for m in ("lora", "qlora", "full")}

    def on_method(label: str) -> None:
        w.wait_visible("cfg-lora_rank", label != method["full"])
        w.wait_visible("cfg-quantization_bit", label == method["qlora"])
        if label == method["qlora"]:
            w.pick_each("cfg-quantization_bit")
            w.choose("cfg-deepspeed", t("ds.z3", lang))
            w.wait_info("cfg-deepspeed", "ZeRO-3", exact=False)
            w.choose("cfg-deepspeed", t("ds.none", lang))
            w.wait_info("cfg-deepspeed", form.field_info("deepspeed", lang))

    w.radio_each("cfg-finetuning_type", [method["full"], method["qlora"], method["lora"]], after=on_method)
    for eid in ("cfg-template", "cfg-lr_scheduler_type", "cfg-packing", "cfg-deepspeed", "cfg-report_to",
                "cfg-data_engine", "cfg-per_device_train_batch_size"):
        w.pick_each(eid)
    form_ok()
    # The batch picker takes a value typed in too: one it refuses is flagged under it, naming it.
    batch = "cfg-per_device_train_batch_size"
    before = w.values([batch])
    w.fill_all({batch: "auto2"})
    w.wait_info(batch, "'auto2'", exact=False)
    assert "per_device_train_batch_size" in w.info(batch) and "auto" in w.info(batch).split("'auto2'")[-1]
    w.fill_all(before)
    w.wait_info(batch, form.field_info("per_device_train_batch_size", lang))
    form_ok()

    # One invalid value in every number at once (the checks of one change cover the whole form):
    # each field shows its own message, naming it and the value, and each message goes once the
    # old values are back. Typed in one round trip, checked in one wait (a field at a time took
    # a minute a language).
    numbers = [f"cfg-{key}" for key in NUMBER_KEYS]
    before = w.values(numbers)
    w.fill_all({f"cfg-{key}": str(number_invalid(key)) for key in NUMBER_KEYS})
    w.wait_infos(dict.fromkeys(numbers, "⚠"), exact=False)
    messages = w.infos(numbers)
    for key in NUMBER_KEYS:
        message, bad = messages[f"cfg-{key}"], number_invalid(key)
        assert key in message and flagged in message and str(bad).split(".")[0] in message, message
    # The checked picture of flagged fields (every number flagged, the summary naming them, no toast).
    assert "learning_rate" in page.inner_text("#params-summary")
    page.locator("#cfg-learning_rate").scroll_into_view_if_needed()
    assert_tab_shows(page, "params", lang)
    assert shot(page, f"params-flagged-{lang}").stat().st_size > 10_000
    w.fill_all(before)
    w.wait_infos({f"cfg-{key}": form.field_info(key, lang) for key in NUMBER_KEYS})
    w.done.update(numbers)
    # Every text field typed (a path outside the allowed folders is flagged under it), then as it was.
    texts = [f"cfg-{key}" for key in TEXT_KEYS]
    before = w.values(texts)
    w.fill_all({f"cfg-{key}": TEXT_INVALID[key] or "qa" for key in TEXT_KEYS})
    w.wait_infos({f"cfg-{key}": "⚠" for key in TEXT_KEYS if TEXT_INVALID[key]}, exact=False)
    w.fill_all(before)
    w.wait_infos({f"cfg-{key}": form.field_info(key, lang) for key in TEXT_KEYS})
    w.done.update(texts)
    # Every checkbox on (bf16 with fp16 flags both), then off again: clicked in one round trip each way.
    checks = [f"cfg-{key}" for key in CHECK_KEYS]
    assert not any(w.checked(checks).values())  # the preset's form: all off
    w.click_all(checks)
    w.wait("([ids]) => ids.every(id => document.querySelector('#' + id + ' input[type=checkbox]').checked)", checks)
    w.wait_infos({"cfg-bf16": "fp16", "cfg-fp16": "bf16"}, exact=False)
    w.click_all(checks)
    w.wait("([ids]) => ids.every(id => !document.querySelector('#' + id + ' input[type=checkbox]').checked)", checks)
    w.wait_infos({f"cfg-{key}": form.field_info(key, lang) for key in CHECK_KEYS})
    w.done.update(checks)
    form_ok()

    w.click("params-preview")
    wait_text(page, "#params-command", "trainer_core train")
    wait_text(page, "#params-msg", t("mix.line", lang, total="§", parts="§").split("§")[0])  # the composition
    w.type("params-config-path", "configs/walk.txt")
    w.click("params-save")
    wait_text(page, "#params-msg", "'configs/walk.txt'")
    assert (".yaml 结尾" if lang == "zh" else "ends in .yaml") in page.inner_text("#params-msg")
    w.type("params-config-path", "configs/my_run.yaml")
    w.done.add("params-config-path")
    w.click("params-save")
    wait_text(page, "#params-msg", t("params.saved", lang, path="").strip())
    w.click("params-load")
    wait_text(page, "#params-msg", t("params.loaded", lang, path="configs/my_run.yaml"))
    with page.expect_file_chooser() as chooser:
        page.click("#params-upload")
    chooser.value.set_files(str(w.workroot / "work" / "configs" / "my_run.yaml"))
    wait_text(page, "#params-msg", t("params.loaded", lang, path="my_run.yaml"))
    w.done.add("params-upload")
    form_ok()
    w.accordion("params-acc-lrfind", toggle=False)  # the LR range test: nothing to use before a test ran
    assert page.evaluate("() => document.querySelector('#lrfind-use').disabled"), "'use' is enabled without a test"
    w.done.add("lrfind-use")
    walk_plan(w)


def walk_plan(w: Walk) -> None:
    """The plan panel: every kind named in its plan, the counts and the price followed, a count of 0
    said in the panel (never a toast); the walk's tiny model fits anywhere, so apply stays disabled."""
    page, lang = w.page, w.lang

    def plan_shows(*texts: str) -> None:
        try:
            w.wait("([texts]) => { const e = document.querySelector('#plan-view'); "
                   "return !!e && texts.every(x => e.innerText.includes(x)); }", list(texts))
        except playwright_api.TimeoutError:
            raise AssertionError(f"the plan never showed {texts}: {page.inner_text('#plan-view')!r}") from None

    w.accordion("plan-acc", toggle=True)
    this_machine = t("plan.this_machine", lang)
    plan_shows(t("plan.this_machine_is", lang, hardware=""), "✓")
    w.pick_each("plan-kind", after=lambda label: plan_shows(
        t("plan.this_machine_is", lang, hardware="") if label == this_machine else f"1 × {label}"))
    w.choose("plan-kind", "A100-40GB")
    for eid, bad, good, shown in (("plan-gpus", "0", "2", "2 × A100-40GB"),
                                  ("plan-nodes", "0", "2", "2 × 1 × A100-40GB")):
        w.type(eid, bad)
        plan_shows("⚠", t("plan.gpus" if eid == "plan-gpus" else "plan.nodes", lang))
        w.type(eid, good)
        plan_shows(shown)
        w.type(eid, "1")
        w.done.add(eid)
    w.type("plan-price", "2.5")
    plan_shows(t("plan.cost", lang, cost="§", price="2.5").split("§")[1])
    w.type("plan-price", "")
    page.wait_for_function("(cost) => !document.querySelector('#plan-view').innerText.includes(cost)",
                           arg=t("plan.cost", lang, cost="§", price="§").split("§")[0])
    w.done.add("plan-price")
    assert page.locator("#plan-apply").is_disabled()
    w.done.add("plan-apply")
    w.choose("plan-kind", this_machine)
    plan_shows(t("plan.this_machine_is", lang, hardware=""), "✓")


def walk_train(w: Walk) -> None:
    page = w.page

    def on_run(label: str) -> None:
        failed = "broken" in label
        wait_text(page, "#train-progress", t("state.failed" if failed else "state.finished", w.lang))
        page.wait_for_function("([f]) => document.querySelector('#train-resume').disabled === !f && "
                               "document.querySelector('#train-abort').disabled", arg=[failed])

    runs = w.pick_each("train-run", after=on_run)
    w.done.add("train-abort")  # disabled for every run above: none is running
    w.multi_each("train-overlay", keep=[])
    firsts = page.locator("#train-runs [role=gridcell].first-column")  # the rows' first cells
    names = [x.strip() for x in firsts.all_inner_texts()]
    assert len(names) == len(runs) == 2, names
    for i, name in enumerate(names):
        firsts.nth(i).click()
        page.wait_for_function("(n) => document.querySelector('#train-run input').value.startsWith(n)", arg=name)
    w.done.add("train-runs")


def walk_evaluate(w: Walk) -> None:
    w.pick_each("eval-run")
    w.toggle("eval-base-only")
    w.group_each("eval-tasks")
    w.multi_each("eval-datasets", keep=[])
    w.pick_each("eval-split")
    for eid, value in (("eval-max-samples", "5"), ("eval-n-shot", "1"), ("eval-max-new-tokens", "32"),
                       ("eval-batch-size", "2")):
        before = w.value(eid)
        w.type(eid, value)
        w.type(eid, before)
        w.done.add(eid)
    w.open_empty("eval-job")
    w.accordion("eval-compare-acc", toggle=False)
    w.open_empty("eval-compare-jobs")


def walk_chat(w: Walk) -> None:
    page, lang = w.page, w.lang
    w.radio_each("chat-source", [t("chat.src_base", lang), t("chat.src_run", lang)])
    w.pick_each("chat-run")
    w.click("chat-unload")
    wait_text(page, "#chat-status", t("chat.unloaded", lang))
    w.type("chat-system", "你是中医助手")
    w.type("chat-system", "")
    w.done.add("chat-system")
    w.toggle("chat-compare", after=lambda on: w.wait_visible("chat-base", on))
    w.accordion("chat-settings-acc", toggle=False)
    for eid, value in (("chat-max-new-tokens", "64"), ("chat-temperature", "0.5"), ("chat-top-p", "0.8"),
                       ("chat-top-k", "20"), ("chat-repetition-penalty", "1.2")):
        box = page.locator(f"#{eid} input[type=number]")
        before = box.input_value()
        for v in (value, before):
            box.fill(v)
            box.press("Enter")
            page.wait_for_function("([id, v]) => Number(document.querySelector('#' + id + ' input[type=range]')"
                                   ".value) === Number(v)", arg=[eid, v])
        w.done.add(eid)
    w.toggle("chat-greedy")
    w.type("chat-input", "黄芪的功效？")
    w.done.add("chat-input")
    w.click("chat-send")
    wait_text(page, "#chat-status", t("chat.load_first", lang))
    w.click("chat-clear")
    walk_arena(w)


def walk_arena(w: Walk) -> None:
    page, lang = w.page, w.lang
    w.accordion("arena-acc", toggle=False)
    w.multi_each("arena-contestants", keep=[])
    w.click("arena-load")
    wait_text(page, "#arena-status", translate("pick 2 to 4 models for the arena (0 picked)", lang))
    w.type("arena-question", "附子的用量？")
    w.done.add("arena-question")
    for vote in ("a", "b", "tie", "bad"):  # each after a refused question, so its own message is waited for
        w.click("arena-send")
        wait_text(page, "#arena-status", t("arena.load_first", lang))
        w.click(f"arena-vote-{vote}")
        wait_text(page, "#arena-status", t("arena.ask_first", lang))
    for eid in ("arena-correction", "arena-reviewer"):
        w.type(eid, "张医生")
        w.type(eid, "")
        w.done.add(eid)
    w.click("arena-train-dpo")
    wait_text(page, "#arena-status", t("arena.no_pairs_yet", lang, dataset="arena_pairs"))


def walk_export(w: Walk) -> None:
    w.pick_each("export-run")
    w.pick_each("export-dtype")
    w.type("export-shard", "1GB")
    w.type("export-shard", "2GB")
    w.done.add("export-shard")
    w.group_each("export-gguf")
    w.toggle("export-overwrite")
    w.open_empty("export-job")
    w.accordion("export-card-acc", toggle=True)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_walk_every_control(page, lang, workroot, tiny_model_dir):
    # A fresh page for each walk (one page that took a whole walk answers slower); the reload cuts
    # the page's open requests (its timers' polls): those errors are expected.
    page.errors.expect("signal is aborted without reason")
    page.errors.expect("Connection errored out")
    page.reload()
    page.wait_for_selector("#tab-data")
    page.wait_for_timeout(1500)
    started = time.monotonic()
    set_language(page, lang)
    w = Walk(page, lang)
    w.workroot = workroot
    w.done.update({"qh-lang", *(f"tab-{name}" for name in TABS)})
    for name, walk in (("data", lambda: walk_data(w, workroot)), ("params", lambda: walk_params(w, tiny_model_dir)),
                       ("train", lambda: walk_train(w)), ("evaluate", lambda: walk_evaluate(w)),
                       ("chat", lambda: walk_chat(w)), ("export", lambda: walk_export(w))):
        open_tab(page, name, lang)
        assert_tab_shows(page, name, lang)
        tab_started = time.monotonic()
        walk()
        print(f"walk ({lang}) {name}: {time.monotonic() - tab_started:.0f} s")
    missing = sorted(set(CASES) - w.done)
    assert not missing, f"cases the walk did not do: {missing}"
    # Nothing the walk typed or saw is kept in the browser (Gradio's run history is off).
    kept = page.evaluate("() => Object.keys(localStorage).filter(k => k.startsWith('gradio:run-history'))")
    assert not kept, f"the browser keeps a run history: {kept}"
    print(f"walk ({lang}): {len(w.done)} controls in {time.monotonic() - started:.0f} s")


# ---- both languages complete ---------------------------------------------------------------

# Not the page's own words: user data (dataset names and records, paths typed), model and job
# output (chat replies, consoles, the model card), the command and YAML, and the language radio
# (each language named in itself, on purpose).
NOT_PAGE_TEXT = ("#qh-lang", "#data-preview", "#data-problems", "#data-datasets .token", "#data-inspect",
                 "#eval-datasets .token", "#chat-tuned", "#chat-base", "#train-console", "#eval-console",
                 "#export-console", "#export-card", "#params-command", "#params-yaml", "#arena-answers",
                 "#arena-reveal")
# English the Chinese page keeps: names of methods, formats, libraries and hardware, config keys
# (snake_case, shown with their messages so the YAML can be found), units and plain values.
TECHNICAL = set("""
LoRA QLoRA SFT PT DeepSpeed ZeRO CPU GPU GPUs CUDA AVX BF16 AMX AdamW bf16 fp16 loss token tokens tok s P50 P95
BLEU ROUGE GGUF llama cpp Ollama safetensors YAML yaml JSON json README md SmolLM2 M Qwen2 Instruct Llama B
alpha dropout r hostfile offload bitsandbytes top_p top_k auto none all sft pt lora qlora full chatml qwen llama3
linear cosine cosine_with_restarts polynomial constant constant_with_warmup inverse_sqrt cosine_with_min_lr
wandb tensorboard float32 bfloat16 float16 f16 q8_0 alpaca sharegpt openai text mcq UTF GB18030 csv tsv
parquet txt jsonl presets config q_proj v_proj true false null GB Tuner run eval train export Ampere
instruction input output system conversations messages memory arrow Arrow Python MiB GiB Wilson
DPO KTO ORPO SimPO IPO dpo kto sigmoid ipo orpo simpo gamma beta
""".split()) | set(FAMILIES) | {"qa", "dialog", "corpus", "done", "broken", "walk_upload"}  # + the test's data
VISIBLE_TEXT = """(excluded) => {
    const out = [];
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const e = n.parentElement;
        if (!n.textContent.trim() || !e || !e.checkVisibility() || excluded.some(s => e.closest(s))) continue;
        if (e.closest('script, style, svg, .sr-only, [aria-live]')) continue;  // not on screen
        out.push(n.textContent.trim());
    }
    for (const e of document.querySelectorAll('input[placeholder], textarea[placeholder]'))
        if (e.placeholder && e.checkVisibility() && !excluded.some(s => e.closest(s))) out.push(e.placeholder);
    return out;
}"""


def page_texts(page, lang: str) -> dict[str, list[str]]:
    """Every visible text of every tab (and the placeholders), tab by tab."""
    texts = {}
    for name in TABS:
        open_tab(page, name, lang)
        page.wait_for_timeout(300)
        texts[name] = page.evaluate(VISIBLE_TEXT, list(NOT_PAGE_TEXT))
    return texts


def english_words(text: str) -> list[str]:
    """Words in Latin letters that are no technical token, path, key, number or code."""
    text = re.sub(r"`[^`]*`|\S*[/\\]\S*|\S+\.(?:json|yaml|yml|txt|csv|py)\b|https?://\S+", " ", text)
    words = re.findall(r"[A-Za-z][A-Za-z0-9_]*", text)
    return [w for w in words if w not in TECHNICAL and "_" not in w and w not in form.KEYS
            and not re.fullmatch(r"[a-z]?\d.*|[A-Z]{1,2}\d*", w)]


def show_status_lines(page, lang: str) -> None:
    """Status lines that stay on the page until the next action: the language must reach them too."""
    open_tab(page, "params", lang)
    page.click("#params-preview")
    wait_text(page, "#params-msg", t("params.previewed", lang))
    open_tab(page, "chat", lang)
    page.click("#chat-unload")
    wait_text(page, "#chat-status", t("chat.unloaded", lang))
    open_tab(page, "train", lang)
    page.locator("#train-run input[role=combobox]").click()
    page.locator("#train-run [role=option]").filter(has_text="broken").click()  # the failed run: its error
    wait_text(page, "#train-progress", t("state.failed", lang))


def test_each_language_is_complete(page):
    """The Chinese page's status lines re-written in English, then back: the English page has no
    Chinese outside user data and model output, the Chinese page no English beyond technical tokens
    (one test, each language switched to once: a switch re-labels the whole page)."""
    set_language(page, "zh")
    show_status_lines(page, "zh")
    set_language(page, "en")
    wait_text(page, "#params-msg", t("params.previewed", "en"))  # re-written, not left in Chinese
    wait_text(page, "#train-progress", t("state.failed", "en"))
    chinese = {name: [x for x in texts if CJK.search(x)] for name, texts in page_texts(page, "en").items()}
    chinese = {name: found for name, found in chinese.items() if found}
    assert not chinese, f"Chinese on the English page: {chinese}"
    set_language(page, "zh")
    wait_text(page, "#params-msg", t("params.previewed", "zh"))  # and back from English
    wait_text(page, "#train-progress", "任务的进程已不在")  # the core's message on the failed run, in Chinese
    english = {name: sorted({f"{w} (in {x[:80]!r})" for x in texts for w in english_words(x)}) for name, texts in
               page_texts(page, "zh").items()}
    english = {name: found for name, found in english.items() if found}
    assert not english, f"English on the Chinese page: {english}"


# ---- screenshots that are checked ----------------------------------------------------------

# (Every tab in both languages, checked before its picture: test_workbench.py; the flagged
# Parameters tab in each language: the walk, where every number is flagged at once.)
