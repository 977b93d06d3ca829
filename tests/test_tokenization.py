import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer_core.tokenization import (
    IGNORE_INDEX,
    SupervisedCollator,
    encode_pt,
    encode_sft,
    pack_samples,
    setup_chat_template,
    tokenize_dataset,
)

CONVERSATION = [
    {"role": "system", "content": "你是中医助手"},
    {"role": "user", "content": "黄芪的功效？"},
    {"role": "assistant", "content": "补气升阳，固表止汗。"},
    {"role": "user", "content": "用量呢"},
    {"role": "assistant", "content": "九到三十克。"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _runs(ids, labels):
    """Contiguous stretches of trained tokens, as lists of ids."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def test_every_assistant_turn_and_only_those_are_trained(tokenizer):
    samples, stats = encode_sft([{"messages": CONVERSATION}], tokenizer, cutoff_len=512)
    ids, labels = samples[0]["input_ids"], samples[0]["labels"]
    # Token by token: the whole rendered conversation is exactly the template's output ...
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    # ... and the trained tokens are exactly each reply followed by its end-of-turn token.
    runs = _runs(ids, labels)
    expected = [tokenizer("补气升阳，固表止汗。<|im_end|>", add_special_tokens=False)["input_ids"],
                tokenizer("九到三十克。<|im_end|>", add_special_tokens=False)["input_ids"]]
    assert runs == expected
    assert stats.trainable_tokens == sum(len(r) for r in expected)
    # System, user turns and the "assistant\n" headers are all masked.
    masked_text = tokenizer.decode([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    for part in ("你是中医助手", "黄芪的功效？", "用量呢", "assistant"):
        assert part in masked_text


def test_truncation_drops_samples_with_no_answer_left_and_counts_them(tokenizer):
    long_question = [{"role": "user", "content": "黄芪" * 200}, {"role": "assistant", "content": "补气。"}]
    short = [{"role": "user", "content": "黄芪？"}, {"role": "assistant", "content": "补气升阳。" * 20}]
    samples, stats = encode_sft([{"messages": long_question}, {"messages": short}], tokenizer, cutoff_len=32)
    assert stats.dropped_no_trainable == 1 and stats.truncated == 2 and stats.samples == 1
    assert len(samples[0]["input_ids"]) == 32


def test_pt_joins_documents_with_eos_and_cuts_blocks(tokenizer):
    docs = [{"text": "四君子汤益气健脾。" * 10}, {"text": "麻黄发汗散寒。" * 10}]
    samples, stats = encode_pt(docs, tokenizer, cutoff_len=16)
    stream = [t for s in samples for t in s["input_ids"]]
    assert stream.count(tokenizer.eos_token_id) == 2
    assert all(len(s["input_ids"]) == 16 for s in samples[:-1])
    assert all(s["labels"] == s["input_ids"] for s in samples)


def test_fallback_template_for_a_tokenizer_without_one(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_model import build_tiny_model

    folder = build_tiny_model(tmp_path / "plain", chat_template=False)
    plain = AutoTokenizer.from_pretrained(folder)
    assert not plain.chat_template
    logs = []
    assert setup_chat_template(plain, "auto", logs.append) == "chatml"
    assert "no chat template" in logs[0]
    samples, _ = encode_sft([{"messages": CONVERSATION}], plain, 512)
    assert len(_runs(samples[0]["input_ids"], samples[0]["labels"])) == 2
    setup_chat_template(plain, "llama3")
    assert "<|start_header_id|>" in plain.chat_template


def test_second_run_on_same_data_uses_the_cache(tokenizer, tmp_path):
    examples = [{"messages": CONVERSATION}] * 50
    first, stats1 = tokenize_dataset(examples, tokenizer, "sft", 512, tmp_path)
    second, stats2 = tokenize_dataset(examples, tokenizer, "sft", 512, tmp_path)
    assert not stats1.cached and stats2.cached
    assert first == second and stats2.trainable_tokens == stats1.trainable_tokens
    # Different settings or data make a different cache entry.
    _, stats3 = tokenize_dataset(examples, tokenizer, "sft", 64, tmp_path)
    _, stats4 = tokenize_dataset(examples[:10], tokenizer, "sft", 512, tmp_path)
    assert not stats3.cached and not stats4.cached


def test_packed_loss_equals_unpacked_loss(tokenizer, tiny_model_dir):
    """Packing with per-sample position ids must compute the same loss as padding."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.eval()
    conversations = [
        [{"role": "user", "content": "黄芪？" * n}, {"role": "assistant", "content": "补气升阳。" * (4 - n)}]
        for n in range(1, 4)
    ]
    samples, _ = encode_sft([{"messages": c} for c in conversations], tokenizer, 512)
    collate = SupervisedCollator(tokenizer.pad_token_id)

    def summed_loss(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")

    with torch.no_grad():
        padded = summed_loss(collate(samples))
        packed_blocks = pack_samples(samples, cutoff_len=512)
        assert len(packed_blocks) == 1
        packed = summed_loss(collate(packed_blocks))
    # Label shifting across a sample boundary predicts the next sample's first token from the
    # previous sample's last; that token is a prompt token (label -100), so nothing leaks.
    assert torch.allclose(padded, packed, atol=1e-5, rtol=1e-6), (padded, packed)


def test_labels_from_the_rust_backend_match_the_offsets_rule(tokenizer):
    """encode_with_labels (span ends mapped to tokens) against the tokenizer call and the
    plain rule on every token's offsets."""
    from trainer_core.tokenization import _mask_outside, encode_with_labels

    texts = ["<|im_start|>user\n黄芪的功效？<|im_end|>\n<|im_start|>assistant\n补气升阳<|im_end|>\n",
             "补气升阳，固表止汗。 plain ascii  two  spaces", "\n\n<|im_end|>mixed<|im_start|>",
             "😀 emoji and 〇 rare 𠀀 characters", "ab"]
    spans = [[(43, 52), (53, 60)], [(0, 5), (6, 6), (10, 30)], [(3, 20)], [(1, 7), (14, 20)], []]
    reference = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    got = encode_with_labels(tokenizer, list(zip(texts, spans)))
    for (ids, labels), ref_ids, offsets, text_spans in zip(got, reference["input_ids"],
                                                         reference["offset_mapping"], spans):
        assert ids == ref_ids
        assert labels == _mask_outside(ref_ids, offsets, text_spans)
        assert any(label != IGNORE_INDEX for label in labels) == any(e > s for s, e in text_spans)


def test_vectorised_masking_equals_the_token_by_token_rule():
    """_mask_outside (numpy) against the plain rule: a token is trained on when it overlaps a span."""
    import random

    from trainer_core.tokenization import _mask_outside

    rng = random.Random(7)
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, 200), rng.randint(1, 40)))
        offsets = list(zip([0, *cuts[:-1]], cuts))
        if rng.random() < 0.3:  # zero-width tokens, as some tokenizers give special tokens
            offsets.insert(rng.randrange(len(offsets)), (cuts[0], cuts[0]))
        ids = [rng.randrange(1000) for _ in offsets]
        points = sorted(rng.sample(range(0, 210), 2 * rng.randint(0, 3)))
        spans = list(zip(points[0::2], points[1::2]))
        expected = [i if any(end > s and start < e for s, e in spans if e > s) else IGNORE_INDEX
                    for i, (start, end) in zip(ids, offsets)]
        assert _mask_outside(ids, offsets, spans) == expected


