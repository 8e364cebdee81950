"""The references stage: the models behind RedPajama-V2's model-based signals, built once, and the signals.

RPv2 computes some of its quality signals with models made from reference corpora (its prep_artifacts
step): fastText classifiers of reference text against the web slice, DSIR word-feature distributions, and
cc_net's perplexity model. This stage builds them from data.quality_models (pajama.config) — documents of
slices of data.sources and/or other files, a doc_id-hash sample of at most max_documents each — or takes
cc_net's published perplexity model from the given files, and keeps them as a fingerprinted artifact that
the signals stage reads (`score`), and logs them to its MLflow run:

- `classifiers/{wikiref,palm,wikipedia}.model.bin`  fastText, positives against `__label__cc` (the web
  slice): wikiref (RedPajama-1T's classifier: pages Wikipedia cites), palm (books + OpenWebText +
  Wikipedia, as RPv2's "palm" classifier), wikipedia (pajama.data.classifiers)
- `dsir/{books,openwebtext,wikipedia,cc}.xx.<buckets>.counts.npy` / `.lambda.npy`  hashed unigram and
  bigram distributions of the three targets and the web source (pajama.data.dsir)
- `perplexity/lm.sp.model`, `perplexity/lm.arpa` (or the given model's KenLM binary, `lm.arpa.bin`)
  SentencePiece + KenLM 5-gram (pajama.data.ccnet), and
  the head/middle/tail cutoffs (the 30th and 60th percentile of the web sample's perplexities) in the
  manifest. Built here from the wikipedia corpus, as cc_net built its models from Wikipedia.

The reference corpora are language-agnostic here (RPv2 builds one set per language: en, de, fr, es, it);
the file names carry "xx" where RPv2's carry the language.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pajama import storage
from pajama.artifacts import StageContext
from pajama.config import DataConfig, QualityModelsConfig, ReferenceCorpusConfig
from pajama.data import ccnet, classifiers, dsir
from pajama.data.slices import READ_ERROR

log = logging.getLogger(__name__)

CLASSIFIER_TARGETS = {"wikiref": ("wikiref",), "palm": ("books", "openwebtext", "wikipedia"),
                      "wikipedia": ("wikipedia",)}
DSIR_TARGETS = ("books", "openwebtext", "wikipedia")
_DSIR_SOURCE = "cc"
_LANGUAGE = "xx"
_DOWNLOAD_TIMEOUT_S = 60  # between bytes, not for the whole (multi-GB) file

# The signals computed with these models (names and types as RPv2's).
MODEL_SIGNAL_COLUMNS: dict[str, pa.DataType] = {
    "ccnet_perplexity": pa.float64(),
    "ccnet_bucket": pa.string(),
    **{f"rps_doc_ml_{name}_score": pa.float64() for name in CLASSIFIER_TARGETS},
    **{f"rps_doc_{target}_importance{suffix}": pa.float64()
       for target in DSIR_TARGETS for suffix in ("", "_length_correction")},
}


def run(cfg: DataConfig, ctx: StageContext, inputs: dict) -> dict:
    """Build the quality models under `ctx.out`; returns the manifest (corpus sizes, perplexity cutoffs)."""
    from pajama.data.signal_stage import read_sources
    from pajama.data.stage import data_stage_context

    models = cfg.quality_models
    if models is None:
        log.info("references: data.quality_models is not set; the model-based signals will be null")
        return {"models": False}
    with data_stage_context(cfg):
        corpora = _reference_texts(cfg, models, read_sources)
    out = ctx.out
    perplexity_dir = out / "perplexity"
    log.info("references: fastText classifiers, DSIR distributions and the perplexity model")
    # The classifiers and the perplexity model train side by side in threads: fastText and SentencePiece
    # release the GIL, and each model trains on one thread with its seed, so the files are the same as
    # when they train one after another.
    with ThreadPoolExecutor(max_workers=len(CLASSIFIER_TARGETS) + 1) as pool:
        trained = {
            name: pool.submit(
                classifiers.train_classifier, {target: corpora[target] for target in targets}, corpora["web"],
                name, out / "classifiers" / f"{name}.model.bin",
                samples_per_class=max(getattr(models, t).max_documents for t in targets), seed=ctx.seed,
                epoch=models.classifier_epochs)
            for name, targets in CLASSIFIER_TARGETS.items()}
        perplexity = pool.submit(_perplexity_model, models, corpora["wikipedia"], perplexity_dir, ctx.seed)
        for dataset, corpus in {**{t: corpora[t] for t in DSIR_TARGETS}, _DSIR_SOURCE: corpora["web"]}.items():
            dsir.build_distribution(corpus, models.dsir_buckets).save(out / "dsir", dataset, _LANGUAGE)
        counts = {f"classifier_{name}": future.result() for name, future in trained.items()}
        kenlm_file = perplexity.result()
    cutoffs = models.perplexity.cutoffs or ccnet.perplexity_cutoffs(
        ccnet.PerplexityModel(perplexity_dir / "lm.sp.model", perplexity_dir / kenlm_file).perplexities(corpora["web"]))
    manifest = {"models": True, "perplexity_cutoffs": list(cutoffs), "kenlm_file": kenlm_file,
                "dsir_buckets": models.dsir_buckets,
                "reference_documents": {name: len(texts) for name, texts in corpora.items()}, "training": counts}
    (out / "references.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    ctx.log_metrics({f"reference_documents/{name}": len(texts) for name, texts in corpora.items()})
    for name in ("references.json", "classifiers", "dsir", "perplexity"):
        ctx.log_artifact(out / name)
    return manifest


def _perplexity_model(models: QualityModelsConfig, wikipedia: list[str], perplexity_dir: Path, seed: int) -> str:
    """cc_net's perplexity model in `perplexity_dir`: the given files, or built from the wikipedia corpus;
    returns the KenLM file's name."""
    if models.perplexity.kenlm:
        log.info("references: perplexity model from %s", models.perplexity.kenlm)
        perplexity_dir.mkdir(parents=True)
        _copy_file(models.perplexity.sentencepiece, perplexity_dir / "lm.sp.model")
        kenlm_file = "lm.arpa.bin" if models.perplexity.kenlm.endswith(".bin") else "lm.arpa"
        _copy_file(models.perplexity.kenlm, perplexity_dir / kenlm_file)
        return kenlm_file
    log.info("references: perplexity model (SentencePiece + KenLM %d-gram) from the wikipedia corpus",
             models.perplexity.order)
    _, arpa = ccnet.build_perplexity_model(wikipedia, perplexity_dir, order=models.perplexity.order,
                                           vocab_size=models.perplexity.vocab_size, seed=seed)
    return arpa.name


