"""Pajama's one typed config tree, loaded from recipes in `pipelines/*.yaml`.

A recipe is YAML with the sections of `PajamaConfig` (project, data, pretrain, instruct, chat,
evaluate, serve). `inherit: <name>` starts from another recipe and deep-merges this one over it, so the 3B
and 7B presets only state what differs from the tiny default. `--set a.b=value` overrides apply
last. Every model forbids unknown keys, and constraints are checked here, when the config is
built, so a bad recipe fails before any Ray work with an error that names the field.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

import pajama
from pajama import storage

PACKAGE_DIR = Path(pajama.__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"
# The repository's pipelines/ (recipes, filter recipes, the Serve config), linked into the package so
# that a wheel ships it as package data.
PIPELINES_DIR = PACKAGE_DIR / "pipelines"
BUNDLED_PREFIX = "bundled:"
# The folder under a Ray session where `ray job submit --working-dir` unpacks each job's copy.
RAY_WORKING_DIR_COPY = "runtime_resources"


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the field or path."""


class Strict(BaseModel):
    # A field's docstring is its description: `pajama config --explain` prints them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


# A field that says how or where a stage runs, not what it produces: left out of the stage's
# fingerprint, so changing it reuses the finished stage (dag.stage_config).
NOT_FINGERPRINTED = {"fingerprint": False}
# A feature added after artifacts were made: while it is left at its default (off) it is left out
# of the fingerprint, so the artifacts made before it stay valid; once set, it is part of it.
FINGERPRINTED_WHEN_SET = {"fingerprint": "when_set"}


def fingerprinted_fields(section: BaseModel) -> dict:
    """A config section as JSON, without its NOT_FINGERPRINTED fields (nor FINGERPRINTED_WHEN_SET
    fields left at their default), those of its nested sections (data.tokenizer) included."""
    return section.model_dump(mode="json", exclude=_unfingerprinted(section))


def _unfingerprinted(section: BaseModel) -> dict:
    # model_dump's `exclude`: {field: True} leaves a field out, {field: {...}} fields of a nested section
    skip: dict = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if field.json_schema_extra == NOT_FINGERPRINTED:
            skip[name] = True
        elif field.json_schema_extra == FINGERPRINTED_WHEN_SET and value == field.get_default(
                call_default_factory=True):
            skip[name] = True
        elif isinstance(value, BaseModel) and (nested := _unfingerprinted(value)):
            skip[name] = nested
    return skip


def resolve_path(path: str) -> str:
    """`bundled:x` names a file under the package's resources; URIs and other paths pass through."""
    if path.startswith(BUNDLED_PREFIX):
        return str(RESOURCES_DIR / path[len(BUNDLED_PREFIX) :])
    return path


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def check_local_path_exists(path: str) -> str:
    """Fail at config time for a local path or glob that matches nothing."""
    resolved = resolve_path(path)
    if not is_remote(resolved) and not glob.glob(resolved.removeprefix("file://")):
        raise ValueError(f"path {path!r} does not exist (resolved to {resolved!r})")
    return path


class ProjectConfig(Strict):
    name: str = "pajama"
    """Names the project in MLflow tags and run descriptions."""
    storage: str = ".pajama"
    """Artifacts (shards, models, checkpoints) go here; PAJAMA_STORAGE_URI overrides it."""
    tracking_uri: str | None = None
    """None: a SQLite store under `storage`; MLFLOW_TRACKING_URI overrides it."""
    experiment: str = "pajama"
    """The MLflow experiment that holds the DAG runs."""
    ray_address: str | None = None
    """None: start a local Ray instance, or join the cluster named by RAY_ADDRESS."""
    seed: int = 0
    """Seeds sampling, shuffles, initial weights and dedup hashes; part of every stage's fingerprint."""
    promote_to: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    """After a successful run of the whole DAG, point this registry alias (e.g. production, which
    pipelines/serve.yaml serves) at the run's base, instruct and chat versions. None: promote by hand.
    """

    @property
    def storage_uri(self) -> str:
        """The storage root: an object-store URI as given, or an absolute local path. A relative
        path inside a Ray job's copy of its working directory (`ray job submit --working-dir`),
        which Ray replaces whenever a file changes, is taken relative to the home directory."""
        uri = (os.environ.get("PAJAMA_STORAGE_URI") or self.storage).rstrip("/")
        if not storage.is_local(uri):
            return uri
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_absolute() and RAY_WORKING_DIR_COPY in Path.cwd().parts:
            path = Path.home() / path
        return str(path.resolve())

    @property
    def resolved_tracking_uri(self) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or self.tracking_uri
        if uri:
            return uri
        if storage.is_local(self.storage_uri):
            return f"sqlite:///{self.storage_uri}/mlflow.db"
        # SQLite cannot live on an object store: a database on this machine, one per storage root,
        # with its artifacts in the storage (tracking.setup). A cluster runs an MLflow server.
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.storage_uri).strip("-")
        return f"sqlite:///{storage.cache_dir() / 'mlflow' / slug}.db"


