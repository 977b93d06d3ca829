"""Data larger than memory: records checked, tokenized and kept as Arrow files, memory-mapped.

The in-memory path (`data.load_datasets`, then `tokenization.tokenize_dataset`) holds every record
and sample as Python objects: the fastest start for small data, but its memory grows with the
data (bench/RESULTS.md, "Large data"). A run whose datasets' files pass `ARROW_FROM_BYTES`
(`data_engine: auto`), or any run with `data_engine: arrow`, takes this path instead:

1. Plan (`plan_shards`): each file is cut into shards of about `SHARD_BYTES`, at line starts for
   .jsonl and one-document-per-line .txt, at blank lines for paragraph .txt, by row groups for
   .parquet. A .json, .csv, .tsv or .xlsx file is one shard, read whole as the in-memory path
   reads it (its 1 GiB limit stands: give data that size as .jsonl or .parquet).
2. Prepare (`prepare_shard`, in `preprocessing_num_workers` processes, every core by default):
   a shard's records are checked and converted by `data.convert_row` and tokenized by
   `tokenization.encode_sft` / `pt_documents` + `cut_blocks`, the functions of the in-memory
   path, and the samples written as an Arrow file in Hugging Face datasets' format. A shard is
   renamed into place only when complete, so a killed preparation starts again at the first
   missing shard, and a later run on the same files (same size and modification time), tokenizer
   and settings reads them from `$QIHUANG_HOME/cache/arrow/` without preparing anything.
3. Problems: a shard keeps the first `PROBLEMS_PER_KIND` problems of each kind and counts all of
   them; any problem stops the run with a `DataError` that shows those and the counts by kind.
4. Load (`load_arrow_data`): `datasets.Dataset.from_file` memory-maps the shards. `num_samples`,
   `max_samples`, mixing by weight, the shuffle and the val split are the in-memory path's draws
   (`data.sample_order`, `data.interleave_order`, `random.Random(seed)`) made over sample indices
   and applied with `Dataset.select`.

Differences from the in-memory path, all at shard edges or in what is counted: pre-training
blocks are cut per shard (each shard's last block is shorter), SFT packing packs within a shard,
and mixing, `max_samples` and the val split count samples (after tokenization) rather than records.

With several processes, local rank 0 of each node prepares and the others wait for its
`complete.json`, then read the same files: one tokenization per run, not per rank.
`streaming: true` reads, checks and tokenizes the same shards lazily while training
(`stream_arrow_data`; it needs `max_steps`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_core.errors import DataError, Problem, UserError

ARROW_FROM_BYTES = 32 << 20  # data_engine auto: files past this go through Arrow (bench/RESULTS.md)
SHARD_BYTES = 64 << 20  # a shard's share of a file: the unit of work, progress and resuming
PROBLEMS_PER_KIND = 20  # problems kept of each kind; all are counted
SAMPLE_RECORDS = 20_000  # a check's statistics and preview come from about this many records, spread out
LAYOUT_VERSION = "1"  # bump when a shard's files change meaning
BATCH_RECORDS = 1000  # records tokenized (and written) together
WAIT_SECONDS = 6 * 3600  # how long a rank waits for local rank 0 to prepare the data
LINE_KINDS = (".jsonl",)


# ---------------------------------------------------------------------------------------------
# Which path a run takes
# ---------------------------------------------------------------------------------------------

def data_bytes(names: list[str], dataset_dir: str | Path, stage: str) -> int:
    """The size on disk of the datasets' files (0 for a file that cannot be found: the reader
    reports it)."""
    from trainer_core.data import dataset_source

    total = 0
    for name in names:
        source, _ = dataset_source(name, dataset_dir, stage)
        for path, _ in source.files:
            try:
                total += path.stat().st_size
            except OSError:
                pass
    return total


def use_arrow(engine: str, names: list[str], dataset_dir: str | Path, stage: str) -> bool:
    if engine != "auto":
        return engine == "arrow"
    return data_bytes(names, dataset_dir, stage) >= ARROW_FROM_BYTES


# ---------------------------------------------------------------------------------------------
# Plan: files -> shards
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """One part of one file: the unit a worker prepares."""

    dataset: str
    path: str
    display: str  # the file as problems name it
    kind: str  # lines (one record per line), paragraphs (.txt split on blank lines), parquet, whole
    start: int  # bytes (lines, paragraphs) or row groups (parquet)
    end: int
    first_line: int  # 1-based line number of the shard's first line (lines, paragraphs)
    first_record: int  # the record index of the shard's first record (parquet, whole); else fixed up later
    encoding: str
    number: int  # the shard's position in its dataset
    size: int  # its bytes on disk (about, for parquet): what progress counts


def plan_shards(source: Any, shard_bytes: int | None = None) -> tuple[list[Shard], list[Problem]]:
    """Cut each file of a dataset (`data.DatasetSource`) into shards of about `shard_bytes`
    (default SHARD_BYTES)."""
    from trainer_core.data import detect_encoding

    shard_bytes = shard_bytes or SHARD_BYTES
    shards: list[Shard] = []
    problems: list[Problem] = []
    for path, display in source.files:
        suffix = path.suffix.lower()
        try:
            size = path.stat().st_size
            if suffix in LINE_KINDS or suffix == ".txt":
                with open(path, "rb") as fh:
                    head = fh.read(4 << 20)
                encoding, problem = detect_encoding(head, display, sample=True)
                if problem is None and encoding in ("utf-16", "utf-32"):
                    problem = Problem(display, None, None, f"is {encoding.upper()} text; a file read in parts "
                                      "must be UTF-8 (or GB18030): save it as UTF-8")
                if problem is not None:
                    problems.append(problem)
                    continue
                if not head.strip():
                    problems.append(Problem(display, None, None, "the file is empty"))
                    continue
                kind = "lines" if suffix in LINE_KINDS or source.txt_lines or not _has_blank_line(path) \
                    else "paragraphs"
                shards += _byte_shards(source.name, path, display, kind, size, encoding, shard_bytes, len(shards))
            elif suffix == ".parquet":
                shards += _parquet_shards(source.name, path, display, size, shard_bytes, len(shards))
            else:
                shards.append(Shard(source.name, str(path), display, "whole", 0, 1, 1, 0, "", len(shards), size))
        except OSError as e:
            problems.append(Problem(display, None, None, f"cannot read the file: {e.strerror or e}"))
    return shards, problems


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


def _has_blank_line(path: Path) -> bool:
    """Whether a .txt file is paragraphs, as data._parse_txt decides: a blank line with text
    before and after it (it reads until the first one; a file with none is read to the end)."""
    text_before = blank_after_text = False
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                if blank_after_text:
                    return True
                text_before = True
            elif text_before:
                blank_after_text = True
    return False


def _byte_shards(name: str, path: Path, display: str, kind: str, size: int, encoding: str,
                 shard_bytes: int, number: int) -> list[Shard]:
    """Shards of `shard_bytes` or so, each starting at a line start (lines) or after a blank line
    (paragraphs); the line number of each start counted on the way."""
    shards: list[Shard] = []
    start, line = 0, 1
    with open(path, "rb") as fh:
        while start < size:
            end = min(size, start + shard_bytes)
            if end < size:
                fh.seek(end)
                window = fh.read(1 << 20)
                while window:
                    cut = _cut_point(window, kind)
                    if cut is not None:
                        end += cut
                        break
                    end += len(window)
                    window = fh.read(1 << 20)
                end = min(end, size)
            fh.seek(start)
            lines_here = _count_newlines(fh, end - start)
            shards.append(Shard(name, str(path), display, kind, start, end, line, 0, encoding, number + len(shards),
                                end - start))
            start, line = end, line + lines_here
    return shards


def _cut_point(window: bytes, kind: str) -> int | None:
    if kind == "lines":
        at = window.find(b"\n")
        return None if at < 0 else at + 1
    found = _BLANK_LINE.search(window)
    return None if found is None else found.end()


def _count_newlines(fh: Any, length: int) -> int:
    count = 0
    while length > 0:
        chunk = fh.read(min(length, 16 << 20))
        if not chunk:
            break
        count += chunk.count(b"\n")
        length -= len(chunk)
    return count


def _parquet_shards(name: str, path: Path, display: str, size: int, shard_bytes: int, number: int) -> list[Shard]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    groups = meta.num_row_groups
    per_group = max(1, size // max(1, groups))
    step = max(1, shard_bytes // per_group)
    shards: list[Shard] = []
    first = 0
    for start in range(0, groups, step):
        end = min(groups, start + step)
        shards.append(Shard(name, str(path), display, "parquet", start, end, 1, first, "", number + len(shards),
                            per_group * (end - start)))
        first += sum(meta.row_group(g).num_rows for g in range(start, end))
    return shards or [Shard(name, str(path), display, "whole", 0, 1, 1, 0, "", number, size)]


# ---------------------------------------------------------------------------------------------
# Prepare: a shard -> an Arrow file of samples
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What decides the samples, besides the files: part of the cache key."""

    stage: str
    cutoff_len: int
    packing: bool
    spec: Any  # data._Spec
    max_record_chars: int = 200_000


