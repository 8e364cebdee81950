"""Quality filtering against datatrove, and tokenize-and-pack against raw `encode_batch`, in one run.

Filtering: the same filter recipe (Gopher quality + Gopher repetition + C4) runs over the same corpus
with Pajama and with datatrove (HF's pipeline library), each with `--workers` CPU processes:

- corpus: the bundled corpus's web slices (common_crawl + c4, 726 English documents; the Gopher and C4
  rules apply to those slices only), repeated in turn to `--docs` documents and written as 8 RedPajama
  jsonl.gz files (`{"id", "text", "meta"}`), so both sides read and decode the same input;
- Pajama: Ray Data on a local `ray.init(num_cpus=workers)`, `read_source("jsonl")` ->
  `map_batches(compute_signals + apply_filters, batch_format="pyarrow")` -> write the verdicts (doc_id,
  keep, drop_reason) as parquet. Two variants: computing only the signals the rules read
  (`compute_signals(columns=signals_needed(rules))`) and computing every signal the signals stage computes
  (`signal_stage.with_signals`: RedPajama-V2's 42 with fastText language id, the tiny recipe's quality
  models — fastText classifiers, DSIR, KenLM perplexity, built from the bundled corpus before timing — and
  the UT1 sample), whose per-document cost is printed too;
- datatrove: `LocalPipelineExecutor(tasks=workers, workers=workers)` running JsonlReader ->
  GopherQualityFilter -> GopherRepetitionFilter -> C4QualityFilter -> JsonlWriter (the kept ids).
  Their thresholds are taken from Pajama's recipes (pipelines/filters/gopher.yaml, c4.yaml); C4 options
  that Pajama's c4 recipe does not have are turned off (citation removal, the 1000-character word
  limit). Pajama's `c4_english` (fastText language id) and `c4_bad_words` (LDNOOBW) rules have no
  counterpart in datatrove's C4QualityFilter and are left out of Pajama's rules here.

Documents per second is documents over the wall time of one whole run (reading, filtering, writing; for
datatrove also starting its worker processes, which import spaCy). Ray's start and a warm-up run (workers
starting and importing Pajama) are excluded; the per-run fixed cost of each side (a run over 8
documents) is printed too. Runs alternate between the sides, `--repeats` times; the medians are
reported. Agreement is the share of documents given the same keep/drop verdict; the main disagreements
are listed as (Pajama rule, datatrove reason) pairs. The two implement the rules differently: datatrove
counts words with spaCy's tokenizer (punctuation tokens included) and sentences with spaCy's sentencizer,
counts distinct stop words, takes "-" as a bullet and "'" as terminal punctuation, and checks "lorem
ipsum" and "{" only in the lines C4 keeps; Pajama uses RedPajama-V2's signal definitions (normalised
words, a sentence regex, stop-word occurrences; pajama.data.signals).

Tokenize-and-pack: the data stage's pack steps (`_assign_shards`: each document encoded as the stage
encodes it, with tiktoken for this byte-level BPE (pajama.data.tokenizer.BatchEncoder), and its shard;
`_pack_shard`: a shard's documents sorted by doc_id, EOD after each document, each slice's stream cut into
seq_len rows, shuffled, written as parquet) against the same tokenizer's bare `tokenizers` encode_batch
over the same texts (the whole bundled corpus, `--pack-copies` times, in groups of the stage's shard
size), in this process, alternating, median of `--repeats` rounds. The tokenizer is a byte-level BPE
trained on the corpus (the tiny preset's vocab of 4096).

Targets (data milestone): Pajama >= 1.5x datatrove's documents per second; tokenize-and-pack >= 0.8x
bare encode_batch. The script exits non-zero only on errors, not on a missed target.

    pip install -e '.[bench]'      # datatrove + spaCy (a blank English pipeline: no model download)
    python benchmarks/data_pipeline.py                      # 2 workers, 2000 documents, 3 repeats
    python benchmarks/data_pipeline.py --docs 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata  # noqa: F401  datatrove 0.9's dependency check uses it without importing it
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pajama.data import filters, signals
from pajama.data.slices import SET_NAME_TO_SLICE

CORPUS = Path(signals.__file__).parent.parent / "resources" / "corpus"
WEB_SLICES = ("common_crawl", "c4")
NUM_FILES = 8
# Pajama's c4 rules without a counterpart in datatrove's C4QualityFilter
UNMATCHED_RULES = ("c4_english", "c4_bad_words")
FILTER_TARGET, PACK_TARGET = 1.5, 0.8


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=2000, help="documents to filter per run (web slices repeated)")
    p.add_argument("--workers", type=int, default=2, help="CPU processes for each side")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (and pack rounds); medians reported")
    p.add_argument("--pack-copies", type=int, default=2, help="copies of the whole bundled corpus to tokenize")
    p.add_argument("--seq-len", type=int, default=256, help="packed row length (the tiny preset's)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary trained for the pack benchmark")
    p.add_argument("--skip-filter", action="store_true", help="only the tokenize-and-pack benchmark")
    p.add_argument("--skip-pack", action="store_true", help="only the filter benchmark")
    args = p.parse_args()
    if args.docs < 1 or args.workers < 1 or args.repeats < 1 or args.pack_copies < 1:
        p.error("--docs, --workers, --repeats and --pack-copies must be positive")
    return args


# --- corpus --------------------------------------------------------------------------------


def bundled_documents(slices=None) -> list[dict]:
    docs = []
    for path in sorted(CORPUS.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                slice_name = SET_NAME_TO_SLICE[record["meta"]["redpajama_set_name"]]
                if slices is None or slice_name in slices:
                    docs.append({"slice": slice_name, **record})
    return docs


def write_corpus(docs: list[dict], n: int, folder: Path, num_files: int = NUM_FILES) -> dict[str, int]:
    """`n` documents (docs repeated in turn) in `num_files` jsonl.gz files; returns key -> index in docs."""
    folder.mkdir(parents=True)
    source_of = {}
    per_file = -(-n // num_files)
    for file_index in range(num_files):
        name = f"part-{file_index:02d}.jsonl.gz"
        first, last = file_index * per_file, min(n, (file_index + 1) * per_file)
        if first >= last:
            break
        with gzip.open(folder / name, "wt", encoding="utf-8") as f:
            for line_number, i in enumerate(range(first, last), start=1):
                doc = docs[i % len(docs)]
                key = f"{name}#{line_number}"  # Pajama's doc_id ends the same way: <path>#<line>
                f.write(json.dumps({"id": key, "text": doc["text"], "meta": doc["meta"]}) + "\n")
                source_of[key] = i % len(docs)
    return source_of


# --- Pajama ----------------------------------------------------------------------------------


def pajama_rules() -> list:
    return [r for name in ("gopher", "c4") for r in filters.load_recipe(name) if r.name not in UNMATCHED_RULES]


def _verdicts(batch: pa.Table, rules: list, columns: list[str] | None) -> pa.Table:
    annotated = filters.apply_filters(signals.compute_signals(batch, columns=columns), rules)
    return annotated.select(["doc_id", "keep", "drop_reason"])


def _verdicts_all_signals(batch: pa.Table, rules: list, models: dict, ut1_blacklist: str) -> pa.Table:
    """Verdicts after every signal the signals stage computes: RedPajama-V2's 42 (with the quality models
    and the UT1 blacklist) and the other recipes' (pajama.data.signal_stage.with_signals)."""
    from pajama.data.signal_stage import with_signals

    annotated = filters.apply_filters(with_signals(batch, models, ut1_blacklist=ut1_blacklist), rules)
    return annotated.select(["doc_id", "keep", "drop_reason"])