def _holds_readable_data(pattern: str) -> bool:
    """Whether a local path or glob matches, directly or inside a matched directory, a regular file
    that is not empty and can be opened (unreadable files are quarantined when read; a source of
    nothing but those, or of empty files, is a mistake worth stopping for)."""

    def readable(file: str) -> bool:
        try:
            info = os.stat(file)
            if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                return False  # FIFOs and devices are never opened: that could wait forever
            with open(file, "rb"):
                return True
        except OSError:  # a symbolic link loop, a dangling link, no read permission
            return False

    for match in glob.iglob(pattern):
        if os.path.isdir(match):
            if any(readable(os.path.join(root, name)) for root, _, names in os.walk(match) for name in names):
                return True
        elif readable(match):
            return True
    return False


class SourceConfig(Strict):
    format: Literal[
        "jsonl", "parquet", "hf_disk", "hf_hub", "warc", "wet", "mediawiki", "github", "arxiv",
        "stackexchange", "text", "redpajama_1t", "redpajama_v2",
    ] = "jsonl"
    path: str
    slice: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str, info) -> str:
        if info.data.get("format") == "hf_hub":
            return v
        check_local_path_exists(v)
        resolved = resolve_path(v)
        if not is_remote(resolved) and not _holds_readable_data(resolved.removeprefix("file://")):
            raise ValueError(f"path {v!r} matches no readable, non-empty file (resolved to {resolved!r})")
        return v

    @field_validator("slice")
    @classmethod
    def _known_slice(cls, v: str | None) -> str | None:
        from pajama.data.slices import check_slice

        return None if v is None else check_slice(v)


class TokenizerConfig(Strict):
    train: bool = True
    """Train a byte-level BPE on a sample of the kept documents, or load a Hugging Face tokenizer by hub name
    or local path (GPT-NeoX-20B for the INCITE presets).
    """
    name_or_path: str | None = None
    vocab_size: int = Field(4096, ge=260)
    sample_documents: int = Field(20_000, ge=1)
    encoder: Literal["auto", "huggingface"] = Field("auto", json_schema_extra=NOT_FINGERPRINTED)
    """What encodes the documents for packing: "auto" runs tiktoken where it reproduces the tokenizer (a byte-level
    BPE such as the trained one or GPT-NeoX-20B's: ~3x fewer CPU seconds than `tokenizers`, the same ids, checked
    on 1% of the documents) and `tokenizers` otherwise; "huggingface" always runs `tokenizers`.
    """

    @model_validator(mode="after")
    def _one_source(self) -> "TokenizerConfig":
        if not self.train and not self.name_or_path:
            raise ValueError("set tokenizer.name_or_path when tokenizer.train is false")
        return self


class FuzzyDedupConfig(Strict):
    enabled: bool = True
    threshold: float = Field(0.7, gt=0, lt=1)
    """0.7 (14 bands x 9 rows), one of RedPajama-V2's published LSH settings: with 13-word shingles one edited
    word changes up to 13 shingles, so a copy with a word or two edited in a 100-300 word document lands at
    Jaccard 0.7-0.9, where 0.8's 9x13 bands find only ~86%.
    """
    num_perm: int = Field(128, ge=16)
    ngram: int = Field(13, ge=1)
    bands: int | None = None
    rows: int | None = None
    driver_components_max_edges: int = Field(2_000_000, ge=0)
    """Connected components of up to this many candidate pairs run on the driver (~100 B each)."""

    @model_validator(mode="after")
    def _bands_rows(self) -> "FuzzyDedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both fuzzy_dedup.bands and fuzzy_dedup.rows, or neither")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError("fuzzy_dedup.bands * rows must not exceed num_perm")
        return self


