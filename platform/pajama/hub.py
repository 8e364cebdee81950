"""Remote data a recipe names: Hugging Face Hub datasets (`hf://datasets/<org>/<name>`, the
`hf_hub` source format, `hf` fine-tuning sets) and http(s) release listings (RedPajama-1T's
urls.txt).

`dataset_files` brings a hub dataset's files matching a glob into the hub client's local cache
(huggingface_hub.snapshot_download) and returns their paths; with HF_HUB_OFFLINE set it uses the
cache only. `dataset_file_names` lists those files without downloading them, so that each can be
fetched by the cluster task that reads it. `preflight(cfg, stages)` checks, before any Ray work,
that every remote dataset the stages about to run will read can be reached (hub: the dataset's
info with a short timeout, or offline its cached snapshot; http(s): a HEAD request), and fails
with one error naming each that cannot. Nothing falls back to bundled data. `pajama config` never calls it: a recipe
validates offline, and the check belongs to running a stage (pajama.dag.run_dag).
"""

from __future__ import annotations

import fnmatch
import os
import urllib.request
from pathlib import Path, PurePosixPath

from pajama.config import ConfigError, PajamaConfig

HUB_DATASETS = "hf://datasets/"
TIMEOUT_S = 10.0


class HubUnavailableError(ConfigError):
    """A remote dataset a recipe names cannot be reached; the message names it and the field."""


def offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import).
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def repo_id(path: str) -> str | None:
    """`org/name` of a `hf://datasets/org/name[/...]` path, else None."""
    if not path.startswith(HUB_DATASETS):
        return None
    return "/".join(path[len(HUB_DATASETS):].split("@", 1)[0].split("/")[:2])


def _snapshot(repo: str, data_files: str, revision: str | None) -> Path:
    """The local snapshot of hub dataset `repo` holding its files that match `data_files`."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=[data_files],
                                      local_files_only=offline()))
    except Exception as error:  # noqa: BLE001 - every hub failure means the same to the user
        raise HubUnavailableError(f"hub dataset {repo!r} cannot be read ({type(error).__name__}: {error})"
                                  + (" (HF_HUB_OFFLINE is set: only the local cache is used)" if offline() else ""))


def dataset_files(path: str, data_files: str, revision: str | None = None) -> list[Path]:
    """Local copies of the files of hub dataset `path` that match the glob `data_files`."""
    repo = repo_id(path)
    root = _snapshot(repo, data_files, revision)
    files = sorted(p for p in root.glob(data_files) if p.is_file())
    if not files:
        raise FileNotFoundError(f"hub dataset {repo!r}: no file matches data_files={data_files!r}")
    return files


def dataset_file_names(path: str, data_files: str, revision: str | None = None) -> list[str]:
    """The names, inside hub dataset `path`, of the files `dataset_files` would fetch, listed without
    downloading them (offline: those in the local cache). A cluster reads each on a worker, with
    `dataset_files(path, name)`, instead of downloading the whole dataset where the job starts."""
    repo = repo_id(path)
    if offline():
        root = _snapshot(repo, data_files, revision)
        names = sorted(p.relative_to(root).as_posix() for p in root.glob(data_files) if p.is_file())
    else:
        from huggingface_hub import HfApi

        try:
            listed = HfApi().list_repo_files(repo, repo_type="dataset", revision=revision)
        except Exception as error:  # noqa: BLE001 - every hub failure means the same to the user
            raise HubUnavailableError(f"hub dataset {repo!r} cannot be read ({type(error).__name__}: {error})")
        # What snapshot_download fetches (fnmatch, where * also matches "/") and Path.glob then finds.
        names = sorted(n for n in listed if fnmatch.fnmatch(n, data_files) and PurePosixPath(n).match(data_files))
    if not names:
        raise FileNotFoundError(f"hub dataset {repo!r}: no file matches data_files={data_files!r}")
    return names


def remote_datasets(cfg: PajamaConfig, stages: list[str]) -> list[tuple[str, str]]:
    """(config field, hub dataset `org/name` or http(s) URL) of each remote dataset the stages read."""
    named = []
    # The stages that read the sources: signals, and references when it builds models from their slices.
    if "signals" in stages or ("references" in stages and cfg.data.quality_models is not None):
        for i, source in enumerate(cfg.data.sources):
            if source.format == "hf_hub":
                named.append((f"data.sources.{i}.path", source.path))
            elif repo_id(source.path) or source.path.startswith(("http://", "https://")):
                named.append((f"data.sources.{i}.path", repo_id(source.path) or source.path))
    perplexity = cfg.data.quality_models.perplexity if cfg.data.quality_models else None
    if "references" in stages and perplexity is not None:
        for field in ("sentencepiece", "kenlm"):
            uri = getattr(perplexity, field)
            if uri and uri.startswith(("http://", "https://")):
                named.append((f"data.quality_models.perplexity.{field}", uri))
    for stage in ("instruct", "chat"):
        if stage not in stages:
            continue
        section = getattr(cfg, stage)
        for group in ("datasets", "decontaminate_against"):
            for i, dataset in enumerate(getattr(section, group)):
                hub_name = repo_id(dataset.path) or (
                    dataset.path if dataset.format == "hf" and not Path(dataset.path).exists() else None)
                if hub_name:
                    named.append((f"{stage}.{group}.{i}.path", hub_name))
    return named


def _unreachable(name: str, timeout: float) -> str | None:
    """Why a remote dataset cannot be reached, or None."""
    try:
        if name.startswith(("http://", "https://")):
            urllib.request.urlopen(urllib.request.Request(name, method="HEAD"), timeout=timeout).close()
        elif offline():
            from huggingface_hub import snapshot_download

            snapshot_download(name, repo_type="dataset", local_files_only=True)
        else:
            from huggingface_hub import HfApi

            HfApi().dataset_info(name, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - reported with the dataset's name
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline() and "://" not in name else ""
        return f"{type(error).__name__}: {error}{hint}"
    return None


def preflight(cfg: PajamaConfig, stages: list[str], timeout: float = TIMEOUT_S) -> None:
    """Raise HubUnavailableError naming each remote dataset of `stages` that cannot be reached."""
    problems = [f"{field}: {name!r} cannot be reached ({reason})"
                for field, name in remote_datasets(cfg, stages)
                if (reason := _unreachable(name, timeout)) is not None]
    if len(problems) == 1:
        raise HubUnavailableError(problems[0])
    if problems:
        raise HubUnavailableError("remote datasets cannot be reached:\n" + "\n".join(f"  {p}" for p in problems))
