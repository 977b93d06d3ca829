"""Every string of the workbench, Chinese first, English second: key -> (zh, en).

`t(key, lang, **values)` looks a string up and fills `{placeholders}`. A missing key is a bug
(KeyError), and tests check that every key has both languages.

Messages written in English by the core (config problems, a job's error) and by the tabs' own
checks (paths, uploads, config files) are translated on the page by `translate`: each line that
matches one of MESSAGES (or a TEXT string, in either language) is written in the page's
language; a line that matches none is shown as it is (data problems, library errors).
"""

from __future__ import annotations

import functools
import re
import string

from trainer_core.planner import GPU_KINDS

LANGS = ("zh", "en")

TEXT: dict[str, tuple[str, str]] = {
    # ---- page -----------------------------------------------------------------------------
    "app.title": ("数智岐黄 Tuner", "ShuZhiQiHuang Tuner"),
    "app.header": ("## 数智岐黄 Tuner · 中西医结合大模型微调工作台",
                   "## ShuZhiQiHuang Tuner · fine-tuning workbench for integrated TCM + Western medicine"),
    "tab.data": ("数据", "Data"),
    "tab.params": ("参数", "Parameters"),
    "tab.train": ("训练", "Train"),
    "tab.evaluate": ("评估", "Evaluate"),
    "tab.chat": ("对话", "Chat"),
    "tab.export": ("导出", "Export"),
    # ---- states and roles -----------------------------------------------------------------
    "state.running": ("运行中", "running"),
    "state.finished": ("已完成", "finished"),
    "state.failed": ("失败", "failed"),
    "state.aborted": ("已中止", "aborted"),
    "state.unknown": ("未知", "unknown"),
    "job.stopped_at": ("已按请求在第 {step} 步停止并保存检查点；点「继续训练」从这里接着训练。",
                       "Stopped on request at step {step} with a checkpoint; press Resume to continue from there."),
    "job.stopped_before_start": ("已按请求停止：训练尚未开始，没有需要保存的内容。",
                                 "Stopped on request before training began; there was nothing to save."),
    "role.system": ("系统", "system"),
    "role.user": ("用户", "user"),
    "role.assistant": ("助手", "assistant"),
    "role.tool": ("工具", "tool"),
    "job.none": ("还没有任务。", "No job yet."),
    "job.eta": ("剩余", "ETA"),
    "job.preparing": ("准备数据", "preparing data"),
    "job.elapsed": ("已用", "elapsed"),
    # ---- Data tab -------------------------------------------------------------------------
    "data.intro": ("选择用于训练的数据集，逐页查看对话、统计与问题；也可以上传新文件。",
                   "Choose the datasets to train on; page through them as conversations, see their statistics "
                   "and problems; or upload a new file."),
    "data.dir": ("数据文件夹（含 dataset_info.json）", "Data folder (holds dataset_info.json)"),
    "data.refresh": ("刷新", "Refresh"),
    "data.train_sets": ("训练数据集", "Datasets to train on"),
    "data.train_sets_info": ("可多选；参数页与训练页使用这里的选择。",
                             "Pick one or more; the Parameters and Train tabs use this choice."),
    "data.weights": ("混合权重", "Mixing weights"),
    "data.weights_ph": ("例如 0.6,0.4（按上面的选择顺序）", "e.g. 0.6,0.4 (in the order picked above)"),
    "help.weights": ("每个所选数据集一个大于 0 的数，按上面的选择顺序，用逗号分隔；留空则不加权",
                     "one number > 0 per picked dataset, in the order picked above, comma-separated; empty: "
                     "unweighted"),
    "data.mix_strategy": ("混合方式", "Mixing"),
    "data.mix_strategy_info": ("填了权重而选“拼接”时，按 interleave_under 抽取",
                               "with weights, concat draws as interleave_under"),
    "mix.concat": ("拼接（每条记录各用一次）", "concat (every record once)"),
    "mix.interleave_under": ("按权重抽取，最先用完的数据集用完即停（interleave_under）",
                             "interleave_under (drawn by weight until the first dataset runs out)"),
    "mix.interleave_over": ("按权重抽取，直到每个数据集都用完一次，其余的重复（interleave_over）",
                            "interleave_over (drawn by weight until each dataset has run out once, the others "
                            "repeated)"),
    "mix.head": ("**每轮训练 {total} 条记录**：{strategy}{held_out}",
                 "**{total} training records per epoch**: {strategy}{held_out}"),
    "mix.held_out": ("；另有 {n} 条留作验证", "; {n} held out for validation"),
    "mix.dataset": ("数据集", "Dataset"),
    "mix.weight": ("权重", "Weight"),
    "mix.records": ("每轮条数", "Records per epoch"),
    "mix.share": ("占比", "Share"),
    "mix.arrow": ("{strategy}。走 Arrow 路径的数据：每个数据集的条数在训练开始、分词之后统计"
                  "（见训练日志与 data_mix.json）。",
                  "{strategy}. Data on the Arrow path: the records of each dataset are counted once the run has "
                  "tokenized them (its log and data_mix.json)."),
    "mix.streaming": ("{strategy}。streaming：训练时边读边混合，没有按轮计算的条数。",
                      "{strategy}. Streaming: the run mixes the records as it reads them; there is no count per "
                      "epoch."),
    "mix.line": ("训练集构成（每轮 {total} 条）：{parts}", "Training split ({total} records per epoch): {parts}"),
    "data.inspect": ("查看数据集", "Dataset to inspect"),
    "data.inspect_btn": ("查看", "Inspect"),
    "data.upload": ("上传文件", "Upload a file"),
    "data.upload_help": ("支持 .json .jsonl .csv .tsv .parquet .txt（UTF-8 或 GB18030）。先“检查”，没有问题后再“登记”："
                         "文件会以安全的文件名保存到数据文件夹，并写入 dataset_info.json。",
                         "Accepts .json .jsonl .csv .tsv .parquet .txt (UTF-8 or GB18030). Check it first; once it "
                         "has no problems, register it: the file is saved into the data folder under a safe name and "
                         "added to dataset_info.json."),
    "data.upload_file": ("文件", "File"),
    "data.upload_name": ("数据集名称", "Dataset name"),
    "data.upload_format": ("格式", "Format"),
    "data.upload_columns": ("列映射（可选）", "Column mapping (optional)"),
    "data.upload_columns_ph": ("例如 instruction=问题, output=回答", "e.g. instruction=question, output=answer"),
    "data.upload_check": ("检查", "Check"),
    "data.upload_register": ("登记到数据文件夹", "Register in the data folder"),
    "data.no_file": ("请先选择要上传的文件。", "Choose a file to upload first."),
    "data.registered": ("已登记数据集 **{name}**（{path}）。", "Registered dataset **{name}** ({path})."),
    "data.no_registry": ("没有找到 {path}。", "{path} not found."),
    "data.pick_one": ("请选择一个数据集。", "Pick a dataset."),
    "data.inspected": ("**{what}**：{records} 条可用记录，{problems} 个问题。",
                       "**{what}**: {records} usable records, {problems} problem(s)."),
    "data.inspected_large": ("**{what}**：数据量大，由多个进程逐条检查而不整体载入：共 {records} 条记录，"
                             "{valid} 条可用，{problems} 个问题（每类列出前 20 个）；"
                             "统计与预览取自分布于全文件的 {sampled} 条样本。",
                             "**{what}**: large, so every record was checked by worker processes without holding "
                             "the data: {records} records, {valid} usable, {problems} problem(s) (the first 20 of "
                             "each kind listed); statistics and preview come from a sample of {sampled} spread over "
                             "the file(s)."),
    "data.checking_large": ("正在检查 {what}：{done}/{shards} 个分片", "checking {what}: {done}/{shards} shards"),
    "data.no_tokens": ("未能计算 token 统计：", "Token statistics unavailable:"),
    "data.no_records": ("没有可显示的记录。", "No records to show."),
    "data.page_of": ("第 {page} / {pages} 页，共 {records} 条", "page {page} of {pages}, {records} records"),
    "data.prev": ("◀ 上一页", "◀ Previous"),
    "data.next": ("下一页 ▶", "Next ▶"),
    "data.page": ("页码", "Page"),
    "data.answer": ("答案", "Answer"),
    "data.chosen": ("✓ 选中的回答（chosen）", "✓ Chosen answer"),
    "data.rejected": ("✗ 被拒的回答（rejected）", "✗ Rejected answer"),
    "data.desirable": ("✓ 好的回答", "✓ Desirable answer"),
    "data.undesirable": ("✗ 差的回答", "✗ Undesirable answer"),
    "data.stats": ("统计", "Statistics"),
    "data.metric": ("指标", "Metric"),
    "data.value": ("数值", "Value"),
    "data.hist": ("token 长度分布（红线为 cutoff_len）", "Token lengths (red line: cutoff_len)"),
    "data.hist_x": ("每条记录的 token 数", "tokens per record"),
    "data.hist_y": ("记录数", "records"),
    "data.problems": ("问题", "Problems"),
    "data.record": ("记录", "Record"),
    "data.field": ("字段", "Field"),
    "data.problem": ("问题", "Problem"),
    "stat.records": ("记录数", "records"),
    "stat.chosen_chars_p50": ("选中回答字符数 P50", "chosen answer characters p50"),
    "stat.chosen_chars_p95": ("选中回答字符数 P95", "chosen answer characters p95"),
    "stat.chosen_chars_max": ("选中回答字符数最大值", "chosen answer characters max"),
    "stat.rejected_chars_p50": ("被拒回答字符数 P50", "rejected answer characters p50"),
    "stat.rejected_chars_p95": ("被拒回答字符数 P95", "rejected answer characters p95"),
    "stat.rejected_chars_max": ("被拒回答字符数最大值", "rejected answer characters max"),
    "stat.chosen_longer_share": ("选中回答更长的占比", "share where the chosen answer is longer"),
    "stat.desirable": ("好的回答（kto_tag 为真）", "desirable answers (kto_tag true)"),
    "stat.undesirable": ("差的回答（kto_tag 为假）", "undesirable answers (kto_tag false)"),
    "stat.answer_chars_p50": ("回答字符数 P50", "answer characters p50"),
    "stat.answer_chars_p95": ("回答字符数 P95", "answer characters p95"),
    "stat.answer_chars_max": ("回答字符数最大值", "answer characters max"),
    "stat.duplicate_prompts": ("重复的问题", "duplicate prompts"),
    "stat.assistant_turns": ("回答轮数", "assistant turns"),
    "stat.mean_assistant_turns": ("平均每条回答轮数", "assistant turns per record"),
    "stat.multi_turn_share": ("多轮对话占比", "multi-turn share"),
    "stat.chars_p50": ("字符数 P50", "characters p50"),
    "stat.chars_p95": ("字符数 P95", "characters p95"),
    "stat.chars_max": ("字符数最大值", "characters max"),
    "stat.duplicates": ("重复记录", "duplicates"),
    "stat.empty_answers": ("空回答", "empty answers"),
    "stat.system_share": ("含系统提示占比", "share with a system prompt"),
    "stat.total_chars": ("总字符数", "total characters"),
    "stat.multi_answer": ("多选题", "multi-answer questions"),
    "stat.subjects": ("科目数", "subjects"),
    "stat.tokens_p50": ("token 数 P50", "tokens p50"),
    "stat.tokens_p95": ("token 数 P95", "tokens p95"),
    "stat.tokens_max": ("token 数最大值", "tokens max"),
    "stat.cutoff_len": ("截断长度 cutoff_len", "cutoff_len"),
    "stat.share_over_cutoff": ("超出 cutoff_len（被截断）占比", "share over cutoff_len (truncated)"),
    "stat.truncated": ("被截断记录", "truncated records"),
    "stat.dropped_no_trainable": ("截断后无回答而丢弃", "dropped (no answer left after the cut)"),
    "stat.samples": ("训练样本数", "training samples"),
    "stat.trainable_tokens": ("参与训练的 token", "trainable tokens"),
    # ---- Parameters tab -------------------------------------------------------------------
    "params.intro": ("这里的设置就是训练页要启动的配置；有问题的值会在字段下方标出。",
                     "These settings are the config the Train tab starts; a wrong value is flagged under its field."),
    "params.preset": ("预设", "Preset"),
    "params.preset_info": ("从 presets/*.yaml 填入整张表单", "Fill the whole form from presets/*.yaml"),
    "params.model": ("基座模型与方法", "Base model and method"),
    "params.model_source": ("模型来源", "Model source"),
    "source.builtin": ("内置 SmolLM2-135M", "Built-in SmolLM2-135M"),
    "source.local": ("本地文件夹", "Local folder"),
    "source.known": ("常用模型", "Known models"),
    "params.known_model": ("常用模型", "Known model"),
    "params.known_note": ("此处没有模型仓库：请先下载权重，再在下方填写本地文件夹；会自动选用对应的对话模板。",
                          "No model hub here: download the weights, then give the local folder below; the matching "
                          "chat template is chosen for you."),
    "params.model_path": ("模型文件夹", "Model folder"),
    "params.model_path_ph": ("含 config.json 的文件夹，例如 /models/Qwen2.5-7B-Instruct",
                             "the folder holding config.json, e.g. /models/Qwen2.5-7B-Instruct"),
    "help.model_path": ("本地模型文件夹（含 config.json 与分词器）",
                        "a local model folder (config.json and tokenizer)"),
    "params.method": ("LoRA / QLoRA 设置", "LoRA / QLoRA settings"),
    "params.qlora_note": ("QLoRA：基座以 4/8 比特加载，需要 CUDA GPU 与 bitsandbytes。",
                          "QLoRA loads the base in 4 or 8 bits; it needs a CUDA GPU and bitsandbytes."),
    "params.main": ("主要超参数", "Main hyperparameters"),
    "params.advanced": ("高级设置", "Advanced"),
    "params.hardware": ("硬件与分布式（DeepSpeed）", "Hardware and distribution (DeepSpeed)"),
    "params.preview": ("预览命令", "Preview command"),
    "params.config_path": ("配置文件", "Config file"),
    "params.save": ("保存配置", "Save config"),
    "params.load": ("载入配置", "Load config"),
    "params.upload": ("上传 YAML", "Upload YAML"),
    "params.command": ("将要执行的命令", "The command that will run"),
    "params.yaml": ("run.yaml", "run.yaml"),
    "params.ok": ("✓ 配置有效。", "✓ The config is valid."),
    "params.problems": ("配置有问题：", "Config problems:"),
    "params.fix_first": ("请先修正这些问题：", "Fix these first:"),
    "params.previewed": ("命令与 run.yaml 如下；训练页的“开始训练”会执行同一条命令。",
                         "The command and run.yaml below are what Start on the Train tab runs."),
    "params.saved": ("已保存到 {path}", "Saved to {path}"),
    "params.loaded": ("已载入 {path}", "Loaded {path}"),
    # ---- Parameters tab: the learning-rate range test (app/tabs/params.py, its own block) -----
    "lrfind.acc": ("学习率范围测试", "Learning-rate range test"),
    "lrfind.intro": ("用上面表单的模型、方法、模板与数据训练 40 步，学习率从 10⁻⁷ 按指数增长到 1"
                     "（损失发散时提前停止），画出损失随学习率的变化，并在平滑后损失下降最陡处给出**建议**学习率。这只是建议，不是保证；"
                     "测试不保存任何权重，结果在 outputs/jobs/lr-find-时间/ 中。",
                     "Trains the form's model, method, template and data above for 40 steps while the learning rate "
                     "grows exponentially from 10⁻⁷ to 1 (stopping early when the loss diverges), plots the loss "
                     "against the learning rate and **suggests** the learning rate where the smoothed loss falls "
                     "fastest. A suggestion, not a guarantee; no weights are kept; the files are in "
                     "outputs/jobs/lr-find-TIME/."),
    "lrfind.start": ("开始学习率范围测试", "Run the LR range test"),
    "lrfind.started": ("已开始学习率范围测试：`{job}`", "LR range test started: `{job}`"),
    "lrfind.use": ("使用这个学习率", "Use this learning rate"),
    "lrfind.used": ("已把 learning_rate 设为建议值 {lr}。", "learning_rate set to the suggested {lr}."),
    "lrfind.suggestion": ("**建议**学习率：`{lr}`（平滑后损失下降最陡处；只是建议，不是保证）",
                          "**Suggested** learning rate: `{lr}` (steepest descent of the smoothed loss; a suggestion, "
                          "not a guarantee)"),
    "lrfind.plot": ("损失与学习率", "Loss against learning rate"),
    "lrfind.plot_loss": ("每步损失", "loss per step"),
    "lrfind.plot_smoothed": ("平滑后损失", "smoothed loss"),
    "lrfind.plot_lr": ("学习率（对数坐标）", "learning rate (log scale)"),
    "lrfind.plot_suggestion": ("建议", "suggestion"),
    "lrfind.plot_empty": ("测试结束后，这里显示损失随学习率变化的曲线。",
                          "The loss against the learning rate shows here once the test has run."),
    # ---- Parameters tab: the plan panel (app/plan_panel.py) -----------------------------------
    "plan.title": ("显存与时间预估", "Memory and time plan"),
    "plan.intro": ("按所选硬件估算每张卡的显存与训练时间：只读模型的 config.json，不加载权重；随表单实时更新。",
                   "What the form needs per GPU and how long it takes on the hardware picked: from the model's "
                   "config.json alone (no weights), updated as the form changes."),
    "plan.kind": ("硬件", "Hardware"),
    "plan.this_machine": ("本机", "this machine"),
    "plan.gpus": ("每节点 GPU 数", "GPUs per node"),
    "plan.nodes": ("节点数", "Nodes"),
    "plan.price": ("每 GPU 小时价格（可选）", "Price per GPU-hour (optional)"),
    "plan.apply": ("应用首个改法", "Apply the first fix"),
    "plan.cannot": ("暂时无法预估：", "Cannot plan this yet:"),
    "plan.per_gpu": ("每张 GPU", "per GPU"),
    "plan.per_cpu": ("内存", "of RAM"),
    "plan.fits": ("放得下：{device} 需要 {total}，容量 {capacity}", "Fits: {total} {device} of {capacity}"),
    "plan.does_not_fit": ("放不下：{device} 需要 {total}，超出容量 {capacity}",
                          "Does not fit: {total} {device} against {capacity}"),
    "plan.part_weights": ("权重", "weights"),
    "plan.part_adapters": ("适配器", "adapters"),
    "plan.part_optimizer": ("优化器状态", "optimizer"),
    "plan.part_gradients": ("梯度", "gradients"),
    "plan.part_activations": ("激活值", "activations"),
    "plan.part_buffers": ("通信缓冲", "buffers"),
    "plan.part_overhead": ("额外开销", "overhead"),
    "plan.overlap": ("反向传播中释放的激活值 −{size}", "activations freed in backward −{size}"),
    "plan.capacity": ("容量", "capacity"),
    "plan.this_machine_is": ("本机 {hardware}", "this machine, {hardware}"),
    "plan.cpu": ("CPU（{cores} 核，{ram} 内存）", "CPU ({cores} cores, {ram} RAM)"),
    "plan.head": ("{model}，{billions}B 参数，可训练 {trainable}M",
                  "{model}, {billions}B parameters, {trainable}M trainable"),
    "plan.step": ("每步 {seconds} 秒（{tokens} 个 token）", "{seconds} s per step ({tokens} tokens)"),
    "plan.epoch": ("每轮 {duration}（{steps} 步）", "{duration} per epoch ({steps} steps)"),
    "plan.run": ("全程 {duration}（{steps} 步）", "{duration} for the run ({steps} steps)"),
    "plan.gpu_hours": ("共 {hours} GPU 小时", "{hours} GPU-hours"),
    "plan.cost": ("，费用 {cost}（每 GPU 小时 {price}）", ", cost {cost} at {price} per GPU-hour"),
    "plan.fixes": ("能放下的改法（代价从小到大）：", "Changes that make it fit (cheapest first):"),
    "plan.fix_result": ("{device} 需要 {total}，每步 {seconds} 秒", "{total} {device}, {seconds} s per step"),
    "plan.no_fix": ("预估器列出的改法都放不下：需要更多或更大的 GPU。",
                    "No change in the planner's list makes it fit: more or larger GPUs."),
    "plan.notes": ("说明与假设", "Notes and assumptions"),
    "plan.change_batch": ("批大小 {batch} × 梯度累积 {accumulation}", "batch {batch} × accumulation {accumulation}"),
    "plan.change_checkpointing_on": ("开启梯度检查点", "gradient checkpointing on"),
    "plan.change_checkpointing_off": ("关闭梯度检查点", "gradient checkpointing off"),
    "help.plan_kind": ("本机：检测到的 GPU，没有则为 CPU 与内存；其余为常见 GPU 型号",
                       "this machine: its GPUs, else its CPU and RAM; the others are common GPU kinds"),
    "help.plan_gpus": ("预估按这里的 GPU 数计算（本机只用一台机器）",
                       "the plan uses this many GPUs (this machine: one node)"),
    "help.plan_price": ("填写后显示总费用", "give it to see the cost"),
    "stage.sft": ("SFT 监督微调", "SFT (supervised)"),
    "stage.pt": ("PT 继续预训练", "PT (continued pre-training)"),
    "stage.dpo": ("DPO 偏好对训练", "DPO (preference pairs)"),
    "stage.kto": ("KTO 好坏标注训练", "KTO (good/bad answers)"),
    "finetuning_type.lora": ("LoRA", "LoRA"),
    "finetuning_type.qlora": ("QLoRA（4 比特）", "QLoRA (4-bit)"),
    "finetuning_type.full": ("全参数", "Full"),
    "ds.none": ("不使用", "none"),
    "ds.z0": ("ZeRO-0", "ZeRO-0"),
    "ds.z2": ("ZeRO-2", "ZeRO-2"),
    "ds.z3": ("ZeRO-3", "ZeRO-3"),
    "ds.z3_offload": ("ZeRO-3 + CPU offload", "ZeRO-3 + CPU offload"),
    "packing.auto": ("自动（PT 开，SFT 关）", "auto (on for PT, off for SFT)"),
    "packing.true": ("开", "on"),
    "packing.false": ("关", "off"),
    # Config keys: label and help (the allowed values are added from the core's schema).
    "cfg.stage": ("训练阶段", "Stage"),
    "help.stage": ("sft：对话监督微调；pt：在文本上继续预训练；dpo：在“好/差”回答对上做偏好训练（损失见 pref_loss）；"
                   "kto：在标注好坏的单个回答上训练",
                   "sft: supervised fine-tuning on conversations; pt: continued pre-training on text; dpo: "
                   "preference training on chosen/rejected pairs (the loss: pref_loss); kto: on answers labelled "
                   "desirable or not"),
    "cfg.pref_loss": ("偏好损失", "Preference loss"),
    "help.pref_loss": ("sigmoid（DPO）、ipo、orpo 或 simpo；orpo 与 simpo 不需要参考模型",
                       "sigmoid (DPO), ipo, orpo or simpo; orpo and simpo need no reference model"),
    "cfg.pref_beta": ("偏好 beta", "Preference beta"),
    "help.pref_beta": ("偏离参考模型的约束强度（dpo、ipo、kto），或偏好项的权重（orpo、simpo）",
                       "how far from the reference (dpo, ipo, kto) or how strong the preference term (orpo, simpo)"),
    "cfg.simpo_gamma": ("SimPO gamma", "SimPO gamma"),
    "help.simpo_gamma": ("SimPO 的目标奖励间隔（pref_loss 为 simpo 时）",
                         "SimPO's target reward margin (pref_loss simpo)"),
    "cfg.kto_chosen_weight": ("KTO 好回答权重", "KTO desirable weight"),
    "help.kto_chosen_weight": ("KTO 中好回答损失的权重", "KTO's weight of the desirable answers' loss"),
    "cfg.kto_rejected_weight": ("KTO 差回答权重", "KTO undesirable weight"),
    "help.kto_rejected_weight": ("KTO 中差回答损失的权重", "KTO's weight of the undesirable answers' loss"),
    "cfg.finetuning_type": ("微调方法", "Method"),
    "help.finetuning_type": ("LoRA、QLoRA（4 比特基座 + LoRA）或全参数", "lora, qlora (4-bit base + LoRA) or full"),
    "cfg.template": ("对话模板", "Chat template"),
    "help.template": ("auto：使用分词器自带模板；或内置的备用模板",
                      "auto (the tokenizer's own) or a built-in fallback"),
    "cfg.trust_remote_code": ("信任模型自带代码", "Trust remote code"),
    "help.trust_remote_code": ("运行模型附带的代码（仅限可信模型）", "run code shipped with the model (only for models "
                               "you trust)"),
    "cfg.lora_rank": ("LoRA 秩 r", "LoRA rank r"),
    "help.lora_rank": ("LoRA 低秩矩阵的秩", "LoRA rank r"),
    "cfg.lora_alpha": ("LoRA alpha", "LoRA alpha"),
    "help.lora_alpha": ("缩放系数 = alpha / r（秩）", "scale = alpha / rank"),
    "cfg.lora_dropout": ("LoRA dropout", "LoRA dropout"),
    "help.lora_dropout": ("LoRA 分支上的 dropout", "dropout on the LoRA path"),
    "cfg.lora_target": ("LoRA 目标层", "LoRA target"),
    "help.lora_target": ("all 表示全部线性层，或逗号分隔如 q_proj,v_proj", "'all' linear layers, or a comma list such "
                         "as q_proj,v_proj"),
    "cfg.quantization_bit": ("量化位数", "Quantization bits"),
    "help.quantization_bit": ("QLoRA 基座权重的位数", "QLoRA base weight bits"),
    "cfg.learning_rate": ("学习率", "Learning rate"),
    "help.learning_rate": ("峰值学习率", "peak learning rate"),
    "cfg.num_train_epochs": ("训练轮数", "Epochs"),
    "help.num_train_epochs": ("训练轮数（max_steps > 0 时忽略）", "epochs (ignored when max_steps > 0)"),
    "cfg.max_steps": ("最大步数", "Max steps"),
    "help.max_steps": ("训练到此步数为止；-1 表示按轮数", "stop after this many optimizer steps; -1 = use epochs"),
    "cfg.per_device_train_batch_size": ("每卡批大小", "Batch size per device"),
    "help.per_device_train_batch_size": ("每个设备每步的样本数；auto：自动选能放下的最大值，"
                                         "梯度累积随之调整以保持全局批大小",
                                         "samples per device per step; auto: the largest that fits, with gradient "
                                         "accumulation keeping the global batch"),
    "cfg.train_batch_size": ("全局批大小", "Global batch size"),
    "help.train_batch_size": ("每次优化器更新的样本总数（每卡批大小 × 梯度累积 × 设备数）；0 表示不设（auto 时为 "
                              "4 × 梯度累积 × 设备数）", "samples per optimizer step over all devices (batch per "
                              "device x accumulation x devices); 0 = not set (with auto: 4 x accumulation x "
                              "devices)"),
    "cfg.gradient_accumulation_steps": ("梯度累积步数", "Gradient accumulation"),
    "help.gradient_accumulation_steps": ("每次优化器更新累积的小批次数", "micro-batches per optimizer step"),
    "cfg.cutoff_len": ("截断长度", "Cutoff length"),
    "help.cutoff_len": ("每条样本（SFT）或每块（PT）的最大 token 数", "maximum tokens per sample (SFT) or block (PT)"),
    "cfg.val_size": ("验证集比例", "Validation size"),
    "help.val_size": ("留作验证的比例（0-1）或条数（≥1）", "share (0-1) or number (>=1) of records held out for "
                      "eval loss"),
    "cfg.max_samples": ("最多样本数", "Max samples"),
    "help.max_samples": ("每个数据集最多使用的记录数（0 或留空为全部）", "use at most this many records of each "
                         "dataset (0 or empty = all)"),
    "cfg.lr_scheduler_type": ("学习率调度", "LR schedule"),
    "help.lr_scheduler_type": ("学习率变化方式", "learning-rate schedule"),
    "cfg.warmup_ratio": ("预热比例", "Warm-up ratio"),
    "help.warmup_ratio": ("用于预热的步数比例", "share of steps used for warm-up"),
    "cfg.warmup_steps": ("预热步数", "Warm-up steps"),
    "help.warmup_steps": ("线性预热步数（> 0 时覆盖预热比例）",
                          "linear warm-up steps (overrides warmup_ratio when > 0)"),
    "cfg.weight_decay": ("权重衰减", "Weight decay"),
    "help.weight_decay": ("AdamW 权重衰减", "AdamW weight decay"),
    "cfg.max_grad_norm": ("梯度裁剪", "Max grad norm"),
    "help.max_grad_norm": ("梯度裁剪范数（0 为关闭）", "gradient clipping norm (0 = off)"),
    "cfg.logging_steps": ("日志间隔", "Logging steps"),
    "help.logging_steps": ("每 N 步记录一次 loss", "log loss every N steps"),
    "cfg.save_steps": ("保存间隔", "Save steps"),
    "help.save_steps": ("每 N 步保存检查点（结束时总会保存）",
                        "save a checkpoint every N steps (and always at the end)"),
    "cfg.save_total_limit": ("最多保留检查点", "Checkpoints kept"),
    "help.save_total_limit": ("最多保留 N 个检查点（0 或留空为全部）", "keep at most N checkpoints (0 or empty = all)"),
    "cfg.eval_steps": ("评估间隔", "Eval steps"),
    "help.eval_steps": ("每 N 步计算验证 loss（0 或留空为日志间隔 × 10）", "evaluate every N steps (0 or empty: "
                        "logging_steps x 10)"),
    "cfg.per_device_eval_batch_size": ("每卡评估批大小", "Eval batch size per device"),
    "help.per_device_eval_batch_size": ("评估时每个设备每步的样本数", "samples per device per eval step"),
    "cfg.eval_dataset": ("验证数据集", "Eval datasets"),
    "help.eval_dataset": ("用于验证的数据集（代替按比例切分），逗号分隔", "datasets used for evaluation instead of a "
                          "val_size split, comma-separated"),
    "cfg.data_engine": ("数据准备方式", "Data engine"),
    "help.data_engine": ("memory：Python 列表，小数据最快；arrow：多进程检查与分词，写成内存映射的 Arrow 文件，可缓存、"
                         "可断点续做，适合大于内存的数据；auto：数据文件达 32 MiB 起用 arrow",
                         "memory: Python lists, fastest for small data; arrow: checked and tokenized by several "
                         "processes into memory-mapped Arrow files, cached and resumable, for data larger than "
                         "memory; auto: arrow from 32 MiB of files on"),
    "cfg.preprocessing_num_workers": ("数据准备进程数", "Preprocessing workers"),
    "help.preprocessing_num_workers": ("准备 Arrow 数据的进程数（默认每核一个）",
                                       "processes that prepare Arrow data (default: one per core)"),
    "cfg.streaming": ("流式读取", "Streaming"),
    "help.streaming": ("边训练边读取、检查与分词，不预先准备：首步即刻开始，适合只读一遍的数据（需设置 max_steps，"
                       "不能按比例切分验证集）",
                       "read, check and tokenize the data while training instead of before: the first step "
                       "comes at once, for data read once (needs max_steps; no val_size split)"),
    "cfg.packing": ("样本拼接", "Packing"),
    "help.packing": ("把样本拼接成 cutoff_len 长的块", "concatenate samples into cutoff_len blocks"),
    "cfg.bf16": ("bf16 混合精度", "bf16"),
    "help.bf16": ("Ampere 及以后的 GPU，或支持 AVX-512 BF16/AMX 的 CPU", "GPUs from Ampere on, CPUs with AVX-512 "
                  "BF16/AMX"),
    "cfg.fp16": ("fp16 混合精度", "fp16"),
    "help.fp16": ("CUDA GPU 上的 fp16 混合精度", "fp16 mixed precision on CUDA GPUs"),
    "cfg.gradient_checkpointing": ("梯度检查点", "Gradient checkpointing"),
    "help.gradient_checkpointing": ("重算激活以节省显存（更慢）", "recompute activations to save memory (slower)"),
    "cfg.seed": ("随机种子", "Seed"),
    "help.seed": ("数据顺序、切分与初始化的随机种子", "random seed for data order, split and initialisation"),
    "cfg.resume_from_checkpoint": ("断点续训", "Resume from checkpoint"),
    "help.resume_from_checkpoint": ("auto：从输出文件夹中最新的检查点继续；none：从头开始；或检查点路径",
                                    "auto: continue from the newest checkpoint in output_dir; none: start fresh; "
                                    "or a checkpoint folder"),
    "cfg.deepspeed": ("DeepSpeed", "DeepSpeed"),
    "help.deepspeed": ("ZeRO 预设；多卡大模型时使用", "a ZeRO preset; for large models on several GPUs"),
    "cfg.num_gpus": ("GPU 数量", "GPUs"),
    "help.num_gpus": ("每个节点的 GPU（或 CPU 进程）数；0 表示只用当前进程", "GPUs (or CPU processes) per node; 0 = "
                      "this process only"),
    "cfg.hostfile": ("hostfile", "Hostfile"),
    "help.hostfile": ("多节点训练的 DeepSpeed hostfile", "DeepSpeed hostfile for several nodes"),
    "cfg.report_to": ("记录到", "Report to"),
    "help.report_to": ("指标另外发送到哪里", "where metrics also go"),
    "cfg.output_dir": ("输出文件夹", "Output folder"),
    "help.output_dir": ("留空则为 outputs/<阶段>-<方法>-<时间>", "empty: outputs/<stage>-<method>-<time>"),
    # ---- Train tab ------------------------------------------------------------------------
    "train.intro": ("用参数页的配置开始训练。任务在独立进程中运行：关闭或刷新页面不会影响它，重新打开即可继续查看。",
                    "Start the Parameters tab's config. The job runs in its own process: closing or reloading the "
                    "page does not touch it, and the page finds it again."),
    "train.start": ("开始训练", "Start training"),
    "train.abort": ("中止", "Abort"),
    "train.resume": ("继续训练", "Resume"),
    "train.run": ("当前运行", "Run"),
    "train.loss": ("loss 曲线", "Loss curve"),
    "train.rewards": ("奖励曲线（偏好训练）", "Reward curves (preference training)"),
    "train.console": ("控制台输出", "Console"),
    "train.overlay": ("叠加对比的运行", "Overlay runs"),
    "train.overlay_info": ("选择其他运行，把它们的 loss 曲线画在一起", "Pick other runs to draw their loss curves "
                           "together"),
    "train.runs": ("全部运行（点击一行查看）", "All runs (click a row to show it)"),
    "train.col_run": ("运行", "run"),
    "train.col_state": ("状态", "state"),
    "train.col_progress": ("进度", "progress"),
    "train.col_loss": ("最终 loss", "final loss"),
    "train.col_eval": ("验证 loss", "eval loss"),
    "train.col_started": ("开始时间", "started"),
    "train.not_started": ("未能开始训练：", "Training did not start:"),
    "train.started": ("已开始：`{run}`", "Started `{run}`"),
    "train.pick_run": ("请先选择一个运行。", "Pick a run first."),
    "train.not_running": ("这个运行没有在运行。", "That run is not running."),
    "train.aborting": ("正在中止：任务会先保存检查点再停止。", "Stopping: the job saves a checkpoint, then stops."),
    "train.resumed": ("已从最新检查点继续：`{run}`", "Resumed from the newest checkpoint: `{run}`"),
    "plot.train": ("训练", "train"),
    "plot.eval": ("验证", "eval"),
    "plot.step": ("步数", "step"),
    "plot.empty": ("还没有记录到 loss。", "No loss logged yet."),
    "plot.reward": ("奖励", "reward"),
    "plot.rewards_chosen": ("选中回答的奖励", "reward of chosen"),
    "plot.rewards_rejected": ("被拒回答的奖励", "reward of rejected"),
    "plot.rewards_margin": ("奖励差", "reward margin"),
    "plot.rewards_accuracy": ("偏好准确率", "preference accuracy"),
    # ---- Evaluate tab ---------------------------------------------------------------------
    "eval.intro": ("对完成的运行做评估（困惑度、生成 BLEU/ROUGE、选择题准确率）。"
                   "评估作为独立任务运行，结果保存在运行文件夹的 eval/ 下。",
                   "Evaluate a finished run (perplexity, generation BLEU/ROUGE, multiple-choice "
                   "accuracy). It runs as a job; results go to the run's eval/ folder."),
    "eval.run": ("运行", "Run"),
    "eval.base_only": ("只评估基座模型", "Base model only"),
    "eval.base_only_info": ("不加载适配器，用作对照", "without the adapter, for comparison"),
    "eval.tasks": ("评估任务", "Tasks"),
    "eval.tasks_info": ("不选则按数据格式自动选择", "none: chosen from the data format"),
    "task.ppl": ("困惑度", "perplexity"),
    "task.generate": ("生成 BLEU/ROUGE", "generation BLEU/ROUGE"),
    "task.mcq": ("选择题准确率", "multiple-choice accuracy"),
    "task.preference": ("偏好对准确率（好回答概率更高的比例）", "preference accuracy (chosen answer more likely)"),
    "eval.datasets": ("评估数据集", "Datasets"),
    "eval.datasets_info": ("不选则使用运行时留出的验证集", "none: the run's own validation split"),
    "eval.split": ("数据范围", "Split"),
    "split.auto": ("自动", "auto"),
    "split.validation": ("验证集", "validation"),
    "split.all": ("全部", "all"),
    "eval.max_samples": ("每个数据集最多条数", "Max records per dataset"),
    "eval.n_shot": ("少样本示例数", "n-shot"),
    "eval.max_new_tokens": ("生成最大 token", "Max new tokens"),
    "eval.batch_size": ("批大小", "Batch size"),
    "eval.start": ("开始评估", "Start evaluation"),
    "eval.started": ("已开始评估：`{job}`", "Evaluation started: `{job}`"),
    "eval.job": ("评估任务", "Eval job"),
    "eval.console": ("控制台输出", "Console"),
    "eval.compare": ("对比多次评估", "Compare evaluations"),
    "eval.compare_jobs": ("选择评估任务", "Eval jobs"),
    "eval.compare_info": ("例如基座与微调后各一次", "e.g. one of the base and one of the tuned model"),
    # ---- Chat tab -------------------------------------------------------------------------
    "chat.intro": ("与完成的运行或基座模型对话。模型在本页面进程中加载（首次需要几秒）。",
                   "Chat with a finished run or a base model. The model is loaded in this page's process (the first "
                   "load takes a few seconds)."),
    "chat.source": ("模型", "Model"),
    "chat.src_run": ("训练结果", "A finished run"),
    "chat.src_base": ("参数页的基座模型", "The Parameters tab's base model"),
    "chat.run": ("运行", "Run"),
    "chat.load": ("加载", "Load"),
    "chat.unload": ("卸载", "Unload"),
    "chat.loading": ("正在加载模型……", "Loading the model ..."),
    "chat.loaded": ("已加载 `{model}`", "Loaded `{model}`"),
    "chat.with_adapter": ("（含 LoRA 适配器，可对比基座与微调）", " (with a LoRA adapter: base vs tuned available)"),
    "chat.unloaded": ("已卸载模型。", "Model unloaded."),
    "chat.system": ("系统提示", "System prompt"),
    "chat.system_ph": ("例如：你是一位中西医结合的医生助手。", "e.g. You are an assistant versed in TCM and Western "
                       "medicine."),
    "chat.compare": ("对比基座与微调", "Base vs tuned"),
    "chat.compare_info": ("同一问题分别用基座和微调模型回答", "the same message answered by both"),
    "chat.settings": ("生成设置", "Generation settings"),
    "chat.max_new_tokens": ("最大生成 token", "Max new tokens"),
    "chat.temperature": ("温度", "Temperature"),
    "chat.top_p": ("top_p", "top_p"),
    "chat.top_k": ("top_k", "top_k"),
    "chat.repetition_penalty": ("重复惩罚", "Repetition penalty"),
    "chat.greedy": ("贪心解码（结果可复现）", "Greedy (reproducible)"),
    "chat.base": ("基座模型", "Base"),
    "chat.tuned": ("对话", "Chat"),
    "chat.message": ("消息", "Message"),
    "chat.message_ph": ("输入问题，回车发送", "Type a message, Enter to send"),
    "chat.send": ("发送", "Send"),
    "chat.clear": ("清空对话", "Clear"),
    "chat.empty": ("消息是空的。", "The message is empty."),
    "chat.load_first": ("请先加载模型。", "Load a model first."),
    # ---- Chat tab: the arena ----------------------------------------------------------------
    "arena.title": ("竞技场：盲评对比", "Arena: blind comparison"),
    "arena.intro": ("两到四个模型回答同一个问题，列的顺序随机、名字隐藏；投票后才显示名字，投票保存为偏好数据集"
                    "（数据文件夹里的 arena_pairs），可直接用来训练 DPO。三四个模型时，投给最好的那个。",
                    "Two to four models answer the same question in shuffled, unnamed columns; the names show "
                    "after your vote, and the votes become a preference dataset (arena_pairs in the data folder) "
                    "to train DPO on. With three or four models, vote for the best one."),
    "arena.contestants": ("参赛模型", "Contestants"),
    "arena.contestants_info": ("选 2 到 4 个：参数页的基座模型和完成的运行", "pick 2 to 4: the Parameters tab's base "
                               "model and finished runs"),
    "arena.base_choice": ("基座模型（参数页）", "Base model (Parameters tab)"),
    "arena.load": ("加载参赛模型", "Load contestants"),
    "arena.loading": ("正在加载参赛模型……", "Loading the contestants ..."),
    "arena.loaded": ("已加载 {n} 个参赛模型（共 {copies} 份权重：同一基座的适配器共用一份）。",
                     "Loaded {n} contestants ({copies} copy/copies of weights: adapters of one base share one)."),
    "arena.chat_unloaded": (" 对话区的模型已卸载，以腾出内存。", " The chat model was unloaded to make room."),
    "arena.question": ("问题", "Question"),
    "arena.question_ph": ("例如：附子的常用剂量和注意事项？", "e.g. What is the usual dose of Fuzi, and what are "
                          "its cautions?"),
    "arena.send": ("提问", "Ask"),
    "arena.model_a": ("模型 A", "Model A"),
    "arena.model_b": ("模型 B", "Model B"),
    "arena.model_c": ("模型 C", "Model C"),
    "arena.model_d": ("模型 D", "Model D"),
    "arena.better_a": ("A 更好", "A is better"),
    "arena.better_b": ("B 更好", "B is better"),
    "arena.better_c": ("C 更好", "C is better"),
    "arena.better_d": ("D 更好", "D is better"),
    "arena.tie": ("平局", "Tie"),
    "arena.bad": ("都不好", "All bad"),
    "arena.correction": ("更正的回答（可选）", "Corrected answer (optional)"),
    "arena.correction_info": ("填写后作为更好的回答，优于没被选中的回答", "if given, it is the preferred answer, over "
                              "those the vote did not pick"),
    "arena.reviewer": ("评审人（可选）", "Reviewer (optional)"),
    "arena.train_dpo": ("用这些投票训练 DPO", "Train DPO on these votes"),
    "arena.empty": ("问题是空的。", "The question is empty."),
    "arena.load_first": ("请先加载参赛模型。", "Load the contestants first."),
    "arena.answering": ("正在回答……", "Answering ..."),
    "arena.vote_now": ("回答完毕：请投票。", "All answered: vote."),
    "arena.ask_first": ("请先提问，等回答完毕再投票。", "Ask a question and wait for the answers before voting."),
    "arena.voted_already": ("这一轮已经投过票；请提下一个问题。", "This round has its vote; ask the next question."),
    "arena.thanks": ("已保存投票。", "Vote saved."),
    "arena.revealed": ("揭晓：{names}", "Revealed: {names}"),
    "arena.revealed_one": ("模型 {label} = `{model}`", "Model {label} = `{model}`"),
    "arena.vote_a": ("投票：A 更好", "Vote: A is better"),
    "arena.vote_b": ("投票：B 更好", "Vote: B is better"),
    "arena.vote_c": ("投票：C 更好", "Vote: C is better"),
    "arena.vote_d": ("投票：D 更好", "Vote: D is better"),
    "arena.vote_tie": ("投票：平局", "Vote: tie"),
    "arena.vote_bad": ("投票：都不好", "Vote: all bad"),
    "arena.saved": ("已保存到 `{path}`；数据集 {dataset} 现有 {pairs} 个偏好对。",
                    "Saved to `{path}`; dataset {dataset} now holds {pairs} preference pair(s)."),
    "arena.no_votes": ("还没有投票（`{path}`）。", "No votes yet (`{path}`)."),
    "arena.col_first": ("模型 1", "Model 1"),
    "arena.col_second": ("模型 2", "Model 2"),
    "arena.col_first_wins": ("1 胜", "1 wins"),
    "arena.col_second_wins": ("2 胜", "2 wins"),
    "arena.col_ties": ("平局", "Ties"),
    "arena.col_both_bad": ("都不好", "All bad"),
    "arena.col_rate": ("1 的胜率", "Win rate of 1"),
    "arena.col_interval": ("95% 区间（Wilson）", "95% interval (Wilson)"),
    "arena.tally_note": ("共 {votes} 票。胜率只算分出胜负的票（平局和都不好不计入）。",
                         "{votes} vote(s). The win rate counts decided votes only (ties and all-bad left out)."),
    "arena.log_problems": ("投票记录里有 {n} 行读不了，已跳过；第一行：{first}",
                           "{n} line(s) of the vote log could not be read and were skipped; the first: {first}"),
    "arena.no_pairs_yet": ("还没有偏好对可训练：先投票（数据集 {dataset} 在第一次投票时登记）。",
                           "No pairs to train on yet: vote first (dataset {dataset} is registered with the first "
                           "vote)."),
    "arena.dpo_ready": ("参数页已设为 stage dpo，训练数据为 {dataset}。", "The Parameters tab is set to stage dpo "
                        "with {dataset} as the training data."),
    # ---- Export tab -----------------------------------------------------------------------
    "export.intro": ("把完成的运行合并成独立模型（safetensors），附带模型卡，可选 GGUF（llama.cpp / Ollama）。"
                     "结果在运行文件夹的 export/ 下。",
                     "Merge a finished run into a standalone model (safetensors) with a model card "
                     "and optional GGUF files (llama.cpp / Ollama), in the run's export/ folder."),
    "export.run": ("运行", "Run"),
    "export.dtype": ("权重精度", "Weights dtype"),
    "export.shard": ("分片大小", "Max shard size"),
    "export.gguf": ("GGUF 文件", "GGUF files"),
    "export.gguf_info": ("不选则不生成 GGUF", "none: no GGUF"),
    "export.overwrite": ("覆盖已有导出", "Replace an existing export"),
    "export.start": ("开始导出", "Start export"),
    "export.started": ("已开始导出：`{job}`", "Export started: `{job}`"),
    "export.job": ("导出任务", "Export job"),
    "export.console": ("控制台输出", "Console"),
    "export.files": ("导出的文件", "Exported files"),
    "export.file": ("文件", "file"),
    "export.size": ("大小", "size"),
    "export.card": ("模型卡 README.md", "Model card README.md"),
}

