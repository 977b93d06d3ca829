"""The workbench end to end in headless Chromium: data preview and stats, a bad upload, a short
training to 100 %, an abort (after a page reload re-attaches to the job), a streamed chat reply,
an evaluation, an export; screenshots of every tab in both languages go to test-artifacts/.

The browser, the workbench and the error guard are pagekit's (shared with test_walk.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from pagekit import (
    ARTIFACTS,
    BAD_DATA,
    assert_no_errors,
    chromium_page,
    open_tab,
    set_number,
    shoot_every_tab,
    shot,
    wait_text,
    workbench,
)

from app.i18n import t


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """The workbench on a free localhost port, preselecting the tiny model and a copy of the tiny data."""
    with workbench(tmp_path_factory.mktemp("workbench"), tiny_model_dir, tiny_data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(app_url):
    with chromium_page(app_url) as page:
        yield page


@pytest.fixture
def page(browser_page):
    """The shared page, guarded: the test fails on any error toast, console error or page error it
    did not expect (`page.errors.expect(text)`), including those the page showed on load."""
    yield browser_page
    assert_no_errors(browser_page)


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
    wait_text(page, "#data-msg", "文件有 3 个问题")  # refused: fix the file first (the message in the page's language)
    assert "Traceback" not in page.inner_text("body")
    shot(page, "data-bad-upload-zh")


def test_mix_datasets_by_weight_and_see_the_composition(page):
    """Issue 18: weights for the picked datasets on the Data tab, the composition the core counts
    beside them, and the same in the Parameters preview (dataset: qa:3,dialog:1)."""
    open_tab(page, "data")
    wait_text(page, "#data-mix", "拼接")  # qa and dialog, no weights: every record once
    mix = page.inner_text("#data-mix")
    assert "qa" in mix and "dialog" in mix and "每轮训练" in mix, mix
    page.fill("#data-weights textarea, #data-weights input", "3,1,2")
    page.press("#data-weights textarea, #data-weights input", "Tab")
    wait_text(page, "#data-weights .info-text", "⚠ interleave_probs：3 个权重，却有 2 个数据集")
    page.fill("#data-weights textarea, #data-weights input", "3,1")
    page.press("#data-weights textarea, #data-weights input", "Tab")
    wait_text(page, "#data-mix", "interleave_under")
    rows = page.locator("#data-mix tbody tr")
    assert rows.count() == 2 and rows.nth(0).inner_text().split("\t")[:2] == ["qa", "3"], rows.all_inner_texts()
    shot(page, "data-mix-zh")
    open_tab(page, "params")
    page.click("#params-preview")
    wait_text(page, "#params-yaml", "dataset: qa:3,dialog:1")
    wait_text(page, "#params-msg", "训练集构成（每轮")
    assert "qa " in page.inner_text("#params-msg") and "dialog " in page.inner_text("#params-msg")
    open_tab(page, "data")  # the runs below train on the plain concatenation again
    page.fill("#data-weights textarea, #data-weights input", "")
    page.press("#data-weights textarea, #data-weights input", "Tab")
    wait_text(page, "#data-mix", "拼接")


def test_lr_range_test_suggests_a_learning_rate_for_the_form(page):
    """Issue 19: the range test of the form's config as a job, its curve and suggestion, and the
    suggestion put into learning_rate. Full tuning: the tiny model's LoRA barely moves in 40 steps."""
    open_tab(page, "params")
    page.locator("#cfg-finetuning_type").get_by_text(t("finetuning_type.full", "zh"), exact=True).click()
    page.get_by_text(t("lrfind.acc", "zh"), exact=True).click()
    page.click("#lrfind-start")
    wait_text(page, "#lrfind-msg", "已开始学习率范围测试")
    wait_text(page, "#lrfind-progress", "已完成", "失败", timeout=120_000)
    assert "已完成" in page.inner_text("#lrfind-progress"), page.inner_text("#lrfind-progress")
    wait_text(page, "#lrfind-suggestion", "建议学习率", "没有建议")
    assert "建议学习率" in page.inner_text("#lrfind-suggestion"), page.inner_text("#lrfind-suggestion")
    assert page.locator("#lrfind-plot svg #lr-smoothed").count() == 1  # the curve, with its suggestion marked
    assert page.locator("#lrfind-plot svg #lr-suggestion").count() == 1
    suggested = re.search(r"\d\.\de[-+]\d\d", page.inner_text("#lrfind-suggestion")).group(0)
    page.wait_for_selector("#lrfind-use:not([disabled])")
    page.click("#lrfind-use")
    wait_text(page, "#lrfind-msg", suggested)
    page.wait_for_function("([want]) => Number(document.querySelector('#cfg-learning_rate input').value) === want",
                           arg=[float(suggested)])
    shot(page, "params-lrfind-zh")
    # A reloaded page shows the newest test again (from its folder), the form as a newcomer sees it.
    page.errors.expect("signal is aborted without reason")  # the reload cuts the page's open polls
    page.errors.expect("Connection errored out")
    page.reload()
    page.wait_for_selector("#tab-data")
    open_tab(page, "params")
    page.get_by_text(t("lrfind.acc", "zh"), exact=True).click()
    wait_text(page, "#lrfind-suggestion", suggested)
    page.wait_for_selector("#lrfind-use:not([disabled])")
    assert page.locator("#cfg-finetuning_type input[value=lora]").is_checked()


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


