"""The `pajama` command: run the DAG or one stage, serve the models, show lineage and config.

    pajama run                       the whole DAG on the tiny recipe (CPU, bundled data)
    pajama pretrain --recipe 3b      one stage (and whatever upstream is not up to date)
    pajama serve                     keep the OpenAI-compatible app up on 127.0.0.1:8000
    pajama lineage [RUN_ID]          the DAG of a run: stages, runs, fingerprints, artifacts
    pajama promote                   the latest DAG run's models -> alias production (what serve.yaml serves)
    pajama plan                      each stage's fingerprint, and whether a run would reuse it
    pajama config --set data.seq_len=512   the resolved config, validated

Storage and tracking come from the recipe, or from PAJAMA_STORAGE_URI and MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

import pajama

from pajama.config import ConfigError, load_config
from pajama.kinds import KINDS, kind, kind_named

STAGE_COMMANDS = {
    "references": "build the models of the model-based quality signals (classifiers, DSIR, perplexity)",
    "signals": "read the sources and compute their quality signals (once: re-tuned filters reuse them)",
    "data": "prepare the data: quality signals, filters, dedup, tokenizer, packed shards",
    "pretrain": "train the GPT-NeoX base model on Ray Train and register it as pajama-base",
    "instruct": "fine-tune the base model on instructions; registers pajama-instruct",
    "chat": "fine-tune the base model on conversations; registers pajama-chat",
}


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="tiny",
                   help="recipe name in pipelines/ (tiny, 3b, 7b) or a path to a YAML file (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set chat.learning_rate=5e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pajama", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pajama {pajama.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail: debug lines, and tracebacks of expected errors")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the whole DAG (stages that are up to date are reused)")
    _recipe_args(p)
    for stage, text in STAGE_COMMANDS.items():
        _recipe_args(sub.add_parser(stage, help=text))
    p = sub.add_parser("serve", help="serve base, instruct and chat models (OpenAI API) until Ctrl-C")
    _recipe_args(p)
    p.add_argument("--host", help="listen address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: serve.port, 8000)")
    p.add_argument("--allow-insecure", action="store_true",
                   help="listen beyond loopback without an API key (refused otherwise: set PAJAMA_API_KEY)")
    p.add_argument("--model", action="append", default=[], metavar="NAME[:KIND]=SOURCE",
                   help="serve this model instead of the recipe's (repeatable), e.g. "
                        "pajama-chat=models:/pajama-chat@production or mybot:chat=/path/to/hf-dir; "
                        "KIND (base, instruct, chat) picks the prompt format and may be left out "
                        "when NAME is a kind or its registered name")
    p = sub.add_parser("evaluate", help="lm-evaluation-harness scores of a model, or of the DAG's models")
    _recipe_args(p)
    p.add_argument("--model", metavar="SOURCE",
                   help="models:/<name>/<version>, models:/<name>@<alias>, runs:/<id> or an HF directory "
                        "(default: run the DAG's evaluate stage on its base, instruct and chat models)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="lm-eval task names (default: evaluate.tasks)")
    p.add_argument("--limit", type=int, metavar="N", help="examples per task (default: evaluate.limit)")
    p = sub.add_parser("lineage", help="print the DAG of a run (default: the latest)")
    _recipe_args(p)
    p.add_argument("run_id", nargs="?", help="an MLflow DAG run id (default: the latest DAG run)")
    p.add_argument("--format", choices=["text", "mermaid"], default="text")
    p = sub.add_parser("promote", help="point a registry alias (default: production) at a DAG run's models")
    _recipe_args(p)
    p.add_argument("--alias", default="production",
                   help="the alias to set (default: production, which pipelines/serve.yaml serves)")
    p.add_argument("--run", dest="run_id", help="the DAG run whose base, instruct and chat versions to promote "
                                                "(default: the latest DAG run that ran or reused all three)")
    p.add_argument("--model", dest="versions", action="append", default=[], metavar="NAME/VERSION",
                   help="promote this version instead, e.g. pajama-chat/3 or models:/pajama-chat/3 (repeatable)")
    p = sub.add_parser("plan", help="show each stage's fingerprint and whether a run would reuse or run it")
    _recipe_args(p)
    p.add_argument("stages", nargs="*", help="target stages (default: the whole DAG)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p = sub.add_parser("config", help="print the resolved, validated config as JSON (--explain: every field)")
    _recipe_args(p)
    p.add_argument("--explain", nargs="?", const="", metavar="PREFIX",
                   help="list the fields (path, type, default, what it does), e.g. --explain pretrain")
    return parser


def _serve(cfg, recipe: str, args) -> None:
    from pajama import dag
    from pajama.serve.app import serve_forever
    from pajama.serve.stage import app_args

    if args.model:
        app = {"models": [_model_option(item, cfg.project.resolved_tracking_uri) for item in args.model],
               "tracking_uri": cfg.project.resolved_tracking_uri, "storage_uri": cfg.project.storage_uri,
               "api_key_env": cfg.serve.api_key_env}
    else:
        targets = [kind(name).stage for name in cfg.serve.models]
        artifacts = dag.run_dag(cfg, recipe, targets)
        app = app_args(cfg.serve, {s: artifacts[s] for s in targets}, cfg.project.resolved_tracking_uri,
                       cfg.project.storage_uri)
    serve_forever(app, host=args.host or cfg.serve.host, port=args.port or cfg.serve.port,
                  allow_insecure=args.allow_insecure)


def _model_option(item: str, tracking_uri: str) -> dict:
    """`--model NAME[:KIND]=SOURCE`; without KIND, NAME must be a kind or its registered name.
    The source is checked here, so a wrong one fails before Serve starts replicas for it."""
    from pajama.models import check_source

    name, sep, source = item.partition("=")
    name, _, kind_name = name.partition(":")
    if not sep or not name or not source:
        raise ConfigError(f"--model {item!r}: expected NAME=SOURCE or NAME:KIND=SOURCE")
    if kind_name and kind_name not in KINDS:
        raise ConfigError(f"--model {item!r}: unknown kind {kind_name!r}; kinds: {', '.join(KINDS)}")
    check_source(source, tracking_uri)
    found = kind(kind_name) if kind_name else kind_named(name)
    if found is None:
        raise ConfigError(f"--model {item!r}: say which kind of model {name!r} is, e.g. {name}:chat={source} "
                          f"(kinds: {', '.join(KINDS)})")
    return {"name": name, "source": source, "kind": found.name}


def _promote(cfg, args) -> None:
    from pajama import tracking

    tracking.setup(cfg)
    if args.versions:
        versions = {}
        for item in args.versions:
            name, sep, version = item.removeprefix("models:/").partition("/")
            if not sep or not version.isdigit():
                raise ConfigError(f"--model {item!r}: expected NAME/VERSION, e.g. pajama-chat/3")
            versions[name] = version
    else:
        # The newest run of the whole model DAG: a later `pajama chat` alone does not hide instruct.
        run_id = args.run_id or tracking.latest_dag_run(cfg.project.experiment,
                                                        covering=tuple(k.stage for k in KINDS.values()))
        versions = tracking.dag_run_versions(run_id)
        if not versions:
            raise LookupError(f"DAG run {run_id} trained or reused no registered model; run the whole DAG first")
    tracking.promote(versions, args.alias)
    for name, version in versions.items():
        print(f"models:/{name}@{args.alias} -> version {version}")


def _evaluate(cfg, recipe: str, args) -> None:
    from pajama.evaluate import stage

    cfg.evaluate.tasks = args.tasks or cfg.evaluate.tasks
    cfg.evaluate.limit = args.limit or cfg.evaluate.limit
    if args.model:
        rows = stage.evaluate_source(cfg.evaluate, args.model, cfg.project.resolved_tracking_uri,
                                     cfg.project.storage_uri)
    else:
        from pajama.dag import run_dag

        rows = run_dag(cfg, recipe, ["evaluate"])["evaluate"].manifest["results"]
    print(stage.format_table(rows))


def _plan(cfg, args) -> None:
    from pajama.dag import plan

    steps = plan(cfg, args.stages or None)
    if args.json:
        print(json.dumps({s.stage: {"fingerprint": s.fingerprint, "up_to_date": s.existing is not None,
                                    "upstream": list(s.upstream)} for s in steps}, indent=1))
        return
    for s in steps:
        status = f"up to date (run {s.existing.run_id})" if s.existing else "would run"
        print(f"{s.stage:<10} {s.fingerprint}  {status}")


def _lineage(cfg, args) -> None:
    from pajama import lineage, tracking

    tracking.setup(cfg)
    run_id = args.run_id or tracking.latest_dag_run(cfg.project.experiment)
    nodes = lineage.dag_lineage(run_id)
    print(lineage.render_mermaid(nodes) if args.format == "mermaid" else lineage.render_text(run_id, nodes))


def _setup_logging(verbosity: int) -> None:
    """Pajama's progress lines on stderr: -q only warnings, -v debug detail (and tracebacks)."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[pajama] %(message)s"))
    root = logging.getLogger("pajama")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _expected_error(err: BaseException) -> BaseException | None:
    """The user-fixable error behind `err`, also when it was raised in a Ray task or actor."""
    from pajama.data.readers import BadInputError
    from pajama.storage import StorageError

    expected: tuple[type[BaseException], ...] = (ConfigError, BadInputError, StorageError, LookupError,
                                                 FileNotFoundError, PermissionError)
    try:
        from mlflow.exceptions import MlflowException

        expected += (MlflowException,)
    except ImportError:
        pass
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # a RayTaskError keeps the remote exception here
        if isinstance(cause, BaseException):
            err = cause
            continue
        if isinstance(err, expected):
            return err
        err = err.__cause__ or err.__context__
    return None