def _reference_texts(cfg: DataConfig, models: QualityModelsConfig, read_sources) -> dict[str, list[str]]:
    """The text of each reference corpus: its doc_id-hash sample, in hash order (the same on every run)."""
    from pajama.data.stage import hash_unit, where

    corpora: dict[str, ReferenceCorpusConfig] = {name: getattr(models, name)
                                                 for name in ("web", "wikipedia", "books", "openwebtext", "wikiref")}
    wanted_slices = sorted({s for corpus in corpora.values() for s in corpus.slices})
    by_slice: dict[str, list[tuple[float, str]]] = {s: [] for s in wanted_slices}
    if wanted_slices:
        log.info("references: reading slices %s of data.sources", ", ".join(wanted_slices))
        wanted = pa.array(wanted_slices, pa.string())
        readable_of_slices = lambda b: pc.and_(pc.is_null(b.column(READ_ERROR)), pc.is_in(b.column("slice"), wanted))
        rows = where(read_sources(cfg), readable_of_slices).select_columns(["doc_id", "slice", "text"]).take_all()
        for row in rows:
            by_slice[row["slice"]].append((hash_unit(row["doc_id"], "references"), row["text"]))
    texts = {}
    for name, corpus in corpora.items():
        candidates = [item for s in corpus.slices for item in by_slice[s]]
        if corpus.sources:
            extra = DataConfig(sources=corpus.sources, on_bad_input=cfg.on_bad_input,
                               max_document_bytes=cfg.max_document_bytes)
            readable = where(read_sources(extra), lambda b: pc.is_null(b.column(READ_ERROR)))
            candidates += [(hash_unit(row["doc_id"], "references"), row["text"])
                           for row in readable.select_columns(["doc_id", "text"]).take_all()]
        texts[name] = [text for _, text in sorted(candidates)[: corpus.max_documents]]
        if not texts[name]:
            raise ValueError(f"data.quality_models.{name}: no document (slices {corpus.slices}, "
                             f"{len(corpus.sources)} other source(s)); give a slice of data.sources or files")
    return texts