def _answer(page, letter: str) -> str:
    return page.locator(f"#arena-answer-{letter} textarea").input_value()


def test_arena_two_models_answer_blind_and_the_vote_is_saved(page):
    """Issue 20: the base and the trained run in the arena (one copy of the weights), answers in
    unnamed columns, a vote for A with a reviewer's name; then the names, the saved record (the
    file the status line names) and the tally."""
    started = time.monotonic()
    open_tab(page, "chat")
    _open_accordion(page, "arena-acc")
    base = t("arena.base_choice", "zh")
    page.locator("#arena-contestants input[role=combobox]").click()
    options = page.locator("#arena-contestants [role=option]").evaluate_all(
        "os => os.map(o => o.getAttribute('aria-label'))")
    assert options[0] == base and len(options) >= 2, options
    run_name = options[1]  # the newest finished run
    for label in (base, run_name):
        page.locator(f'#arena-contestants [role=option][aria-label="{label}"]').click()
    page.locator("#arena-contestants input[role=combobox]").press("Escape")
    page.wait_for_function("() => document.querySelectorAll('#arena-contestants .token').length === 2")
    page.click("#arena-load")
    wait_text(page, "#arena-status", "已加载 2 个参赛模型")
    assert "共 1 份权重" in page.inner_text("#arena-status")  # the run's adapter on the base's one copy
    page.fill("#arena-question textarea", "附子的用量？")
    page.click("#arena-send")
    wait_text(page, "#arena-status", t("arena.vote_now", "zh"), timeout=60_000)
    texts = {x: _answer(page, x) for x in "ab"}
    assert all(v.strip() for v in texts.values()), texts
    assert [page.inner_text(f"#arena-answer-{x} label").strip() for x in "ab"] == ["模型 A", "模型 B"]
    assert not page.locator("#arena-answer-c").is_visible() and not page.locator("#arena-vote-c").is_visible()
    assert run_name not in page.inner_text("#arena-answers") and page.inner_text("#arena-reveal").strip() == ""
    page.fill("#arena-reviewer textarea, #arena-reviewer input", "张医生")
    page.click("#arena-vote-a")
    wait_text(page, "#arena-reveal", "揭晓")
    reveal = page.inner_text("#arena-reveal")
    assert "投票：A 更好" in reveal and run_name in reveal and "base: " in reveal, reveal
    saved = Path(re.search(r"已保存到 (\S+arena_votes\.jsonl)", reveal).group(1))
    [record] = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert record["vote"] == "A" and record["reviewer"] == "张医生" and record["question"] == "附子的用量？"
    models = [a["model"] for a in record["answers"]]
    assert run_name in models and [m for m in models if m != run_name][0].startswith("base: "), models
    as_shown = [a["text"].replace("\r\n", "\n").replace("\r", "\n") for a in record["answers"]]  # a textarea's value
    assert as_shown == [texts["a"], texts["b"]]
    assert f"模型 A = {record['answers'][0]['model']}" in reveal  # the names shown are the ones saved
    assert "数据集 arena_pairs 现有 1 个偏好对" in reveal
    tally = page.inner_text("#arena-tally")
    assert "1 的胜率" in tally and "共 1 票" in tally and run_name in tally, tally
    page.click("#arena-vote-b")  # one vote per round
    wait_text(page, "#arena-status", t("arena.voted_already", "zh"))
    shot(page, "chat-arena-zh")
    assert time.monotonic() - started < 60


def test_train_dpo_on_the_arena_votes_opens_the_parameters_tab(page):
    """Issue 20: after the vote above, one click: the Parameters tab with stage dpo and the votes'
    pairs as the only training dataset. Then the form as it was, for the tests below."""
    open_tab(page, "data")
    before = [x.strip() for x in page.locator("#data-datasets .token > span").all_inner_texts()]
    open_tab(page, "chat")
    page.click("#arena-train-dpo")
    wait_text(page, "#arena-status", t("arena.dpo_ready", "zh", dataset="arena_pairs"), timeout=10_000)
    page.wait_for_function("(name) => document.querySelector(`button[role=tab][aria-selected=true]`)"
                           ".innerText.trim() === name", arg=t("tab.params", "zh"))
    page.wait_for_function("() => document.querySelector('#cfg-stage input[value=dpo]').checked")
    open_tab(page, "data")
    tokens = page.locator("#data-datasets .token > span")
    assert [x.strip() for x in tokens.all_inner_texts()] == ["arena_pairs · alpaca"]
    shot(page, "data-arena-pairs-zh")
    page.locator("#data-datasets .remove-all").click()
    for label in before:
        page.locator("#data-datasets input[role=combobox]").click()
        page.locator(f'#data-datasets [role=option][aria-label="{label}"]').click()
    page.locator("#data-datasets input[role=combobox]").press("Escape")
    page.wait_for_function("(n) => document.querySelectorAll('#data-datasets .token').length === n", arg=len(before))
    open_tab(page, "params")
    page.locator("#cfg-stage").get_by_text(t("stage.sft", "zh"), exact=True).click()
    page.wait_for_function("() => document.querySelector('#cfg-stage input[value=sft]').checked")


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
    shoot_every_tab(page)  # each picture checked first: its tab's main controls visible, no toast
    (ARTIFACTS / "index.json").write_text(json.dumps(sorted(p.name for p in ARTIFACTS.glob("*.png"))))