def _dispatch(args) -> None:
    cfg = load_config(args.recipe, args.overrides)
    if args.command == "config" and args.explain is not None:
        from pajama.config import explain

        for path, type_name, default, text in explain():
            if path.startswith(args.explain):
                print(f"{path}  ({type_name}{', default ' + default if default else ''})")
                if text:
                    print(textwrap.fill(" ".join(text.split()), 100, initial_indent="    ", subsequent_indent="    "))
    elif args.command == "config":
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    elif args.command == "promote":
        _promote(cfg, args)
    elif args.command == "plan":
        _plan(cfg, args)
    elif args.command == "lineage":
        _lineage(cfg, args)
    elif args.command == "serve":
        _serve(cfg, args.recipe, args)
    elif args.command == "evaluate":
        _evaluate(cfg, args.recipe, args)
    else:
        from pajama.dag import run_dag

        if not args.verbose:
            _hide_ray_data_tracebacks()
        run_dag(cfg, args.recipe, None if args.command == "run" else [args.command])


def _hide_ray_data_tracebacks() -> None:
    """Ray Data prints the traceback of a failed read or task on the console (and calls an error
    raised in a reader "internal"); the CLI names the cause in one line instead. Ray Data's log file
    keeps everything, and -v leaves the console as Ray sets it."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its console handler)

    def keep(record: logging.LogRecord) -> bool:
        if record.exc_info or record.getMessage().startswith(("Full stack trace", "Exception occurred in Ray Data")):
            return False
        return True

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(keep)


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures print one line and exit non-zero (-v: the traceback)."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose - args.quiet)
    try:
        _dispatch(args)
    except KeyboardInterrupt:
        # Nothing an interrupted stage wrote is taken for finished (pajama.artifacts); the data stage
        # keeps its finished phases for the next run.
        print("pajama: interrupted; unfinished stages left nothing that a later run takes for finished",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (sorted into expected and unexpected below)
        expected = _expected_error(err)
        if expected is None or args.verbose:
            raise
        if isinstance(expected, ConfigError):
            print(f"pajama: {expected}", file=sys.stderr)
            return 2
        first, _, rest = str(expected).strip().partition("\n")
        more = " (run with -v for the details)" if rest else ""
        print(f"pajama: {first}{more}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