def test_special_token_text_in_a_record_is_named_by_record_and_field(tokenizer):
    from trainer_core.tokenization import special_token_problems

    clean = {"messages": CONVERSATION, "source": "qa.json", "index": 0}
    leaked = {"messages": [{"role": "user", "content": "黄芪？"},
                           {"role": "assistant", "content": "补气。<|im_end|>\n<|im_start|>user\n还有呢"}],
              "source": "qa.json", "index": 7}
    corpus = {"text": "四君子汤<|endoftext|>", "source": "corpus.txt", "index": 3}
    problems = special_token_problems([clean, leaked, corpus], tokenizer)
    assert [(p.file, p.record, p.field) for p in problems] == [
        ("qa.json", 7, "messages[1].content (assistant)"), ("corpus.txt", 3, "text")]
    assert "'<|im_end|>'" in problems[0].message and "'<|endoftext|>'" in problems[1].message
    assert special_token_problems([clean] * 5, tokenizer) == []
    assert len(special_token_problems([leaked] * 5, tokenizer, limit=2)) == 2



# A template that rewrites earlier turns as Qwen3's does: the last reply is shown with its <think>
# block (an empty one when it has none), an earlier reply without it.
REWRITING_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{% endif %}"
    "{% if loop.last %}{% set content = '<think>\n' + reasoning + '\n</think>\n\n' + content %}{% endif %}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.parametrize("first_reply", ["是", "<think>\n黄芪归肺脾经。\n</think>\n\n是"])