def _pick(page, elem_id: str, label: str) -> None:
    page.locator(f"#{elem_id} input[role=combobox]").click()
    page.locator(f'#{elem_id} [role=option][aria-label="{label}"]').click()
    page.wait_for_function("([id, v]) => document.querySelector('#' + id + ' input').value === v", arg=[elem_id, label])


def _open_accordion(page, elem_id: str, want_open: bool = True) -> None:
    button = page.locator(f"#{elem_id} button.label-wrap").first
    if ("open" in (button.get_attribute("class") or "").split()) != want_open:
        button.click()
        page.wait_for_timeout(200)


def _checkbox(page, elem_id: str, on: bool) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]")
    if box.is_checked() != on:
        box.click()
    page.wait_for_function("([id, on]) => document.querySelector('#' + id + ' input[type=checkbox]').checked === on",
                           arg=[elem_id, on])


def _wait_plan(page, *texts: str) -> str:
    """Until the plan panel shows every one of texts (a plan of the form as it is now); its text."""
    try:
        page.wait_for_function("(texts) => { const e = document.querySelector('#plan-view'); "
                               "return !!e && texts.every(x => e.innerText.includes(x)); }", arg=list(texts),
                               timeout=60_000)
    except playwright_api.TimeoutError:
        raise AssertionError(f"the plan never showed {texts}; it shows {page.inner_text('#plan-view')!r}") from None
    return page.inner_text("#plan-view")


def test_the_plan_panel_says_the_14b_case_does_not_fit_and_applies_its_fix(page):
    """Issue 19: the known Qwen2.5-14B (no weights here: its shipped config.json), LoRA r64, cutoff
    2048, batch 4, bf16 on 4 x A100-40GB, ZeRO-2 and ZeRO-3: it does not fit, the first fix is
    gradient checkpointing, and applying it sets the field, after which the plan fits. Packed, so
    that every row is cutoff_len long on the short test data: the totals are the CLI's (`plan ...
    --no-data`: 96.7 and 114.1 GiB, 36.6 and 32.2 GiB with checkpointing). The module's last test:
    the form stays as it leaves it."""
    open_tab(page, "params")
    wait_text(page, "#plan-view", "放得下")  # the form a newcomer sees, on this machine
    model_path = page.locator("#params-model-path textarea, #params-model-path input").first
    page.locator("#params-model-source").get_by_text(t("source.known", "zh"), exact=True).click()
    _pick(page, "params-known-model", "Qwen2.5-14B-Instruct")
    model_path.fill("")  # no local weights
    model_path.press("Tab")
    for elem_id, value in (("cfg-lora_rank", 64), ("cfg-cutoff_len", 2048), ("cfg-per_device_train_batch_size", 4)):
        set_number(page, elem_id, value)
    _open_accordion(page, "params-acc-advanced")
    _open_accordion(page, "params-acc-hardware")
    _checkbox(page, "cfg-bf16", True)
    _pick(page, "cfg-packing", t("packing.true", "zh"))
    _pick(page, "plan-kind", "A100-40GB")
    set_number(page, "plan-gpus", 4)
    set_number(page, "plan-price", 2.5)
    for stage, total, fixed in (("z2", "96.7 GiB", "36.6 GiB"), ("z3", "114.1 GiB", "32.2 GiB")):
        _checkbox(page, "cfg-gradient_checkpointing", False)
        _pick(page, "cfg-deepspeed", t(f"ds.{stage}", "zh"))
        panel = _wait_plan(page, "放不下", "4 × A100-40GB", "qwen2，14.77B 参数", f"需要 {total}")
        first = page.inner_text("#plan-view .qh-plan-fixes li.first")
        assert first.startswith(t("plan.change_checkpointing_on", "zh") + " →") and fixed in first, first
        assert page.locator("#plan-view .qh-plan-seg").count() >= 6 and page.locator("#plan-view .qh-plan-cap").count()
        assert "GPU 小时，费用" in panel, panel  # the cost, with a price
        if stage == "z2":
            page.locator("#plan-acc").screenshot(path=str(ARTIFACTS / "plan-does-not-fit-zh.png"))
        page.click("#plan-apply")
        page.wait_for_function("() => document.querySelector('#cfg-gradient_checkpointing input').checked")
        _wait_plan(page, "放得下", "4 × A100-40GB", "qwen2，14.77B 参数", f"需要 {fixed}")
        assert page.locator("#plan-apply").is_disabled()  # nothing left to fix
    page.locator("#plan-acc").screenshot(path=str(ARTIFACTS / "plan-fits-zh.png"))