class DecontaminationConfig(Strict):
    """Pretraining documents sharing a word n-gram with evaluation data are dropped (pajama.data.decontam)."""

    against: list[str] = Field(default_factory=list)
    """JSON Lines or JSON files (paths, globs, bundled:...) of evaluation examples; every string of a
    record counts. Empty: no decontamination."""
    ngram: int = Field(13, ge=4)
    """N-gram length in normalised words (13, as GPT-3 and lm-evaluation-harness)."""

    @field_validator("against")
    @classmethod
    def _files_exist(cls, paths: list[str]) -> list[str]:
        return [check_local_path_exists(path) for path in paths]


def _known_slices(names: list[str]) -> list[str]:
    from pajama.data.slices import check_slice

    return [check_slice(name) for name in names]


# Names of RedPajama slices, checked when the config is built.
SliceNames = Annotated[list[str], AfterValidator(_known_slices)]


class ReferenceCorpusConfig(Strict):
    """A reference corpus for the quality models: documents of slices of data.sources and/or other files."""

    slices: SliceNames = Field(default_factory=list)
    """Documents of these slices of data.sources."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """Other files (Wikipedia, books, OpenWebText dumps), read like data.sources."""
    max_documents: int = Field(75_000, ge=1)
    """At most this many documents, chosen by a hash of their doc_id (RPv2: 75,000 a classifier class)."""


class PerplexityModelConfig(Strict):
    """cc_net's perplexity model: given files (http(s) URLs, local paths or object-store URIs; cc_net publishes
    `{lang}.sp.model` and `{lang}.arpa.bin` per language at dl.fbaipublicfiles.com/cc_net/lm/, with the bucket
    cutoffs in its cutoff.csv), or built from the wikipedia reference corpus."""

    sentencepiece: str | None = None
    """cc_net's `{lang}.sp.model`; None (with kenlm None): build both from the wikipedia corpus."""
    kenlm: str | None = None
    """cc_net's `{lang}.arpa.bin` (a KenLM binary) or an ARPA file."""
    cutoffs: tuple[float, float] | None = None
    """Perplexity at the 30th and 60th percentile (head below the first, middle below the second); None:
    measured on the web reference corpus."""
    order: int = Field(5, ge=2)
    """N-gram order of a KenLM model built here (cc_net: 5)."""
    vocab_size: int = Field(65_536, ge=100)
    """SentencePiece pieces of a model built here (cc_net: 65,536; fewer when the corpus is small)."""

    @model_validator(mode="after")
    def _both_or_neither(self) -> "PerplexityModelConfig":
        if (self.sentencepiece is None) != (self.kenlm is None):
            raise ValueError("set both perplexity.sentencepiece and perplexity.kenlm, or neither (built here)")
        return self


class QualityModelsConfig(Strict):
    """What RedPajama-V2's model-based signals are computed with (pajama.data.references): the fastText
    classifiers (ccnet_*/rps_doc_ml_*), DSIR importance weights, cc_net's perplexity model and the UT1
    blacklist. RPv2 took the targets from Wikipedia, books and OpenWebText and the source from CommonCrawl."""

    web: ReferenceCorpusConfig = Field(default_factory=lambda: ReferenceCorpusConfig(slices=["common_crawl"]))
    """The web slice: the classifiers' negatives (`__label__cc`) and the DSIR source distribution."""
    wikipedia: ReferenceCorpusConfig = Field(default_factory=lambda: ReferenceCorpusConfig(slices=["wikipedia"]))
    """Wikipedia articles: a classifier, a DSIR target and the perplexity model's training text."""
    books: ReferenceCorpusConfig = Field(default_factory=lambda: ReferenceCorpusConfig(slices=["books"]))
    """Books: a DSIR target and positives of the "palm" classifier."""
    openwebtext: ReferenceCorpusConfig = Field(default_factory=lambda: ReferenceCorpusConfig(slices=["c4"]))
    """RPv2 used OpenWebText; by default C4, the data's other curated web text, stands in."""
    wikiref: ReferenceCorpusConfig = Field(default_factory=lambda: ReferenceCorpusConfig(slices=["wikipedia"]))
    """RedPajama-1T's classifier took web pages that Wikipedia cites as positives; point `sources` at such
    pages. By default Wikipedia itself stands in."""
    perplexity: PerplexityModelConfig = Field(default_factory=PerplexityModelConfig)
    """cc_net's perplexity model (ccnet_perplexity, ccnet_bucket)."""
    classifier_epochs: int = Field(5, ge=1)
    """fastText's default, which RPv2 trained its classifiers with (75,000 texts a class); a small corpus
    needs more passes."""
    dsir_buckets: int = Field(10_000, ge=16)
    """Hashed unigram and bigram features of DSIR (RPv2: 10,000)."""