@dataclass
class ShardResult:
    """What a worker reports of one shard (also written beside it as JSON)."""

    number: int
    records: int = 0  # records read (valid or not); indices of later shards build on it
    samples: int = 0
    problems: list[list] = field(default_factory=list)  # [record (shard-relative), field, message, file]
    totals: dict[str, int] = field(default_factory=dict)  # problems by kind
    stats: dict[str, int] = field(default_factory=dict)  # EncodeStats counters
    special: list[str] = field(default_factory=list)  # the first special-token warnings
    special_count: int = 0
    bytes: int = 0
    sample: list[dict] = field(default_factory=list)  # a check's first valid examples of the shard


def _kind(problem: Problem) -> str:
    """A problem's kind: its field and message with numbers and quoted values left out."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "…", problem.message)
    message = re.sub(r"(?<![\w-])\d[\d,.]*", "N", message)  # "line 12", not "UTF-8"
    return f"{problem.field}: {message}" if problem.field else message


def iter_records(shard: Shard) -> Iterator[tuple[int, Any, Problem | None]]:
    """(shard-relative record index, row, problem) for each record of a shard."""
    from trainer_core.data import json_error

    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        index = 0
        table = pq.ParquetFile(shard.path)
        for group in range(shard.start, shard.end):
            for row in table.read_row_group(group).to_pylist():
                yield index, {k: "" if v is None or (isinstance(v, float) and v != v) else v
                              for k, v in row.items()}, None
                index += 1
        return
    with open(shard.path, "rb") as fh:
        fh.seek(shard.start)
        data = fh.read(shard.end - shard.start)
    if shard.start == 0 and shard.encoding == "utf-8-sig" and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    index = 0
    if shard.kind == "paragraphs":
        try:
            text = data.decode(shard.encoding).replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as e:
            yield -1, None, Problem(shard.display, None, None, f"byte {shard.start + e.start:,} is not valid "
                                    f"{shard.encoding.upper()} text (the file's first part was); save it as UTF-8")
            return
        for part in re.split(r"\n\s*\n", text):
            if part.strip():
                yield index, part.strip(), None
                index += 1
        return
    json_lines = Path(shard.path).suffix.lower() in LINE_KINDS
    codec = "utf-8" if shard.encoding == "utf-8-sig" else shard.encoding  # the BOM is gone already
    for number, raw in enumerate(data.split(b"\n"), shard.first_line):
        if not raw.strip():
            continue
        try:
            line = raw.decode(codec)
        except UnicodeDecodeError:
            yield index, None, Problem(shard.display, index, None, f"line {number}: not valid {codec.upper()} text")
            index += 1
            continue
        if not json_lines:  # one document per line, as data._parse_txt_lines reads them (a lone CR ends one too)
            for document in line.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
                if document.strip():
                    yield index, document, None
                    index += 1
            continue
        try:
            yield index, json.loads(line), None
        except (ValueError, RecursionError) as e:
            column = f" at column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            yield index, None, Problem(shard.display, index, None,
                                       f"line {number}: invalid JSON{column}: {json_error(e)}")
        index += 1


def _whole_rows(shard: Shard, settings: Settings) -> Iterator[tuple[int, Any, Problem | None]]:
    from trainer_core.data import read_rows

    rows, problems = read_rows(Path(shard.path), shard.display, settings.spec.formatting, 1 << 30,
                                False, settings.spec.sheet)
    for problem in problems:
        yield (problem.record if problem.record is not None else -1), None, problem
    for index, row in rows:
        yield index, row, None


def examples_of(shard: Shard, settings: Settings, result: ShardResult) -> Iterator[dict]:
    """The shard's valid examples, converted by data.convert_row; problems go to `result`."""
    from trainer_core.data import convert_row

    kept: dict[str, int] = {}
    rows = _whole_rows(shard, settings) if shard.kind == "whole" else iter_records(shard)
    for index, row, problem in rows:
        result.records = max(result.records, index + 1)
        trouble = [problem] if problem is not None else []
        example = None
        if problem is None:
            example, trouble = convert_row(index, row, shard.display, settings.spec, settings.stage,
                                           shard.dataset, settings.max_record_chars)
        for item in trouble:
            kind = _kind(item)
            result.totals[kind] = result.totals.get(kind, 0) + 1
            if kept.get(kind, 0) < PROBLEMS_PER_KIND:
                kept[kind] = kept.get(kind, 0) + 1
                result.problems.append([item.record, item.field, item.message, item.file])
        if example is not None:
            yield example


