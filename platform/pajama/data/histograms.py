"""Per-slice histograms of the document-level quality signals, and their plot with recipe thresholds.

The signals stage computes them once (`compute`, two passes over the signal columns only: the range of
each signal, then the counts) and keeps them in its artifact as `histograms.json`; the data stage draws
them with the thresholds of the filter rules it applies (`plot`), so a researcher re-tuning a recipe sees
where each cut falls in every slice's distribution. Signals spanning several orders of magnitude (word
counts, perplexities) get bins even on a log1p scale, the others even bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BINS = 40
# A non-negative signal whose maximum exceeds this is binned on a log1p scale.
_LOG_SCALE_ABOVE = 1000
# The per-batch partial counts, summed on the driver.
_COUNTS_SCHEMA = pa.schema([("slice", pa.string()), ("signal", pa.string()), ("nulls", pa.int64()),
                            ("counts", pa.list_(pa.int64()))])


def numeric_signals(schema: pa.Schema, names: Sequence[str]) -> list[str]:
    """The document-level numeric signals among `names` (not lists, not the language code)."""
    return [n for n in names if n in schema.names and (pa.types.is_integer(schema.field(n).type)
                                                      or pa.types.is_floating(schema.field(n).type))]


def compute(documents, columns: list[str]) -> dict:
    """{"signals": {name: {"edges": [...], "log_scale": bool, "counts": {slice: [...]}, "nulls": {slice: n}}}}
    over the rows of a Ray dataset holding `slice` and `columns`."""
    documents = documents.select_columns(["slice", *columns])

    def ranges(batch: pa.Table) -> pa.Table:
        bounds = {}
        for name in columns:
            lo_hi = pc.min_max(batch.column(name))
            bounds[f"{name}:min"] = [lo_hi["min"].as_py()]
            bounds[f"{name}:max"] = [lo_hi["max"].as_py()]
        return pa.table({k: pa.array(v, pa.float64()) for k, v in bounds.items()})

    partial = pa.concat_tables(documents.map_batches(ranges, batch_format="pyarrow", batch_size=None)
                               .iter_batches(batch_format="pyarrow", batch_size=None))
    edges, log_scale = {}, {}
    for name in columns:
        lo, hi = pc.min(partial.column(f"{name}:min")).as_py(), pc.max(partial.column(f"{name}:max")).as_py()
        if lo is None:  # null in every document
            continue
        log_scale[name] = lo >= 0 and hi > _LOG_SCALE_ABOVE
        if log_scale[name]:
            edges[name] = np.expm1(np.linspace(0.0, np.log1p(hi), BINS + 1))
        else:
            edges[name] = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)

    def counts(batch: pa.Table) -> pa.Table:
        rows = []
        for slice_name in pc.unique(batch.column("slice")).to_pylist():
            if slice_name is None:
                continue
            part = batch.filter(pc.equal(batch.column("slice"), slice_name))
            for name, bins in edges.items():
                values = part.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                present = values[~np.isnan(values)]
                rows.append({"slice": slice_name, "signal": name, "nulls": int(len(values) - len(present)),
                             "counts": np.histogram(present, bins=bins)[0].tolist()})
        return pa.Table.from_pylist(rows, schema=_COUNTS_SCHEMA)

    result = {name: {"edges": edges[name].tolist(), "log_scale": log_scale[name], "counts": {}, "nulls": {}}
              for name in edges}
    for batch in documents.map_batches(counts, batch_format="pyarrow", batch_size=None).iter_batches(
            batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            entry = result[row["signal"]]
            previous = entry["counts"].get(row["slice"])
            entry["counts"][row["slice"]] = row["counts"] if previous is None else \
                np.add(previous, row["counts"]).tolist()
            entry["nulls"][row["slice"]] = entry["nulls"].get(row["slice"], 0) + row["nulls"]
    return {"bins": BINS, "signals": result}


def plot(histograms: dict, path: Path, rules: Sequence = (), title: str = "Quality signals per slice") -> None:
    """A grid of per-slice step histograms, one panel per signal, with a dashed line at each threshold of
    `rules` (pajama.data.filters.FilterRule) on that signal, labelled with the rule's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signals = histograms["signals"]
    names = sorted(signals)
    if not names:
        return
    thresholds: dict[str, list] = {}
    for rule in rules:
        if rule.signal in signals and isinstance(rule.value, (int, float)) and not isinstance(rule.value, bool):
            thresholds.setdefault(rule.signal, []).append(rule)
    columns = 5
    rows = -(-len(names) // columns)
    # A fixed layout: tight_layout measured every tick label of the ~60 panels, most of the figure's cost.
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False,
                             gridspec_kw={"left": 0.03, "right": 0.9, "bottom": 0.02, "top": 1 - 0.9 / (2.6 * rows),
                                          "wspace": 0.25, "hspace": 0.45})
    slices = sorted({s for entry in signals.values() for s in entry["counts"]})
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(slices)}
    for ax, name in zip(axes.flat, names):
        entry = signals[name]
        edges = np.asarray(entry["edges"])
        for slice_name, counts in sorted(entry["counts"].items()):
            total = max(1, sum(counts))
            shares = np.asarray(counts) / total
            # A step line, not ax.stairs: a line costs matplotlib a fraction of a patch to lay out.
            ax.plot(edges, np.append(shares, shares[-1]), drawstyle="steps-post", color=colors[slice_name],
                    linewidth=1, label=slice_name)
        for rule in thresholds.get(name, []):
            ax.axvline(rule.value, color="black", linestyle="--", linewidth=1)
            ax.annotate(f"{rule.name} {rule.op} {rule.value:g}", (rule.value, 0.95), xycoords=("data", "axes fraction"),
                        fontsize=6, rotation=90, ha="right", va="top")
        if entry["log_scale"]:
            ax.set_xscale("symlog", linthresh=1)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        # A title at a fixed height: placing it above the tick labels measured them, a sixth of the plot's cost.
        ax.set_title(name, fontsize=8, fontweight="bold" if name in thresholds else "normal", y=1.0, pad=3)
        ax.tick_params(labelsize=6)
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(f"{title} (share of each slice's documents; dashed: thresholds of the active filter rules)",
                 y=1 - 0.25 / (2.6 * rows))
    fig.savefig(path, dpi=80)
    plt.close(fig)