def run_pajama(corpus: Path, out: Path, rules: list, columns: list[str] | None, models: dict | None = None) -> float:
    """Seconds for one Ray Data run over the corpus, writing the verdicts as parquet under `out`; with
    `models` (the references artifact), every signal of the signals stage instead of `columns`."""
    from pajama.config import RESOURCES_DIR
    from pajama.data import readers

    files = sorted(str(p) for p in corpus.glob("*.jsonl.gz"))
    start = time.perf_counter()
    if models is None:
        verdicts, kwargs = _verdicts, {"rules": rules, "columns": columns}
    else:
        verdicts = _verdicts_all_signals
        kwargs = {"rules": rules, "models": models, "ut1_blacklist": str(RESOURCES_DIR / "ut1" / "blacklists")}
    ds = readers.read_source("jsonl", files).map_batches(verdicts, fn_kwargs=kwargs, batch_format="pyarrow")
    ds.write_parquet(str(out))
    return time.perf_counter() - start


def build_quality_models(out: Path) -> dict:
    """The tiny recipe's quality models, built from the bundled corpus by the references stage (not timed)."""
    from pajama.artifacts import StageContext
    from pajama.config import load_config
    from pajama.data import references

    out.mkdir(parents=True)
    cfg = load_config("tiny", [])
    return {"uri": str(out), "manifest": references.run(cfg.data, StageContext(out, out, "bench", cfg.project.seed), {})}