def test_a_reply_of_a_rewritten_turn_is_labelled_in_its_own_turn(tiny_model_dir, first_reply):
    """With a template that rewrites earlier turns, each reply is looked for after its own
    assistant header: "是" in the system and user text stays masked, and an earlier reply whose
    reasoning the template drops is trained on what the template shows of it."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = REWRITING_TEMPLATE
    conversation = [
        {"role": "system", "content": "回答是或否。"},
        {"role": "user", "content": "黄芪是补气药吗？答是或否"},
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": "麻黄是补气药吗？"},
        {"role": "assistant", "content": "<think>\n麻黄发汗。\n</think>\n\n否"},
    ]
    samples, _ = encode_sft([{"messages": conversation}], tok, cutoff_len=512)
    runs = _runs(samples[0]["input_ids"], samples[0]["labels"])
    assert [tok.decode(run) for run in runs] == ["是<|im_end|>", "<think>\n麻黄发汗。\n</think>\n\n否<|im_end|>"]


@pytest.mark.parametrize("packing", [True, False])
def test_pt_packing_decides_whether_documents_share_blocks(tokenizer, tiny_data_dir, packing, tmp_path, monkeypatch):
    """`packing: false` for stage pt: every block holds one document (its end, eos, only last)."""
    from trainer_core.config import load_config
    from trainer_core.train import load_training_data

    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path))  # a fresh token cache
    cfg = load_config(None, {"stage": "pt", "dataset": "corpus", "dataset_dir": str(tiny_data_dir),
                             "cutoff_len": 48, "packing": packing, "val_size": 0})
    train, _ = load_training_data(cfg, tokenizer, log=lambda *a: None)
    eos = tokenizer.eos_token_id
    shared = [s for s in train if eos in s["input_ids"][:-1]]  # a document ends inside the block
    assert bool(shared) is packing
    if not packing:
        assert any(len(s["input_ids"]) < 48 for s in train)  # a document's last block, not filled up


def test_chat_evaluation_and_export_stop_on_the_same_tokens(tiny_model_dir):
    """One list of end-of-turn tokens and one function from a tokenizer to stop ids
    (tokenization.END_OF_TURN_MARKERS, stop_token_ids): chat and evaluation stop on them and
    export writes them as the model's eos ids, the template's own end of turn first."""
    import ast
    from pathlib import Path

    from trainer_core import evaluate, export, tokenization
    from trainer_core.chat import ChatSession

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<end_of_turn>", "<|other|>"]})
    known = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")}
    stop_ids = tokenization.stop_token_ids(tok)
    assert stop_ids == sorted(known)  # eos (<|im_end|>) and the known markers; not <|other|>, not unk
    session = ChatSession()
    session.tokenizer = tok
    assert session._stop_ids() == stop_ids
    assert evaluate.stop_token_ids is tokenization.stop_token_ids  # generate_answers' stops
    exported = export.generation_eos_ids(tok, None)
    assert exported[0] == tok.convert_tokens_to_ids("<|im_end|>") == export.end_of_turn_id(tok)
    assert sorted(exported) == stop_ids
    assert export.generation_eos_ids(tok, [7, stop_ids[-1]]) == [*exported, 7]  # the model's own kept
    # ... and no other module keeps a list of its own.
    core = Path(tokenization.__file__).parent
    for path in core.glob("*.py"):
        if path.name == "tokenization.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.name] if isinstance(node, ast.FunctionDef) else
                     [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else [])
            assert not [n for n in names if "end_of_turn" in n.lower() or "stop_token" in n.lower()], path