# The fields of `data` the signals stage reads (and its fingerprint covers); the data stage reads the
# rest, so re-tuned filters, dedup or packing reuse the computed signals (pajama.dag).
SIGNAL_STAGE_FIELDS = ("sources", "on_bad_input", "max_document_bytes", "paragraph_dedup_slices", "ut1_blacklist",
                       "quality_models")
# The references stage builds its models from reference corpora that may be slices of the sources.
REFERENCE_STAGE_FIELDS = ("sources", "on_bad_input", "max_document_bytes", "quality_models")


class DataConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    paragraph_dedup_slices: SliceNames = Field(default_factory=lambda: ["common_crawl"])
    """cc_net's paragraph dedup across the documents of these slices (RedPajama-1T and -V2 ran cc_net on
    CommonCrawl): every line found two or more times is removed (pajama.data.signal_stage)."""
    ut1_blacklist: str | None = None
    """The UT1 blacklist (dsi.ut-capitole.fr/blacklists: its `blacklists/` folder or blacklists.tar.gz, a local
    path) for rps_doc_ut1_blacklist, the categories listing a document's domain; None: that signal is null."""
    quality_models: QualityModelsConfig | None = None
    """The models of the model-based signals (pajama.data.references); None: those signals are null. The
    recipes set it; its defaults take the reference corpora from the RedPajama slices of data.sources."""
    filters: list[str] = Field(default_factory=lambda: ["gopher", "c4", "rpv1_github"])
    """Filter recipes by name (pipelines/filters/<name>.yaml) or path, applied in order."""
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig,
                                                   json_schema_extra=FINGERPRINTED_WHEN_SET)
    exact_dedup: bool = True
    fuzzy_dedup: FuzzyDedupConfig = Field(default_factory=FuzzyDedupConfig)
    quarantine: bool = True
    """Keep the dropped documents with their reason under the artifact's quarantine/."""
    on_bad_input: Literal["quarantine", "fail"] = "quarantine"
    """A record that cannot be read (invalid JSON or UTF-8, no text, a broken compressed file, a document over
    max_document_bytes): "quarantine" counts it and keeps it with its reason, and the stage goes on; "fail"
    stops the stage at the first file with one, naming its records.
    """
    max_document_bytes: int = Field(10_000_000, ge=1)
    """Documents whose text is larger than this (UTF-8 bytes) are bad input, kept in quarantine without their
    text. 10 MB holds the longest books (complete works run to a few MB) with room to spare; larger
    "documents" are concatenated dumps or data blobs, and the signals (word n-grams) and the tokenizer need
    many times a document's size in memory at once.
    """
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_len: int = Field(256, ge=8)
    mixture: dict[str, float] | str | None = None
    """Per-slice sampling weight (1.0 keeps a slice as is, 0.5 halves it, 2.0 doubles it), or a named preset
    such as "rpv1" (RedPajama-1T's token proportions).
    """
    eval_fraction: float = Field(0.05, ge=0, lt=0.5)
    sequences_per_shard: int = Field(4096, ge=1)
    """Shard size target (shards are cut by a hash of doc_id, assuming ~4 bytes of text a token)."""
    shuffle_partitions: int | None = Field(None, ge=1)
    """Partitions of the dedup shuffles; None: twice the cluster's CPUs (at least 4)."""
    shuffle_strategy: Literal["sort_shuffle_pull_based", "sort_shuffle_push_based", "hash_shuffle",
                              "shuffle_v2"] | None = Field(None, json_schema_extra=NOT_FINGERPRINTED)
    """Ray Data's shuffle for the stage's group-bys (DataContext.shuffle_strategy); None keeps Ray's default
    (shuffle_v2: hash partitions, built for corpora that span a cluster). "sort_shuffle_pull_based" runs in
    the task workers that are already up, where shuffle_v2 starts its own worker processes for every
    shuffle: on a laptop's small corpus that is ~0.5 s instead of ~10 s a shuffle. The shards are byte-
    identical under every strategy.
    """

    @model_validator(mode="after")
    def _models_for_model_signals(self) -> "DataConfig":
        """A recipe reading a model-based signal needs the models: without them the signal is null and the
        rule would drop every document it applies to."""
        if self.quality_models is None:
            from pajama.data.filters import load_recipe
            from pajama.data.references import MODEL_SIGNAL_COLUMNS

            for name in self.filters:
                needed = sorted({rule.signal for rule in load_recipe(name)} & set(MODEL_SIGNAL_COLUMNS))
                if needed:
                    raise ValueError(f"filter recipe {name!r} reads {', '.join(needed)}: set data.quality_models "
                                     "(the models of the model-based signals; `{}` takes the defaults)")
        return self

    @field_validator("ut1_blacklist")
    @classmethod
    def _blacklist_exists(cls, path: str | None) -> str | None:
        return None if path is None else check_local_path_exists(path)

    @field_validator("filters")
    @classmethod
    def _recipes_load(cls, names: list[str]) -> list[str]:
        from pajama.data.filters import load_recipe

        for name in names:
            try:
                load_recipe(name)
            except FileNotFoundError as err:
                raise ValueError(str(err)) from None
        return names