# The plan panel's GPU kinds are their own names in both languages (the kind picker's options).
TEXT.update({f"gpu.{name}": (name, name) for name in GPU_KINDS})


# English as the core and the tabs write it -> Chinese. `{name}` captures any text, `{_name}` a
# text translated in turn (the allowed values inside a config problem), `{min}`/`{max}`/`{n}` a
# number; `{{` and `}}` are literal braces.
MESSAGES: list[tuple[str, str]] = [
    # trainer_core.config: one problem of a config key ("  - key: ...")
    ("config problem(s):", "配置有问题："),
    ("{name}: a value is required ({_allowed})", "{name}：必须填写（{_allowed}）"),
    ("{name}: {value} is not a valid int ({_allowed})", "{name}：{value} 不是有效的整数（{_allowed}）"),
    ("{name}: {value} is not a valid float ({_allowed})", "{name}：{value} 不是有效的数值（{_allowed}）"),
    ("{name}: {value} is not a valid bool ({_allowed})", "{name}：{value} 不是有效的布尔值（{_allowed}）"),
    ("{name}: {value} is not a valid str ({_allowed})", "{name}：{value} 不是有效的文本（{_allowed}）"),
    ("{name}: '{value}' is not allowed; choose one of {choices}", "{name}：不允许 '{value}'；可选 {choices}"),
    ("{name}: {value} is out of range ({_allowed})", "{name}：{value} 超出范围（{_allowed}）"),
    ("bf16 and fp16 are both true; choose one", "bf16 与 fp16 不能同时开启，请只选一个"),
    ("deepspeed: '{value}' is neither a preset ({presets}) nor a .json file",
     "deepspeed：'{value}' 既不是预设（{presets}），也不是 .json 文件"),
    ("deepspeed: '{value}' is neither a preset ({presets}) nor a .json file; did you mean '{close}'?",
     "deepspeed：'{value}' 既不是预设（{presets}），也不是 .json 文件；是不是想写 '{close}'？"),
    ("QLoRA with DeepSpeed ZeRO-3 is not supported; use z2 or no DeepSpeed",
     "QLoRA 不能与 DeepSpeed ZeRO-3 一起使用；请改用 z2 或不用 DeepSpeed"),
    ("dataset: give at least one dataset name from dataset_info.json",
     "dataset：请至少选择一个 dataset_info.json 中的数据集（在数据页选择）"),
    ("{name}: mixing weight '{value}' is not a number > 0", "{name}：混合权重 '{value}' 不是大于 0 的数"),
    ("interleave_probs: {n} weights for {count} datasets", "interleave_probs：{n} 个权重，却有 {count} 个数据集"),
    ("give the mixing weights once: in dataset (a:0.5,b:0.5) or in interleave_probs, not both",
     "混合权重只写一处：写在 dataset 里（a:0.5,b:0.5），或写在 interleave_probs 里"),
    ("dataset: give every dataset a weight or none ({dataset})", "dataset：每个数据集都给权重，或都不给（{dataset}）"),
    ("unknown key '{name}'; did you mean '{close}'?", "未知的配置项 '{name}'；是不是想写 '{close}'？"),
    ("unknown key '{name}'; see README.md for the list of keys", "未知的配置项 '{name}'；全部配置项见 README.md"),
    ("config file '{path}' does not exist", "配置文件 '{path}' 不存在"),
    ("config file '{path}' is not valid YAML{where}: {problem}", "配置文件 '{path}' 不是有效的 YAML{where}：{problem}"),
    ("config file '{path}' must be a mapping of key: value, got {kind}",
     "配置文件 '{path}' 应是“键: 值”的映射，而不是 {kind}"),
    # trainer_core.config.allowed_values, inside the problems above and under every field
    ("one of {choices}", "可选 {choices}"),
    ("true or false", "true 或 false"),
    ("an integer", "整数"),
    ("a number", "数值"),
    ("text", "文本"),
    ("{_kind} >= {min}", "{_kind}，≥ {min}"),
    ("{_kind} > {min}", "{_kind}，> {min}"),
    ("{_kind} >= {min} and <= {max}", "{_kind}，≥ {min} 且 ≤ {max}"),
    ("{_kind} > {min} and <= {max}", "{_kind}，> {min} 且 ≤ {max}"),
    ("{_kind}, or null", "{_kind}，或留空"),
    ("{_kind}, or auto", "{_kind}，或 auto"),
    ("train_batch_size: {value} does not divide evenly among {n} devices (num_gpus x nodes)",
     "train_batch_size：{value} 不能平均分给 {n} 个设备（num_gpus × 节点数）"),
    ("train_batch_size: {value} is not per_device_train_batch_size {batch} x gradient_accumulation_steps {steps} x "
     "{n} device(s) = {product}; make them agree, set train_batch_size 0, or per_device_train_batch_size auto",
     "train_batch_size：{value} 不等于 per_device_train_batch_size {batch} × gradient_accumulation_steps {steps} × "
     "{n} 个设备 = {product}；请让它们一致，或把 train_batch_size 设为 0，或把 per_device_train_batch_size 设为 auto"),
    # trainer_core.config: the preference keys and stages
    ("{name}: {value} applies to stage {stages} only, and stage is {stage}; set stage: {first}, or leave {key} out",
     "{name}：{value} 只适用于训练阶段 {stages}，当前阶段是 {stage}；请把 stage 设为 {first}，或不填 {key}"),
    ("simpo_gamma: {value} applies to pref_loss simpo only, and pref_loss is {loss}; set pref_loss: simpo, or leave "
     "simpo_gamma out",
     "simpo_gamma：{value} 只适用于 pref_loss simpo，当前是 {loss}；请把 pref_loss 设为 simpo，或不填 simpo_gamma"),
    ("stage {stage} concatenates its preference datasets: leave out the mixing weights and set mix_strategy: concat",
     "训练阶段 {stage} 把偏好数据集直接拼接：请去掉混合权重，并把 mix_strategy 设为 concat"),
    ("packing: stage {stage} compares whole answers and does not pack samples; set packing: false or leave it out",
     "packing：训练阶段 {stage} 比较完整的回答，不做样本拼接；请把 packing 设为 false 或不填"),
    ("data_engine: stage {stage} prepares its preference data in memory; set data_engine: auto or memory",
     "data_engine：训练阶段 {stage} 在内存中准备偏好数据；请把 data_engine 设为 auto 或 memory"),
    ("streaming: stage {stage} reads its preference data before training; set streaming: false",
     "streaming：训练阶段 {stage} 在训练前读取偏好数据；请把 streaming 设为 false"),
    ("per_device_train_batch_size: stage kto needs at least 2 (its KL term pairs each answer with another prompt of "
     "the same batch); set 2 or more", "per_device_train_batch_size：KTO 至少需要 2（其 KL 项把每个回答与同一批次中的"
     "另一个问题配对）；请设为 2 或更大"),
    # trainer_core.preference: a dataset that the stage cannot train on
    ("{key}: '{name}' is not preference data, and stage {stage} trains on {what}; pick a preference dataset (in "
     "dataset_info.json: {marker}), or set stage: sft to train on its answers",
     "{key}：'{name}' 不是偏好数据，而训练阶段 {stage} 需要{what}；请选择偏好数据集"
     "（dataset_info.json 中有 {marker}），或把 stage 设为 sft 在其回答上训练"),
    ("{key}: '{name}' holds {kind}, and stage {stage} trains on {what}; set stage: {other}, or pick a dataset of "
     "{want}",
     "{key}：'{name}' 是{kind}，而训练阶段 {stage} 需要{what}；请把 stage 设为 {other}，或选择{want}的数据集"),
    # trainer_core: models, data registry, jobs
    ("model folder '{path}' does not exist. Set model_name_or_path to a local model folder, or to 'default' for "
     "the built-in model.", "模型文件夹 '{path}' 不存在。请把 model_name_or_path 设为本地模型文件夹，或设为 'default' "
     "使用内置模型。"),
    ("model folder '{path}' has no config.json; is it the right folder?",
     "模型文件夹 '{path}' 里没有 config.json；是这个文件夹吗？"),
    ("model_name_or_path '{path}' is a file; give the model's folder (the one holding config.json).",
     "model_name_or_path '{path}' 是一个文件；请给出模型所在的文件夹（含 config.json）。"),
    ("dataset '{name}' in {registry}: file_name '{file}' lies outside the data folder ({roots}); move the file into "
     "the data folder, or start the workbench with --allow_path DIR",
     "{registry} 中的数据集 '{name}'：file_name '{file}' 不在数据文件夹内（{roots}）；请把文件移到数据文件夹，"
     "或启动工作台时加 --allow_path DIR"),
    ("{what} is raw text (formatting: text) and can only be used for stage pt",
     "{what} 是纯文本（formatting: text），只能用于 stage pt（继续预训练）"),
    ("{what} is multiple-choice (formatting: mcq) and can only be used for evaluation",
     "{what} 是选择题（formatting: mcq），只能用于评估"),
    ("dataset {name} holds no records to mix", "数据集 {name} 没有可供混合的记录"),
    ("dataset {name} holds no records", "数据集 {name} 没有记录"),
    ("val_size {value} takes {count} of the {total} records and leaves none to train on",
     "val_size {value} 要从 {total} 条记录中取出 {count} 条，没有留下可训练的记录"),
    ("The job's processes are gone without a report (killed, or the machine restarted); resume with "
     "resume_from_checkpoint=auto.", "任务的进程已不在，且没有留下报告（被终止，或机器重启过）；"
     "可用 resume_from_checkpoint=auto 继续训练。"),
    ("{run} is not running (state: {state})", "{run} 没有在运行（状态：{state}）"),
    ("'{run}' holds no finished adapter/ or model/ (has the run finished?)",
     "'{run}' 中没有完成的 adapter/ 或 model/（这个运行结束了吗？）"),
    # trainer_core.jobconfig: the eval and export forms' problems (the rest are the config's own above)
    ("--max_shard_size '{value}' is not a size; write it like 2GB, 500MB or 5000000",
     "--max_shard_size '{value}' 不是有效的大小；请写成 2GB、500MB 或 5000000 这样的形式"),
    ("no model is loaded; load one first", "还没有加载模型；请先加载"),
    ("the message is empty", "消息是空的"),
    ("base vs tuned needs a model loaded with a LoRA adapter", "对比基座与微调需要加载带 LoRA 适配器的模型"),
    # trainer_core.lr_find: why there is no suggestion, why the test stopped early
    ("no suggestion: the smoothed loss never fell {pct}% below its start ({start}) between {low} and {high}: a flat "
     "curve; try a wider range (end_lr) or more steps",
     "没有建议：在 {low} 到 {high} 之间，平滑后损失从未比起点（{start}）低 {pct}%：曲线是平的；"
     "可以加大范围（end_lr）或增加步数"),
    ("no suggestion: the first step's loss was not a number; too few points to read a slope",
     "没有建议：第一步的损失就不是数值；点太少，读不出斜率"),
    ("no suggestion: only {n} finite loss(es) logged; too few points to read a slope",
     "没有建议：只记录到 {n} 个有效损失；点太少，读不出斜率"),
    ("stopped early at step {step}: the loss is not a number", "在第 {step} 步提前停止：损失不是数值"),
    ("stopped early at step {step}: the smoothed loss {last} is over {factor}x its lowest value {lowest}",
     "在第 {step} 步提前停止：平滑后损失 {last} 已超过其最低值 {lowest} 的 {factor} 倍"),
    ("Stopped by request (SIGTERM); lr_find.json holds the steps done.",
     "已按请求停止（SIGTERM）；lr_find.json 记录了已完成的步数。"),
    # trainer_core.planner: a plan's notes and assumptions, and why it cannot plan (the plan panel)
    ("memory for the longest micro-batch: {batch} x {length} tokens, every position trained",
     "显存按最长的微批次计：{batch} × {length} 个 token，每个位置都参与训练"),
    ("memory for the longest micro-batch: {batch} x {length} tokens, every position trained (the data's longest "
     "sample)", "显存按最长的微批次计：{batch} × {length} 个 token，每个位置都参与训练（数据中最长的样本）"),
    ("no data statistics: every sample taken as cutoff_len tokens, every token trained",
     "没有数据统计：每个样本按 cutoff_len 个 token 计，每个 token 都参与训练"),
    ("CPU peak {peak} GFLOP/s ({cores} cores x clock x {flops} fp32 FLOPs/cycle), utilisation {share}",
     "CPU 峰值 {peak} GFLOP/s（{cores} 核 × 主频 × 每周期 {flops} 次 fp32 运算），利用率 {share}"),
    ("{gpu}: {peak} TFLOP/s {precision} ({source}), assumed utilisation {share}",
     "{gpu}：{peak} TFLOP/s {precision}（{source}），假定利用率 {share}"),
    ("{gpu} has no bf16: train with fp16: true", "{gpu} 不支持 bf16：请用 fp16: true 训练"),
    ("QLoRA's 4-bit matmuls at {share} of LoRA's speed", "QLoRA 的 4 比特矩阵乘按 LoRA 速度的 {share} 计"),
    ("offload needs {need} GiB of host RAM per node; the host has {has} GiB",
     "offload 每个节点需要 {need} GiB 内存，本机只有 {has} GiB"),
    ("{model} has no tokenizer here; tokens counted with the built-in model's (an approximation)",
     "{model} 在本机没有分词器；token 数用内置模型的分词器统计（近似值）"),
    ("no data statistics ({_problem}); every sample taken as cutoff_len tokens",
     "没有数据统计（{_problem}）；每个样本按 cutoff_len 个 token 计"),
    ("the built-in model has not been prepared yet", "内置模型尚未准备好（第一次训练时会自动准备）"),
    ("model_name_or_path '{path}': no config.json found (a local model folder, or a shipped config: {shipped})",
     "model_name_or_path '{path}'：找不到 config.json（请给出本地模型文件夹，或自带的配置：{shipped}）"),
    ("the planner does not know the architecture '{name}'; it counts {names}",
     "预估器不认识架构 '{name}'；它能计算 {names}"),
    ("lora_target {missing} not found in the model; its linear layers are {names} (or use lora_target: all)",
     "模型中没有 lora_target {missing}；它的线性层是 {names}（或用 lora_target: all）"),
    ("unknown model '{name}'", "未知的模型 '{name}'"),
    ("{_name}: {value} is not a whole number of at least {min}", "{_name}：{value} 不是 ≥ {min} 的整数"),
    ("{_name}: {value} is not a number of at least {min}", "{_name}：{value} 不是 ≥ {min} 的数"),
    # trainer_core.arena: votes and contestants
    ("arena vote: the question is empty", "竞技场投票：问题是空的"),
    ("arena vote: answer {label} is empty; ask again (or allow more new tokens)",
     "竞技场投票：回答 {label} 是空的；请重新提问（或调大最大生成 token）"),
    ("arena vote: '{vote}' is not a vote; choose one of {choices}",
     "竞技场投票：'{vote}' 不是有效的投票；可选 {choices}"),
    ("arena vote: answers {a} and {b} are the same text; vote tie", "竞技场投票：回答 {a} 和 {b} 内容相同；请投平局"),
    ("arena vote: the corrected answer is the same as answer {label}; edit it or leave it empty",
     "竞技场投票：更正的回答与回答 {label} 相同；请修改，或留空"),
    ("arena: the data folder '{path}' does not exist", "竞技场：数据文件夹 '{path}' 不存在"),
    ("arena: {path} is not valid JSON ({problem}); fix it before voting",
     "竞技场：{path} 不是有效的 JSON（{problem}）；请先修正再投票"),
    ("arena: {path} has a dataset '{name}' that is not the arena's (file_name {file}); rename it so the votes can "
     "be registered",
     "竞技场：{path} 里已有一个不属于竞技场的数据集 '{name}'（file_name {file}）；请改名，投票才能登记"),
    ("pick {min} to {max} models for the arena ({n} picked)", "竞技场需要选 {min} 到 {max} 个模型（已选 {n} 个）"),
    ("the arena compares {min} to {max} models; {n} picked", "竞技场比较 {min} 到 {max} 个模型；已选 {n} 个"),
    ("load the arena's models first", "请先加载竞技场的参赛模型"),
    ("'{name}' is not loaded in the arena; load the contestants again",
     "'{name}' 没有加载到竞技场；请重新加载参赛模型"),
    ("two contestants have the same name: {names}", "有两个参赛模型同名：{names}"),
    # the tabs' own checks (app/)
    ("{field}: empty path", "{field}：路径为空"),
    ("{field}: '{path}' is outside the folders this workbench may read ({roots}); start it with --allow_path DIR "
     "to add one", "{field}：'{path}' 不在本工作台可读取的文件夹内（{roots}）；启动时用 --allow_path DIR 添加"),
    ("{field}: '{path}' is outside the folders this workbench may write ({roots}); start it with --allow_path DIR "
     "to add one", "{field}：'{path}' 不在本工作台可写入的文件夹内（{roots}）；启动时用 --allow_path DIR 添加"),
    ("model_name_or_path: give the local model folder (the one holding config.json)",
     "model_name_or_path：请填写本地模型文件夹（含 config.json 的那个）"),
    ("model folder '{path}' does not exist here (there is no model hub on this machine)",
     "模型文件夹 '{path}' 在本机不存在（本机没有模型仓库）"),
    ("give a file name for the config, e.g. configs/my_run.yaml", "请给配置文件起个名字，例如 configs/my_run.yaml"),
    ("'{path}': a config file ends in .yaml", "'{path}'：配置文件须以 .yaml 结尾"),
    ("preset '{name}' not found in {folder}", "在 {folder} 中没有找到预设 '{name}'"),
    ("'{name}': unsupported file type (expected one of {types})", "'{name}'：不支持的文件类型（应为 {types} 之一）"),
    ("'{name}' would be saved outside the data folder", "'{name}' 会被保存到数据文件夹之外"),
    ("give the dataset a name (letters, digits, '_' or '-')", "请给数据集起个名字（字母、数字、'_' 或 '-'）"),
    ("columns: not valid JSON ({problem})", "列映射：不是有效的 JSON（{problem}）"),
    ('columns: write {{"instruction": "问题", "output": "回答"}}',
     '列映射：请写成 {{"instruction": "问题", "output": "回答"}}'),
    ("columns: '{part}' should look like field=column, e.g. instruction=问题",
     "列映射：'{part}' 应写成 字段=列名，例如 instruction=问题"),
    ("the file is {size} MB; the upload limit is {limit} MB", "文件大小为 {size} MB，超过上传上限 {limit} MB"),
    ("the file has {n} problem(s); fix them first (see the table)", "文件有 {n} 个问题，请先修正（见下表）"),
    ("a dataset named '{name}' exists already; choose another name", "已有名为 '{name}' 的数据集，请换一个名字"),
    ("pick a finished run first", "请先选择一个完成的运行"),
    ("base vs tuned needs a run with a LoRA adapter", "对比基座与微调需要一个带 LoRA 适配器的运行"),
    ("{run} has no run.yaml to resume from", "{run} 中没有可用来继续训练的 run.yaml"),
    ("{run} is running already", "{run} 已经在运行"),
]