def _copy_file(uri: str, destination: Path) -> None:
    """A file from an http(s) URL (cc_net publishes its models at dl.fbaipublicfiles.com), a local path or the
    object store."""
    if uri.startswith(("http://", "https://")):
        with urllib.request.urlopen(uri, timeout=_DOWNLOAD_TIMEOUT_S) as source, open(destination, "wb") as target:
            shutil.copyfileobj(source, target, length=1 << 20)
        return
    filesystem, path = storage.filesystem(uri)
    with filesystem.open_input_stream(path) as source, open(destination, "wb") as target:
        shutil.copyfileobj(source, target)


@functools.cache
def _models(uri: str, kenlm_file: str, buckets: int):
    # The model folders, on each node that scores (once: a cached copy where the artifact is remote).
    perplexity_dir, classifiers_dir, dsir_dir = (storage.local_copy(storage.join(uri, name))
                                                 for name in ("perplexity", "classifiers", "dsir"))
    perplexity = ccnet.PerplexityModel.load(perplexity_dir / "lm.sp.model", perplexity_dir / kenlm_file)
    scorers = {name: classifiers.load_classifier(classifiers_dir / f"{name}.model.bin") for name in CLASSIFIER_TARGETS}
    source = dsir.Distribution.load(dsir_dir, _DSIR_SOURCE, _LANGUAGE, buckets)
    targets = {t: dsir.Distribution.load(dsir_dir, t, _LANGUAGE, buckets) for t in DSIR_TARGETS}
    return perplexity, scorers, source, targets


def score(batch: pa.Table, references: dict) -> pa.Table:
    """The batch with MODEL_SIGNAL_COLUMNS appended, from the models of the references artifact
    (`references`: its URI and manifest); null columns when it holds none."""
    if not references["manifest"]["models"]:
        for name, kind in MODEL_SIGNAL_COLUMNS.items():
            batch = batch.append_column(name, pa.nulls(batch.num_rows, kind))
        return batch
    manifest = references["manifest"]
    cutoffs = tuple(manifest["perplexity_cutoffs"])
    perplexity, scorers, source, targets = _models(references["uri"], manifest["kenlm_file"], manifest["dsir_buckets"])
    texts = batch.column("text").to_pylist()
    columns: dict[str, list] = {}
    perplexities = perplexity.perplexities(texts)
    columns["ccnet_perplexity"] = perplexities
    columns["ccnet_bucket"] = [None if p is None else ccnet.perplexity_bucket(p, cutoffs) for p in perplexities]
    for name, model in scorers.items():
        columns[f"rps_doc_ml_{name}_score"] = classifiers.quality_scores(model, texts)
    for target, (plain, corrected) in dsir.importance_weights_of_targets(texts, targets, source).items():
        columns[f"rps_doc_{target}_importance"] = plain
        columns[f"rps_doc_{target}_importance_length_correction"] = corrected
    for name, kind in MODEL_SIGNAL_COLUMNS.items():
        batch = batch.append_column(name, pa.array(columns[name], kind))
    return batch