def samples_of(shard: Shard, settings: Settings, tokenizer: Any, result: ShardResult) -> Iterator[dict]:
    """The shard's samples, tokenized by the in-memory path's functions, batch by batch."""
    from trainer_core.tokenization import (
        EncodeStats,
        cut_blocks,
        encode_sft,
        pack_samples,
        pt_documents,
        special_token_problems,
    )

    stats = EncodeStats()
    carry: list[int] = []  # pre-training with packing: the stream not yet cut into a block
    batch: list[dict] = []

    def flush() -> Iterator[dict]:
        nonlocal carry
        found = special_token_problems(batch, tokenizer)
        result.special_count += len(found)
        result.special += [str(p) for p in found[: 3 - len(result.special)]]
        stats.records += len(batch)
        if settings.stage == "sft":
            samples, part = encode_sft(batch, tokenizer, settings.cutoff_len)
            for key in ("truncated", "dropped_no_trainable", "system_dropped"):
                setattr(stats, key, getattr(stats, key) + getattr(part, key))
            if settings.packing:  # first-fit within a batch: packing all of a large shard is quadratic
                samples = pack_samples(samples, settings.cutoff_len)
            yield from samples
        else:
            documents = pt_documents(batch, tokenizer, stats)
            if not settings.packing:
                for document in documents:
                    yield from cut_blocks(document, settings.cutoff_len)
            else:
                for document in documents:
                    carry += document
                whole = len(carry) - len(carry) % settings.cutoff_len
                yield from cut_blocks(carry[:whole], settings.cutoff_len)
                carry = carry[whole:]

    for example in examples_of(shard, settings, result):
        batch.append(example)
        if len(batch) == BATCH_RECORDS:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
    if carry:
        yield from cut_blocks(carry, settings.cutoff_len)
    result.stats = {k: v for k, v in stats.__dict__.items() if isinstance(v, int) and not isinstance(v, bool)}


