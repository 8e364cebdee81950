"""The lineage of a DAG run, read back from MLflow: stages, runs, fingerprints, artifacts, models.

Rendered as text for the terminal and as a Mermaid flowchart (which the MLflow UI and GitHub
show as a diagram when logged as a `.md` artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from pajama import tracking


@dataclass
class StageNode:
    stage: str
    run_id: str
    status: str
    fingerprint: str
    artifact: str
    reused_from: str | None
    upstream: dict[str, str] = field(default_factory=dict)  # upstream stage -> run id
    model: str | None = None  # "name/version" registered by this stage's producing run


def dag_lineage(parent_run_id: str) -> list[StageNode]:
    client = MlflowClient()
    nodes = []
    for run in tracking.child_runs(parent_run_id):
        tags = run.data.tags
        reused = tags.get(tracking.TAG_REUSED_FROM) or None
        producer = reused or run.info.run_id
        versions = client.search_model_versions(f"run_id = '{producer}'")
        nodes.append(StageNode(
            stage=tags.get(tracking.TAG_STAGE, run.info.run_name),
            run_id=run.info.run_id,
            status=run.info.status,
            fingerprint=tags.get(tracking.TAG_FINGERPRINT, ""),
            artifact=tags.get(tracking.TAG_ARTIFACT, ""),
            reused_from=reused,
            upstream={k[len(tracking.TAG_UPSTREAM):]: v for k, v in tags.items() if k.startswith(tracking.TAG_UPSTREAM)},
            model=f"{versions[0].name}/{versions[0].version}" if versions else None,
        ))
    return nodes


def render_text(parent_run_id: str, nodes: list[StageNode]) -> str:
    parent = mlflow.get_run(parent_run_id)
    lines = [f"DAG run {parent_run_id} ({parent.info.run_name}, {parent.info.status})"]
    for n in nodes:
        how = f"reused from run {n.reused_from}" if n.reused_from else "ran"
        lines.append(f"- {n.stage}: run {n.run_id} [{n.status}, {how}]")
        lines.append(f"    fingerprint: {n.fingerprint}")
        if n.upstream:
            lines.append("    upstream: " + ", ".join(f"{s} (run {r})" for s, r in n.upstream.items()))
        if n.model:
            lines.append(f"    model: models:/{n.model}")
        if n.artifact:
            lines.append(f"    artifact: {n.artifact}")
    return "\n".join(lines)


def render_png(nodes: list[StageNode], path) -> None:
    """The DAG as a picture: one box per stage, left to right by depth, reused stages greyed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth: dict[str, int] = {}
    for n in nodes:  # child runs come in DAG order, so upstream depths are known
        depth[n.stage] = 1 + max((depth.get(u, 0) for u in n.upstream), default=-1)
    rows: dict[int, int] = {}
    pos = {}
    for n in nodes:
        pos[n.stage] = (depth[n.stage], rows.get(depth[n.stage], 0))
        rows[depth[n.stage]] = rows.get(depth[n.stage], 0) + 1
    fig, ax = plt.subplots(figsize=(2.6 * (max(depth.values(), default=0) + 1), 1.4 * max(rows.values(), default=1)))
    for n in nodes:
        for up in n.upstream:
            if up in pos:
                (x0, y0), (x1, y1) = pos[up], pos[n.stage]
                ax.annotate("", xy=(x1 - 0.38, -y1), xytext=(x0 + 0.38, -y0),
                            arrowprops={"arrowstyle": "->", "color": "#555"})
    for n in nodes:
        x, y = pos[n.stage]
        label = f"{n.stage}\n{n.fingerprint[:10]}" + (f"\n{n.model}" if n.model else "")
        ax.text(x, -y, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "#eeeeee" if n.reused_from else "#cfe3ff", "ec": "#333"})
    ax.set_xlim(-0.6, max(depth.values(), default=0) + 0.6)
    ax.set_ylim(-max(rows.values(), default=1) + 0.4, 0.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_to_parent(parent_run_id: str) -> None:
    """Log the lineage (text, Mermaid, PNG) as artifacts of the DAG's parent run."""
    import tempfile
    from pathlib import Path

    nodes = dag_lineage(parent_run_id)
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "lineage.txt").write_text(render_text(parent_run_id, nodes))
        (Path(tmp) / "lineage.md").write_text("```mermaid\n" + render_mermaid(nodes) + "\n```\n")
        render_png(nodes, Path(tmp) / "lineage.png")
        client.log_artifacts(parent_run_id, tmp, "lineage")


def render_mermaid(nodes: list[StageNode]) -> str:
    lines = ["flowchart LR"]
    for n in nodes:
        label = f"{n.stage}<br/>{n.fingerprint[:10]}" + (f"<br/>{n.model}" if n.model else "")
        style = ":::reused" if n.reused_from else ""
        lines.append(f'    {n.stage}["{label}"]{style}')
    for n in nodes:
        for up in n.upstream:
            lines.append(f"    {up} --> {n.stage}")
    lines.append("    classDef reused fill:#eee,stroke:#999,stroke-dasharray: 3 3")
    return "\n".join(lines)