def pajama_verdicts(out: Path) -> dict[str, tuple[bool, str | None]]:
    table = pq.read_table(out)
    return {doc_id.rsplit("/", 1)[-1]: (keep, reason) for doc_id, keep, reason in
            zip(*(table.column(c).to_pylist() for c in ("doc_id", "keep", "drop_reason")))}


# --- datatrove --------------------------------------------------------------------------------


def datatrove_filters(rules: list) -> list:
    """datatrove's Gopher quality, Gopher repetition and C4 quality filters with Pajama's thresholds."""
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    v = {rule.name: rule.value for rule in rules}
    return [
        GopherQualityFilter(
            min_doc_words=v["gopher_word_count_min"], max_doc_words=v["gopher_word_count_max"],
            min_avg_word_length=v["gopher_mean_word_length_min"], max_avg_word_length=v["gopher_mean_word_length_max"],
            max_symbol_word_ratio=v["gopher_symbol_to_word_ratio"], max_bullet_lines_ratio=v["gopher_bullet_lines"],
            max_ellipsis_lines_ratio=v["gopher_ellipsis_lines"],
            max_non_alpha_words_ratio=v["gopher_words_with_alpha"],  # a lower bound despite its name
            min_stop_words=v["gopher_stop_words"],
        ),
        GopherRepetitionFilter(
            dup_line_frac=v["gopher_dupe_lines"], dup_para_frac=v["gopher_dupe_paragraphs"],
            dup_line_char_frac=v["gopher_dupe_line_chars"], dup_para_char_frac=v["gopher_dupe_paragraph_chars"],
            top_n_grams=tuple((n, v[f"gopher_top_{n}gram"]) for n in (2, 3, 4)),
            dup_n_grams=tuple((n, v[f"gopher_dupe_{n}grams"]) for n in range(5, 11)),
        ),
        C4QualityFilter(
            split_paragraph=True, remove_citations=False, filter_no_terminal_punct=True,
            min_num_sentences=v["c4_min_sentences"], min_words_per_line=signals._C4_MIN_WORDS_PER_LINE,
            max_word_length=-1, filter_lorem_ipsum=True, filter_javascript=True, filter_curly_bracket=True,
            filter_policy=True,
        ),
    ]


def _kept_id(self, document) -> dict:
    return {"id": document.id}