def prepare_shard(shard: Shard, settings: Settings, tokenizer: Any, folder: Path | None,
                  sample_size: int = 0) -> ShardResult:
    """Prepare one shard into `folder`: shard-N.arrow (the samples) and shard-N.json (the result),
    the .arrow renamed into place last, when the shard is complete. With no
    tokenizer the records are only checked (data check), nothing is written, and the first
    `sample_size` valid examples come back in the result."""
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    result = ShardResult(number=shard.number, bytes=shard.size)
    if tokenizer is None or folder is None:
        for example in examples_of(shard, settings, result):
            result.samples += 1
            if len(result.sample) < sample_size:
                result.sample.append(example)
        return result
    columns = {"input_ids": List(Value("int32"))}
    if settings.stage == "sft":  # pre-training's labels are its input_ids (_with_labels)
        columns["labels"] = List(Value("int32"))
    if settings.stage == "sft" and settings.packing:
        columns["position_ids"] = List(Value("int32"))
    stem = folder / f"shard-{shard.number:05d}"
    partial = stem.with_name(f"{stem.name}.{os.getpid()}.partial")
    writer = ArrowWriter(features=Features(columns), path=str(partial), writer_batch_size=BATCH_RECORDS)
    batch: list[dict] = []
    try:
        for sample in samples_of(shard, settings, tokenizer, result):
            batch.append(sample)
            if len(batch) == BATCH_RECORDS:
                writer.write_batch({k: [s[k] for s in batch] for k in columns})
                result.samples += len(batch)
                batch = []
        if batch:
            writer.write_batch({k: [s[k] for s in batch] for k in columns})
            result.samples += len(batch)
        writer.finalize()
    finally:
        writer.close()
    stem.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(result)), encoding="utf-8")
    partial.replace(stem.with_suffix(".arrow"))  # last: a shard with its .arrow is complete
    return result