NUMBER_FIELDS = ("min", "max", "n", "size", "limit")
LINE = re.compile(r"^(\s*(?:⚠\s*|[-*]\s+)*)(.*?)(\s*)$", re.DOTALL)


def _pattern(template: str) -> re.Pattern:
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(f"(?P<{name}>-?[\\d.,e+]+)" if name in NUMBER_FIELDS else f"(?P<{name}>.+?)")
    return re.compile("".join(parts), re.DOTALL)


@functools.cache
def _catalogue() -> list[tuple[re.Pattern, dict[str, str]]]:
    """(pattern, {lang: template}) for every message and TEXT string with letters, either language."""
    entries = [dict(en=en, zh=zh) for en, zh in MESSAGES]
    entries += [dict(zh=zh, en=en) for zh, en in TEXT.values() if re.search(r"[^\W\d_]", zh + en)]
    return [(_pattern(entry[source]), entry) for entry in entries for source in LANGS]


def translate_line(line: str, lang: str) -> str:
    """One line in `lang` when a known message (in either language) matches all of it; its
    leading '⚠ ' or '- ' is kept. Any other line is returned as it is."""
    parts = LINE.match(line)
    if parts is None:  # not reached: every group of LINE may be empty, so it matches any line
        return line
    head, body, tail = parts.groups()
    if not body:
        return line
    for pattern, entry in _catalogue():
        match = pattern.fullmatch(body)
        if match:
            values = {k: translate_line(v, lang) if k.startswith("_") else v for k, v in match.groupdict().items()}
            return head + entry[lang].format(**values) + tail
    return line


def translate(text: str | None, lang: str) -> str:
    """A message (several lines, Markdown) in `lang`, line by line (translate_line)."""
    if not text:
        return text or ""
    return "\n".join(translate_line(line, lang) for line in str(text).split("\n"))


def t(key: str, lang: str = "zh", **values: object) -> str:
    """The text for key in lang ('zh' or 'en'), with {placeholders} filled from values."""
    zh, en = TEXT[key]
    text = en if lang == "en" else zh
    return text.format(**values) if values else text