def run_datatrove(corpus: Path, out: Path, logs: Path, rules: list, workers: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    pipeline = [
        JsonlReader(str(corpus), glob_pattern="*.jsonl.gz", compression="gzip"),
        *datatrove_filters(rules),
        JsonlWriter(str(out), output_filename="${rank}.jsonl", compression=None, adapter=_kept_id),
    ]
    # fork: the workers inherit the loaded spaCy tokenizer, as Ray's warm workers have Pajama imported
    executor = LocalPipelineExecutor(pipeline, tasks=workers, workers=workers, logging_dir=str(logs),
                                     skip_completed=False, start_method="fork")
    start = time.perf_counter()
    executor.run()
    return time.perf_counter() - start


def _datatrove_server(conn, log_path: str) -> None:
    """A process forked before Ray starts (forking Ray's driver is unsafe): runs datatrove on request."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    _ = load_word_tokenizer("en").tokenizer  # import spaCy and build its blank English tokenizer once
    # datatrove's loguru output (stats tables per run) goes to a file, not to the console
    log = open(log_path, "a")  # noqa: SIM115  open for the life of this process
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    conn.send("ready")
    while (request := conn.recv()) is not None:
        try:
            conn.send(run_datatrove(*request))
        except Exception as error:  # noqa: BLE001  reported in the parent, which exits non-zero
            conn.send(error)


class DatatroveRunner:
    def __init__(self, log_path: Path):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_datatrove_server, args=(child, str(log_path)), daemon=False)
        self.process.start()
        if self.conn.recv() != "ready":
            raise RuntimeError("the datatrove helper process did not start")

    def __call__(self, *request) -> float:
        self.conn.send(request)
        result = self.conn.recv()
        if isinstance(result, Exception):
            raise RuntimeError(f"datatrove run failed: {result!r}") from result  # noqa: TRY004
        return result

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()


def datatrove_kept(out: Path) -> set[str]:
    kept = set()
    for path in out.glob("*.jsonl"):
        kept.update(json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip())
    return kept


def datatrove_reason(text: str, dt_filters: list) -> str:
    """Name of the first datatrove filter check a text fails (run here, one document at a time)."""
    from datatrove.data import Document

    doc = Document(text=text, id="x")
    for f in dt_filters:
        result = f.filter(doc)
        if result is False:
            return type(f).__name__
        if isinstance(result, tuple) and not result[0]:
            return result[1]
    return "kept"


# --- benchmark: filtering ---------------------------------------------------------------------


def start_ray(num_cpus: int, tries: int = 3) -> None:
    """A local Ray; retried, as its fixed 30 s wait for the raylet can run out on a busy machine."""
    import ray

    for attempt in range(1, tries + 1):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            return
        except Exception as error:
            ray.shutdown()
            if "timed out during startup" not in str(error) or attempt == tries:
                raise
            print(f"[bench] ray.init timed out (busy machine?), retry {attempt}/{tries - 1}")


def filter_benchmark(args, work: Path) -> dict:
    import ray

    rules = pajama_rules()
    needed = filters.signals_needed(rules)
    web = bundled_documents(WEB_SLICES)
    source_of = write_corpus(web, args.docs, work / "corpus")
    write_corpus(web, NUM_FILES, work / "tiny")
    print(f"[bench] filter: {args.docs} documents ({len(web)} distinct web documents of "
          f"{'+'.join(WEB_SLICES)}, repeated), {sum(len(web[i]['text']) for i in source_of.values()) / 1e6:.1f} MB, "
          f"{args.workers} workers each side, {args.repeats} runs each")
    print(f"[bench] Pajama rules: {len(rules)} of gopher+c4 (without {', '.join(UNMATCHED_RULES)}); "
          f"signals they read: {len(needed)} of {len(signals.SIGNAL_COLUMNS)}")

    t0 = time.perf_counter()
    datatrove = DatatroveRunner(work / "datatrove.log")
    try:
        start_ray(args.workers)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        models = build_quality_models(work / "models")
        sides = {
            "pajama_needed": lambda corpus, out: run_pajama(corpus, out, rules, needed),
            "pajama_all": lambda corpus, out: run_pajama(corpus, out, rules, None, models),
            "datatrove": lambda corpus, out: datatrove(corpus, out, work / f"logs-{out.name}", rules, args.workers),
        }
        # warm-up (untimed): Ray's workers start and import Pajama, fastText and the quality models load
        run_pajama(work / "tiny", work / "warm-p", rules, None, models)
        print(f"[bench] startup (not timed): datatrove helper (spaCy loaded) + ray.init + warm-up run "
              f"{time.perf_counter() - t0:.1f}s")
        fixed = {name: run(work / "tiny", work / f"fixed-{name}") for name, run in sides.items()}  # 8 documents

        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.repeats):
            for name, run in sides.items():
                seconds[name].append(run(work / "corpus", work / f"out-{name}-{r}"))
            print(f"[bench] run {r + 1}/{args.repeats}: " + ", ".join(f"{n} {s[-1]:.1f}s" for n, s in seconds.items()))
    finally:
        ray.shutdown()
        datatrove.close()

    # agreement, from the last runs
    pajama = pajama_verdicts(work / f"out-pajama_needed-{args.repeats - 1}")
    pajama_all = pajama_verdicts(work / f"out-pajama_all-{args.repeats - 1}")
    if pajama != pajama_all:
        raise RuntimeError("Pajama's verdicts differ between computing the needed signals and all of them")
    kept_dt = datatrove_kept(work / f"out-datatrove-{args.repeats - 1}")
    if set(pajama) != set(source_of):
        raise RuntimeError(f"Pajama returned {len(pajama)} verdicts for {len(source_of)} documents")
    same = sum(keep == (key in kept_dt) for key, (keep, _) in pajama.items())
    pairs: Counter = Counter()
    dt_filters, reason_of = datatrove_filters(rules), {}
    for key, (keep, reason) in pajama.items():
        if keep != (key in kept_dt):
            i = source_of[key]
            if i not in reason_of:
                reason_of[i] = datatrove_reason(web[i]["text"], dt_filters)
            pairs[(reason or "kept", reason_of[i])] += 1
    return {
        "docs": args.docs,
        "workers": args.workers,
        "seconds": seconds,
        "fixed_seconds": fixed,
        "docs_per_s": {n: args.docs / statistics.median(s) for n, s in seconds.items()},
        "kept": {"pajama": sum(k for k, _ in pajama.values()), "datatrove": len(kept_dt)},
        "agreement": same / len(pajama),
        "disagreements": pairs.most_common(),
        "distinct_disagreeing": len(reason_of),
    }


# --- benchmark: tokenize and pack -----------------------------------------------------------------


def pajama_pack_function(tokenizer_json: str, eos_token_id: int, seq_len: int, slices: list[str], directory: Path):
    """The data stage's tokenize-and-pack steps (`_assign_shards`, `_pack_shard`) as a function of one shard's
    documents: encode (BatchEncoder), sort by doc_id, EOD, cut each slice's stream into seq_len rows, shuffle,
    write parquet (every document to train shard 0)."""
    from pajama.data.stage import _assign_shards, _pack_shard

    (directory / "train").mkdir(parents=True, exist_ok=True)
    shard_counts = {"train_shards": 1, "eval_shards": 1}
    return lambda docs: _pack_shard(
        _assign_shards(docs, tokenizer_json=tokenizer_json, encoder="auto", eval_fraction=0.0, weights=None,
                       salt="0", **shard_counts),
        eos_token_id=eos_token_id, seq_len=seq_len, slices=slices, shards_uri=str(directory), seed=0, **shard_counts)


def pack_benchmark(args, work: Path) -> dict:
    from pajama.data.tokenizer import train_bpe
    from tokenizers import Tokenizer

    docs = bundled_documents()
    texts = [d["text"] for d in docs]
    tokenizer = train_bpe(texts, args.vocab_size)
    tokenizer.save_pretrained(work / "tokenizer")
    tokenizer_json = (work / "tokenizer" / "tokenizer.json").read_text()  # the packing tasks get its content
    slices = sorted({d["slice"] for d in docs})
    pack = pajama_pack_function(tokenizer_json, tokenizer.eos_token_id, args.seq_len, slices, work / "shards")
    bare = Tokenizer.from_str(tokenizer_json)

    n = len(docs) * args.pack_copies
    table = pa.table({"doc_id": [f"doc-{i:07d}" for i in range(n)], "slice": [d["slice"] for d in docs] * args.pack_copies,
                      "text": texts * args.pack_copies})
    megabytes = sum(len(t.encode()) for t in texts) * args.pack_copies / 1e6
    # groups as the stage's shards: ~4 bytes of text per token, sequences_per_shard (tiny: 1024) sequences
    shard_bytes = 4 * args.seq_len * 1024
    num_groups = max(1, math.ceil(megabytes * 1e6 / shard_bytes))
    rows_per_group = -(-n // num_groups)
    groups = [table.slice(i, rows_per_group) for i in range(0, n, rows_per_group)]
    lists = [g.column("text").to_pylist() for g in groups]
    print(f"[bench] pack: {n} documents ({megabytes:.1f} MB, the bundled corpus x{args.pack_copies}) in "
          f"{len(groups)} groups, BPE vocab {len(tokenizer)}, seq_len {args.seq_len}")

    def run_bare():
        return sum(len(e) for texts_group in lists for e in bare.encode_batch(texts_group, add_special_tokens=False))

    def run_pack():
        for group in groups:
            pack(group)

    tokens = run_bare()  # warm-up
    run_pack()
    seconds: dict[str, list[float]] = {"encode_batch": [], "pajama_pack": []}
    for _ in range(args.repeats):
        for name, fn in (("encode_batch", run_bare), ("pajama_pack", run_pack)):
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"tokens": tokens, "megabytes": megabytes, "groups": len(groups), "seconds": seconds,
            "tokens_per_s": {name: tokens / s for name, s in median.items()},
            "ratio": median["encode_batch"] / median["pajama_pack"]}


# --- report ---------------------------------------------------------------------------------------


def report(result: dict) -> None:
    f = result.get("filter")
    if f:
        dt = f["docs_per_s"]["datatrove"]
        names = {"pajama_needed": "Pajama (signals the rules read)", "pajama_all": "Pajama (all 42 RPv2 signals)",
                 "datatrove": "datatrove 0.9 (Gopher x2 + C4)"}
        print(f"\nFiltering {f['docs']} documents, median of {len(f['seconds']['datatrove'])} runs "
              f"(each side's fixed cost per run: its time for 8 documents)")
        print(f"{'':34} {'docs/s':>9} {'median s':>9} {'runs (s)':>22} {'fixed s':>8} {'vs datatrove':>13}")
        for name, label in names.items():
            runs = " ".join(f"{s:.1f}" for s in f["seconds"][name])
            print(f"{label:34} {f['docs_per_s'][name]:9.1f} {statistics.median(f['seconds'][name]):9.2f} "
                  f"{runs:>22} {f['fixed_seconds'][name]:8.2f} {f['docs_per_s'][name] / dt:12.2f}x")
        ratio = f["docs_per_s"]["pajama_needed"] / dt
        print(f"Pajama / datatrove documents per second: {ratio:.2f}x (target >= {FILTER_TARGET}x: "
              f"{'met' if ratio >= FILTER_TARGET else 'MISSED'}); computing all signals: "
              f"{f['docs_per_s']['pajama_all'] / dt:.2f}x")
        per_doc = {name: 1e3 * f["workers"] / f["docs_per_s"][name] for name in ("pajama_needed", "pajama_all")}
        print(f"Full 42-signal set: {per_doc['pajama_all']:.2f} ms per document per worker "
              f"(the signals the rules read: {per_doc['pajama_needed']:.2f} ms)")
        print(f"Kept: Pajama {f['kept']['pajama']}, datatrove {f['kept']['datatrove']} of {f['docs']}; "
              f"agreement (same keep/drop verdict): {f['agreement']:.1%}")
        if f["disagreements"]:
            print(f"Disagreements ({f['distinct_disagreeing']} distinct texts) as (Pajama's first failed rule, "
                  f"datatrove's first failed check), documents:")
            for (pajama_reason, dt_reason), count in f["disagreements"][:10]:
                print(f"  {pajama_reason:34} {dt_reason:30} {count}")
    p = result.get("pack")
    if p:
        print(f"\nTokenize and pack: {p['tokens']} tokens ({p['megabytes']:.1f} MB) in {p['groups']} groups, "
              f"median of {len(p['seconds']['encode_batch'])} rounds")
        for name, label in (("encode_batch", "tokenizers encode_batch"), ("pajama_pack", "Pajama tokenize+pack")):
            runs = " ".join(f"{s:.2f}" for s in p["seconds"][name])
            print(f"  {label:26} {p['tokens_per_s'][name] / 1e3:9.0f}k tokens/s   runs (s): {runs}")
        print(f"Pack / encode_batch throughput: {p['ratio']:.2f}x (target >= {PACK_TARGET}x: "
              f"{'met' if p['ratio'] >= PACK_TARGET else 'MISSED'})")


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="pajama-bench-data-"))
    result = {}
    try:
        if not args.skip_filter:
            result["filter"] = filter_benchmark(args, work)
        if not args.skip_pack:
            result["pack"] = pack_benchmark(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    print("\n" + json.dumps({"filter": {k: v for k, v in result.get("filter", {}).items() if k != "disagreements"},
                             "pack": result.get("pack")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