class ModelConfig(Strict):
    """A GPT-NeoX shape (transformers' GPTNeoXConfig)."""

    hidden_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    intermediate_size: int | None = None
    """None: 4 x hidden_size"""
    rotary_pct: float = Field(1.0, gt=0, le=1)
    use_parallel_residual: bool = False
    max_position_embeddings: int = Field(2048, ge=8)
    vocab_size: int | None = None
    """None: the tokenizer's size rounded up to a multiple of 128 (INCITE: 50432 for GPT-NeoX-20B)."""
    tie_word_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("model.hidden_size must be divisible by model.num_attention_heads")
        return self


class ScalingConfig(Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, ge=0)


class TrainingConfig(Strict):
    """What pretraining and fine-tuning share: the Ray Train loop, optimiser and checkpoints."""

    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    activation_checkpointing: bool = False
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: int = Field(16, ge=1)
    """Sequences per optimiser step across all workers; must be micro_batch_size x num_workers x k."""
    max_steps: int = Field(100, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    min_learning_rate: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)
    max_failures: int = Field(1, ge=0)
    log_every: int = Field(1, ge=1)
    peak_flops: float | None = None
    """Peak FLOP/s per worker for MFU; None: look the device up in a table of known GPUs."""

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingConfig":
        per_step = self.micro_batch_size * self.scaling.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"micro_batch_size x scaling.num_workers ({per_step})"
            )
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        if self.precision == "bf16" and not self.scaling.use_gpu:
            raise ValueError("precision bf16 needs scaling.use_gpu: true (CPU runs train in fp32)")
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.scaling.num_workers)


class PretrainConfig(TrainingConfig):
    model: ModelConfig


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query_key_value", "dense"])


class SFTDataConfig(Strict):
    format: Literal["instruct_jsonl", "chat_jsonl", "p3", "dolly", "oasst1", "hf"] = "instruct_jsonl"
    path: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str, info) -> str:
        return v if info.data.get("format") == "hf" else check_local_path_exists(v)