def _planned(folder: Path) -> list[Shard] | None:
    """The shards of a complete preparation (plan.json): planning again would read every byte of
    the files to count their lines; the folder's key already names their size and mtime."""
    try:
        return [Shard(**shard) for shard in json.loads((folder / "plan.json").read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None


def _read_result(folder: Path, number: int) -> ShardResult | None:
    stem = folder / f"shard-{number:05d}"
    if not stem.with_suffix(".arrow").is_file():
        return None
    try:
        return ShardResult(**json.loads(stem.with_suffix(".json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# Run the preparation: workers, progress, resuming
# ---------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(settings: Settings, tokenizer: Any) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _WORKER.update(settings=settings, tokenizer=tokenizer)


def _work(shard: Shard, folder: str, sample_size: int) -> ShardResult:
    return prepare_shard(shard, _WORKER["settings"], _WORKER["tokenizer"], Path(folder) if folder else None,
                         sample_size)


@dataclass
class Prepared:
    """A dataset prepared as Arrow shards (or only checked, with no tokenizer)."""

    name: str
    folder: Path | None
    results: list[ShardResult]
    shards: list[Shard]
    problems: list[Problem]
    totals: dict[str, int]
    reused: int  # shards found complete in the cache

    @property
    def records(self) -> int:
        return sum(r.records for r in self.results)

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.results)


def cache_folder(source: Any, settings: Settings, tokenizer: Any, shard_bytes: int) -> Path:
    """Where a dataset's shards live: named by everything that decides them."""
    from trainer_core.models import qihuang_home
    from trainer_core.tokenization import fingerprint

    digest = hashlib.sha256(LAYOUT_VERSION.encode())
    digest.update(fingerprint([], tokenizer, {"stage": settings.stage, "cutoff_len": settings.cutoff_len,
                                              "packing": settings.packing}).encode())
    digest.update(repr((dataclasses.asdict(settings.spec), settings.max_record_chars, shard_bytes)).encode())
    for path, display in source.files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{display}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    safe = re.sub(r"[^\w.-]", "_", source.name)[:40]
    return qihuang_home() / "cache" / "arrow" / f"{safe}-{digest.hexdigest()[:20]}"


def prepare_dataset(source: Any, settings: Settings, tokenizer: Any | None, *, workers: int | None = None,
                    shard_bytes: int | None = None, progress: Callable[[int, int, int, int], None] | None = None,
                    wait_only: bool = False) -> Prepared:
    """Prepare (or find prepared) every shard of a dataset; `progress(done_bytes, total_bytes,
    done_shards, total_shards)` after each shard. `wait_only`: another process prepares them
    (local rank 0); wait for its complete.json. With no tokenizer the records are only checked,
    and each result holds a share of SAMPLE_RECORDS valid examples (`check_large`)."""
    workers = max(1, min(workers or os.cpu_count() or 1, os.cpu_count() or 1))  # never above the cores
    if shard_bytes is None:  # at least two shards a worker, so that every core has work to the end
        total = sum(path.stat().st_size for path, _ in source.files if path.is_file())
        shard_bytes = min(SHARD_BYTES, max(4 << 20, total // (2 * workers)))
    folder = cache_folder(source, settings, tokenizer, shard_bytes) if tokenizer is not None else None
    if folder is not None and wait_only:
        _wait_for(folder)
    planned = _planned(folder) if folder is not None else None
    shards, problems = (planned, []) if planned is not None else plan_shards(source, shard_bytes)
    results: dict[int, ShardResult] = {}
    reused = 0
    total_bytes = sum(s.size for s in shards)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for shard in shards:
            found = _read_result(folder, shard.number)
            if found is not None:
                results[shard.number] = found
        reused = len(results)
    todo = [s for s in shards if s.number not in results]
    sample_size = 0 if folder else -(-SAMPLE_RECORDS // max(1, len(shards)))  # a check: spread over the shards
    done_bytes = sum(s.size for s in shards if s.number in results)
    if progress and shards:
        progress(done_bytes, total_bytes, len(results), len(shards))
    workers = max(1, min(workers, len(todo)))
    if todo and workers == 1:
        for shard in todo:
            results[shard.number] = prepare_shard(shard, settings, tokenizer, folder, sample_size)
            done_bytes += shard.size
            if progress:
                progress(done_bytes, total_bytes, len(results), len(shards))
    elif todo:
        import multiprocessing

        # spawn, not fork: the parent may hold threads (torch, a process group) a fork would copy
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(settings, tokenizer)) as pool:
            futures = {pool.submit(_work, shard, str(folder) if folder else "", sample_size): shard for shard in todo}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                shard = futures[future]
                results[shard.number] = future.result()
                done_bytes += shard.size
                if progress:
                    progress(done_bytes, total_bytes, len(results), len(shards))
    ordered = [results[s.number] for s in shards]
    totals: dict[str, int] = {}
    for problem in problems:  # the plan's: whole files
        totals[_kind(problem)] = totals.get(_kind(problem), 0) + 1
    problems += _absolute_problems(shards, ordered)
    for result in ordered:
        for kind, n in result.totals.items():
            totals[kind] = totals.get(kind, 0) + n
    if folder is not None and not wait_only:
        from trainer_core.runs import write_json_atomic

        write_json_atomic(folder / "plan.json", [dataclasses.asdict(shard) for shard in shards])
        write_json_atomic(folder / "complete.json", {"shards": len(shards), "samples": sum(r.samples for r in ordered)})
    return Prepared(source.name, folder, ordered, shards, problems, totals, reused)


def _record_bases(shards: list[Shard], results: list[ShardResult]) -> list[int]:
    """For each shard, the file-relative index of its first record: the records of the file's
    earlier shards counted (a parquet shard knows its own from the file's metadata)."""
    bases, offset, last_path = [], 0, None
    for shard, result in zip(shards, results):
        if shard.path != last_path:
            offset, last_path = 0, shard.path
        bases.append(shard.first_record if shard.kind == "parquet" else offset)
        offset += result.records
    return bases


def _absolute_problems(shards: list[Shard], results: list[ShardResult]) -> list[Problem]:
    """Shard-relative record indices made file-relative, the first PROBLEMS_PER_KIND of each kind
    kept; a check's sample examples get their file-relative index the same way."""
    problems: list[Problem] = []
    kept: dict[str, int] = {}
    for base, result in zip(_record_bases(shards, results), results):
        for record, field_name, message, file in result.problems:
            problem = Problem(file, None if record is None or record < 0 else record + base, field_name, message)
            kind = _kind(problem)
            if kept.get(kind, 0) < PROBLEMS_PER_KIND:
                kept[kind] = kept.get(kind, 0) + 1
                problems.append(problem)
        for example in result.sample:
            example["index"] += base
    return problems


def _wait_for(folder: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not (folder / "complete.json").is_file():
        if time.monotonic() > deadline:
            from trainer_core.runs import format_duration

            raise UserError(f"waited {format_duration(int(WAIT_SECONDS))} for local rank 0 to prepare the data in "
                            f"{folder}; its log (rank 0's console) says why it has not finished")
        time.sleep(1.0)


def print_progress(log: Callable[[str], None] = print, every: float = 5.0, record: Path | None = None,
                   dataset: str = "") -> Callable[[int, int, int, int], None]:
    """A progress function that logs a line at most every `every` seconds (and at the end): what
    the console, the Train tab's log and a CLI user see. `record`: a run folder whose
    data_progress.json it keeps current, for the Train tab's progress bar."""
    from trainer_core.data import human_size
    from trainer_core.runs import DATA_PROGRESS_FILE, format_duration, write_json_atomic

    began = time.monotonic()
    last = [-float("inf")]  # the first call logs
    cached: list[int] = []  # the bytes found prepared at the start: not part of the rate

    def report(done: int, total: int, shards_done: int, shards: int) -> None:
        now = time.monotonic()
        if not cached:
            cached.append(done)
        rate = (done - cached[0]) / max(now - began, 1e-9)
        eta = int((total - done) / rate) if rate > 0 and done < total else None
        if record is not None:
            write_json_atomic(record / DATA_PROGRESS_FILE, {
                "dataset": dataset, "done_bytes": done, "total_bytes": total, "shards_done": shards_done,
                "shards": shards, "bytes_per_second": round(rate), "eta_seconds": eta})
        if now - last[0] < every and shards_done < shards:
            return
        last[0] = now
        log(f"preparing data: {100 * done / max(total, 1):.0f}% ({human_size(done)} of {human_size(total)}, "
            f"{shards_done}/{shards} shards, {human_size(rate)}/s"
            f"{f', ETA {format_duration(eta)}' if eta is not None else ''})")

    return report


# ---------------------------------------------------------------------------------------------
# Load: shards -> the run's train and eval splits
# ---------------------------------------------------------------------------------------------

@dataclass
class ArrowSplits:
    """A run's data from the Arrow path: memory-mapped datasets and what the logs report."""

    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset or None
    composition: dict[str, int]  # training samples per dataset, per epoch
    lines: list[str]  # statistics lines for the console


def load_arrow_data(cfg: Any, tokenizer: Any, log: Callable[[str], None] = print) -> ArrowSplits:
    """Prepare (or find prepared) the run's datasets and make its splits, as
    `data.load_datasets` does in memory (see the module's note for what is counted differently)."""
    from datasets import Dataset, concatenate_datasets

    from trainer_core.config import dataset_mix
    from trainer_core.data import (
        dataset_source,
        interleave_order,
        load_dataset_info,
        name_list,
        no_answers,
        registry_entry,
        sample_order,
        val_count,
    )

    names, weights = dataset_mix(cfg.dataset, cfg.interleave_probs)
    eval_names = name_list(cfg.eval_dataset)
    if not names:
        raise UserError('no dataset given: set "dataset" to one or more names from dataset_info.json')
    info = load_dataset_info(cfg.dataset_dir)
    for name in names + eval_names:
        registry_entry(info, name, Path(cfg.dataset_dir) / "dataset_info.json")
    wait_only = int(os.environ.get("LOCAL_RANK", "0")) != 0
    problems: list[Problem] = []
    totals: dict[str, int] = {}
    prepared: dict[str, Prepared] = {}
    for name in dict.fromkeys(names + eval_names):
        source, trouble = dataset_source(name, cfg.dataset_dir, cfg.stage)
        settings = Settings(cfg.stage, cfg.cutoff_len, cfg.resolved_packing(), source.spec)
        started = time.perf_counter()
        record = Path(cfg.output_dir) if cfg.output_dir and os.environ.get("RANK", "0") == "0" else None
        done = prepare_dataset(source, settings, tokenizer, workers=cfg.preprocessing_num_workers,
                               progress=print_progress(log, record=record, dataset=name), wait_only=wait_only)
        for problem in trouble:
            totals[_kind(problem)] = totals.get(_kind(problem), 0) + 1
        for kind, n in done.totals.items():
            totals[kind] = totals.get(kind, 0) + n
        problems += trouble + done.problems
        if no_answers(source, [] if done.samples == 0 else [None], problems):
            raise UserError(source.text_hint())
        prepared[name] = done
        fresh = len(done.shards) - done.reused
        how = "from cache" if fresh == 0 else f"prepared {fresh} of {len(done.shards)} shards"
        log(f"{name}: {done.records:,} records → {done.samples:,} samples ({how} in "
            f"{time.perf_counter() - started:.1f} s; Arrow, memory-mapped, {done.folder})")
        special = sum(r.special_count for r in done.results)
        if special:
            log(f"warning: {special:,} {name} record field(s) hold special-token text; the first:")
            for line in [line for r in done.results for line in r.special][:3]:
                log(f"  - {line}")
    if problems:
        raise DataError(problems, totals=totals)

    def dataset_of(name: str) -> Any:
        folder = prepared[name].folder
        assert folder is not None  # prepared with a tokenizer
        files = [str(folder / f"shard-{r.number:05d}.arrow")
                 for r in prepared[name].results if r.samples]
        if not files:
            raise UserError(f"dataset {name} holds no samples after tokenization")
        return concatenate_datasets([Dataset.from_file(f) for f in files])

    import numpy as np

    parts = [dataset_of(name) for name in names]
    groups: list[Any] = []  # per dataset, the samples it gives (a range, or num_samples' draw)
    for name, part in zip(names, parts):
        order: Any = range(len(part))
        if info[name].get("num_samples"):
            order = sample_order(len(part), info[name]["num_samples"], f"{cfg.seed}:{name}")
        groups.append(np.asarray(order[: cfg.max_samples] if cfg.max_samples else order, dtype=np.int64))
    offsets = np.cumsum([0] + [len(part) for part in parts[:-1]])
    if weights is None and cfg.mix_strategy == "concat":
        which = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
        indices = np.concatenate([offset + group for offset, group in zip(offsets, groups)])
        # The in-memory path's shuffle (random.Random(seed).shuffle of a list of as many records),
        # made on an array: the same permutation at 8 bytes a sample instead of a Python int's 36.
        order = array("q", range(len(indices)))
        random.Random(cfg.seed).shuffle(order)
        permutation = np.frombuffer(order, dtype=np.int64)
        which, indices = which[permutation], indices[permutation]
    else:
        drawn, picked = interleave_order([len(group) for group in groups], weights or [1.0] * len(groups),
                                         cfg.seed, until_all=cfg.mix_strategy == "interleave_over")
        which, positions = np.frombuffer(drawn, dtype=np.int64), np.frombuffer(picked, dtype=np.int64)
        indices = np.empty(len(which), dtype=np.int64)
        for g, group in enumerate(groups):
            chosen = which == g
            indices[chosen] = offsets[g] + group[positions[chosen]]
    combined = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    evals = None
    if eval_names:
        evals = _with_labels(concatenate_datasets([dataset_of(name) for name in eval_names]), cfg.stage)
    elif cfg.val_size:
        count = val_count(cfg.val_size, len(indices))
        evals = _with_labels(combined.select(indices[:count]), cfg.stage)
        which, indices = which[count:], indices[count:]
    counts = np.bincount(which, minlength=len(names))
    composition = {name: int(n) for name, n in zip(names, counts) if n}
    lines = [f"train: {len(indices):,} samples" + (f"; eval: {len(evals):,}" if evals is not None else "")]
    return ArrowSplits(_with_labels(combined.select(indices), cfg.stage), evals, composition, lines)


def _with_labels(dataset: Any, stage: str) -> Any:
    """Pre-training shards keep input_ids alone (labels are the same ids: half the disk); the
    labels are added as samples are read."""
    if stage != "pt":
        return dataset
    return dataset.with_transform(lambda batch: {"input_ids": batch["input_ids"], "labels": batch["input_ids"]})


# ---------------------------------------------------------------------------------------------
# Check: data check and the Data tab on data too large to hold
# ---------------------------------------------------------------------------------------------

@dataclass
class LargeCheck:
    """A large dataset checked in full, its statistics from a sample spread over it."""

    name: str
    records: int  # records read
    valid: int  # of which without a problem
    problems: list[Problem]  # the first PROBLEMS_PER_KIND of each kind
    totals: dict[str, int]  # every problem, by kind
    sample: list[dict]  # up to about SAMPLE_RECORDS valid examples, from every shard


def check_large(name: str, dataset_dir: str | Path, stage: str, *, workers: int | None = None,
                progress: Callable[[int, int, int, int], None] | None = None) -> LargeCheck:
    """Check every record of a dataset in worker processes without holding it: counts and
    problems in full, the examples for statistics and preview as a sample."""
    from trainer_core.data import dataset_source

    source, trouble = dataset_source(name, dataset_dir, stage)
    settings = Settings(stage, 0, False, source.spec)
    done = prepare_dataset(source, settings, None, workers=workers, progress=progress)
    totals = dict(done.totals)
    for problem in trouble:
        totals[_kind(problem)] = totals.get(_kind(problem), 0) + 1
    return LargeCheck(name, done.records, done.samples, trouble + done.problems, totals,
                      [example for result in done.results for example in result.sample])


# ---------------------------------------------------------------------------------------------
# Streaming: the same shards read while training
# ---------------------------------------------------------------------------------------------

def _stream(shards: list[Shard], settings: Settings, tokenizer: Any) -> Iterator[dict]:
    """The samples of `shards` in order, read, checked and tokenized as they are needed. A record
    with a problem is left out; the first of each kind are printed, with a running count."""
    seen: dict[str, int] = {}
    for shard in shards:
        result = ShardResult(number=shard.number)
        yield from samples_of(shard, settings, tokenizer, result)
        for record, field_name, message, file in result.problems:
            kind = _kind(Problem(file, record, field_name, message))
            seen[kind] = seen.get(kind, 0) + 1
            if seen[kind] <= PROBLEMS_PER_KIND:
                print(f"warning: left out {file}, record {record} of its part {shard.number}"
                      f"{f', field {field_name!r}' if field_name else ''}: {message}", flush=True)


def stream_arrow_data(cfg: Any, tokenizer: Any, log: Callable[[str], None] = print) -> Any:
    """The training data as a `datasets.IterableDataset` read while training (`streaming: true`):
    the Arrow path's shards, records and tokenization without preparing them first. Weights mix
    as Hugging Face datasets' `interleave_datasets` (what LLaMA-Factory's streaming does), without
    them the datasets follow each other; a buffer of 10,000 samples shuffles either."""
    from datasets import IterableDataset, concatenate_datasets, interleave_datasets

    from trainer_core.config import dataset_mix
    from trainer_core.data import dataset_source

    names, weights = dataset_mix(cfg.dataset, cfg.interleave_probs)
    parts = []
    for name in names:
        source, problems = dataset_source(name, cfg.dataset_dir, cfg.stage)
        shards, trouble = plan_shards(source)
        if problems or trouble:
            raise DataError(problems + trouble)
        settings = Settings(cfg.stage, cfg.cutoff_len, cfg.resolved_packing(), source.spec)
        parts.append(IterableDataset.from_generator(
            _stream, gen_kwargs={"shards": shards, "settings": settings, "tokenizer": tokenizer}))
        log(f"{name}: streamed from {len(source.files)} file(s) in {len(shards)} part(s); records are checked "
            "and tokenized as training reads them")
    if weights is None and cfg.mix_strategy == "concat":
        mixed = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    else:
        total = sum(weights or [1.0] * len(parts))
        mixed = interleave_datasets(parts, probabilities=[w / total for w in weights or [1.0] * len(parts)],
                                    seed=cfg.seed, stopping_strategy="all_exhausted"
                                    if cfg.mix_strategy == "interleave_over" else "first_exhausted")
    return mixed.shuffle(seed=cfg.seed, buffer_size=10_000)