class SFTConfig(TrainingConfig):
    style: Literal["instruct", "chat"]
    datasets: list[SFTDataConfig] = Field(min_length=1)
    decontaminate_against: list[SFTDataConfig] = Field(default_factory=list)
    """Evaluation sets whose 10-grams must not appear in training examples."""
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    max_length: int = Field(256, ge=16)
    eval_fraction: float = Field(0.1, ge=0, lt=0.5)
    shuffle_strategy: Literal["sort_shuffle_pull_based", "sort_shuffle_push_based", "hash_shuffle",
                              "shuffle_v2"] | None = Field(None, json_schema_extra=NOT_FINGERPRINTED)
    """Ray Data's shuffle for grouping the examples into shards, as data.shuffle_strategy (None: Ray's default)."""
    base_model: str | None = None
    """The base model: None follows the DAG (this run's pretrain stage); otherwise a local HF directory, an
    MLflow run id (`runs:/<id>`), or a registry URI `models:/pajama-base/3`, `models:/pajama-base@champion`.
    """
    learning_rate: float = Field(1e-4, gt=0)
    min_learning_rate: float = Field(1e-5, ge=0)


class ReplicaOptions(Strict):
    """How each model deployment is replicated and batched; set globally, overridable per model."""

    num_replicas: int | Literal["auto"] = Field(1, json_schema_extra=NOT_FINGERPRINTED)
    autoscaling_config: dict | None = Field(None, json_schema_extra=NOT_FINGERPRINTED)
    max_ongoing_requests: int | None = Field(None, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    """None: 4 x max_batch_size."""
    max_batch_size: int = Field(16, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    """Rows decoding together in a replica; more requests wait to join as rows finish."""
    num_gpus: float | Literal["auto"] = Field("auto", json_schema_extra=NOT_FINGERPRINTED)
    """auto: 1 GPU per replica if the cluster has GPUs."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per model replica (three models share a laptop's cores)."""
    health_check_period_s: float = Field(10.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    """How soon a dead or stuck replica is replaced."""
    stall_timeout_s: float = Field(120.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    """A replica whose generation makes no progress this long while requests wait is unhealthy
    (replaced); longer than the slowest single step, a long prompt's prefill on CPU included."""


class ServeAppOptions(ReplicaOptions):
    """The Serve app's options that the recipe's serve section and pipelines/serve.yaml share."""

    api_key_env: str = "PAJAMA_API_KEY"
    """If this variable is set where the ingress runs, every request needs `Authorization: Bearer <key>`."""
    default_max_tokens: int = Field(256, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    max_request_bytes: int = Field(1 << 20, ge=1024, json_schema_extra=NOT_FINGERPRINTED)
    """Bounded cost per request: larger bodies are refused before they are read whole (413). 1 MiB holds
    any prompt a Pajama context can take."""
    request_body_timeout_s: float = Field(30.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    """A body not read whole this long after its request reached a replica gets 408 (clients send the
    request again): a stalled client holds nothing longer, and neither does a request that Ray Serve
    retried on another replica after the first had read its body (the proxy does not send it twice)."""
    max_prompt_chars: int = Field(256 * 1024, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    """Longer prompts are refused before they are tokenized (400)."""
    ingress_num_cpus: float = Field(0.5, ge=0)
    ingress_max_ongoing_requests: int = Field(256, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    """The ingress deployment of an app of several models; an app of one model decodes in its ingress
    replicas, which take the model's replica options instead."""
    log_interval_s: float = Field(60.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    """How often the ingress logs a traffic summary."""
    sse_keepalive_s: float = Field(15.0, gt=0, json_schema_extra=NOT_FINGERPRINTED)
    """A stream with nothing to send this long gets an SSE comment, so proxies keep it open."""


class ServeConfig(ServeAppOptions):
    """The DAG's serve stage and `pajama serve`: which models, where, and the app's options. The
    replica, batching and limit options say how the app runs, not what it answers: they are left
    out of the stage's fingerprint."""

    host: str = Field("127.0.0.1", json_schema_extra=NOT_FINGERPRINTED)
    """Where to listen, not what is served."""
    port: int = Field(8000, ge=1, le=65535, json_schema_extra=NOT_FINGERPRINTED)
    models: list[Literal["base", "instruct", "chat"]] = Field(default_factory=lambda: ["base", "instruct", "chat"])
    """Which trained models the app serves."""
    probe_message: str = "What does the json module do?"
    max_tokens: int = Field(32, ge=1)


class EvaluateConfig(Strict):
    """The evaluate stage: lm-evaluation-harness tasks for every trained model (pajama.evaluate)."""

    # lm-eval task names: the harness's own (from the Hugging Face hub) or the bundled ones
    # (resources/eval_tasks/: pajama_stdlib_mc, pajama_stdlib_lambada), which need no network.
    tasks: list[str] = Field(default_factory=lambda: ["pajama_stdlib_mc", "pajama_stdlib_lambada"], min_length=1)
    # Few-shot examples per task (mmlu: 5); a task not named here uses its own default (mostly 0).
    num_fewshot: dict[str, int] = Field(default_factory=dict)
    # Examples per task; None: all of them.
    limit: int | None = Field(None, ge=1)
    models: list[Literal["base", "instruct", "chat"]] = Field(default_factory=lambda: ["base", "instruct", "chat"],
                                                               min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(16, ge=1, json_schema_extra=NOT_FINGERPRINTED)
    # GPUs per model evaluation (a Ray task each); 0: one after another in the driver's process.
    num_gpus: float = Field(0, ge=0, json_schema_extra=NOT_FINGERPRINTED)
    # Published scores shown beside the models' (pajama.evaluate.reference); only the report uses them.
    reference: Literal["incite-3b", "incite-7b"] | None = Field(None, json_schema_extra=NOT_FINGERPRINTED)


class PajamaConfig(Strict):
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    data: DataConfig
    pretrain: PretrainConfig
    instruct: SFTConfig
    chat: SFTConfig
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _styles(self) -> "PajamaConfig":
        if self.instruct.style != "instruct" or self.chat.style != "chat":
            raise ValueError("instruct.style must be 'instruct' and chat.style must be 'chat'")
        if self.pretrain.model.max_position_embeddings < self.data.seq_len:
            raise ValueError("pretrain.model.max_position_embeddings must be >= data.seq_len")
        return self


def explain(model: type[BaseModel] = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every field of the tree, sections first-to-last."""
    model = model or PajamaConfig
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        nested = next((a for a in (annotation, *getattr(annotation, "__args__", ()))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        default = "required" if field.is_required() else \
            repr(field.default_factory() if field.default_factory else field.default)
        if nested is not None and not getattr(annotation, "__args__", None):
            rows.append((path, nested.__name__, "", (nested.__doc__ or "").strip().split("\n")[0]))
            rows += explain(nested, f"{path}.")
            continue
        if get_origin(annotation) is Literal:
            kind = "one of " + ", ".join(map(str, get_args(annotation)))
        else:
            kind = str(annotation).replace("typing.", "") if get_args(annotation) else annotation.__name__
        if nested is not None:  # an optional section (data.quality_models) or a list of them (data.sources):
            rows.append((path, kind, default, field.description or ""))  # fields under path. or path.0.
            optional = get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)
            rows += explain(nested, f"{path}." if optional else f"{path}.0.")
            continue
        rows.append((path, kind, default if len(default) < 40 else default[:37] + "...", field.description or ""))
    return rows


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"recipe file {name_or_path!r} does not exist")
        return path
    path = PIPELINES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        # pipelines/ also holds the Serve config (serve.yaml), which is not a recipe.
        known = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml") if p.stem != "serve")
        raise ConfigError(f"unknown recipe {name_or_path!r}; known: {', '.join(known)}")
    return path


def _load_raw(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    path = recipe_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"recipe inheritance cycle through {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping")
    parent = raw.pop("inherit", None)
    if parent:
        raw = _deep_merge(_load_raw(parent, seen + (str(path),)), raw)
    return raw


def parse_override(override: str) -> tuple[list[str], Any]:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    return key.split("."), yaml.safe_load(value)


def _apply_override(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
    node[keys[-1]] = value


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line for one error (`invalid config (recipe 'tiny'): data.seq_len: ...`), else a line each."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
    if len(problems) == 1:
        return f"invalid config ({source}): {problems[0]}"
    return "\n".join([f"invalid config ({source}):", *(f"  {p}" for p in problems)])


def load_config(recipe: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> PajamaConfig:
    """Build and validate the config tree of a recipe plus `a.b=value` overrides."""
    raw = _load_raw(recipe)
    for override in overrides:
        _apply_override(raw, *parse_override(override))
    try:
        return PajamaConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, f"recipe {recipe!r}")) from None
