"""Exact and fuzzy (MinHash LSH) document deduplication on Ray Data, as RedPajama-V2 does it.

Both stages mark documents instead of dropping them, so the caller can count what each stage
removed per slice and keep the removed documents in a quarantine with a reason
(EXACT_DUPLICATE / NEAR_DUPLICATE). Every input column passes through with its values
unchanged (a hash join may widen string to large_string); rows may come back in another order.

- exact_dedup: sha1 of the RPv2-normalised text; one document per hash is kept, the one with
  the smallest doc_id, across the whole corpus (all slices together).
- fuzzy_dedup: MinHash signatures over 13-word shingles of the normalised words, LSH bands,
  candidate pairs from identical band keys (the band rows are shuffled into partitions by a
  band value and each partition is grouped by key at once with Arrow: nearly every key is
  unique, and Ray Data's group-by aggregate pays Python per group), clusters = connected
  components of the candidate graph (distributed large-star/small-star iteration, Kiveris et
  al. 2014), one document kept
  per cluster (the smallest doc_id). As in RPv2, documents shorter than one shingle get no
  signature and are left to exact dedup.

Memory: every step is a Ray Data map, group-by aggregate or hash join, so a worker holds one
block or one shuffle partition (about the data volume / num_partitions), never the corpus; the
marks go back to the documents by a broadcast join (every block gets the table of repeated
documents) while that table is small, by a hash join beyond _BROADCAST_MAX_ROWS. The
largest single values are one LSH bucket's doc_id list and one node's neighbour list, both
bounded by the size of the largest near-duplicate cluster. The one exception is deliberate: a
candidate graph small enough for one process (fuzzy_dedup's driver_components_max_edges) gets
its connected components on the driver, as RedPajama-V2 did. Both functions read `ds` twice
(once for the keys, once for the join): pass a materialised or file-backed dataset when the
upstream stages are expensive. Set DataContext.use_disk_based_hash_shuffle (or
RAY_DATA_ENABLE_DISK_SHUFFLE=1) when the corpus exceeds the cluster's object store.
"""

from __future__ import annotations

import hashlib
from itertools import chain

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.aggregate import Min, Sum, Unique

from pajama.data.text import normalize_text

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

# Shingles hashed per (chunk x num_perm) uint64 matrix: 16 MiB at 128 permutations.
_SHINGLE_CHUNK = 1 << 14
# Which of the two uint32 halves of a uint64 (viewed as uint32 pairs) is its top half.
_HIGH_HALF = 1 if np.little_endian else 0
# Documents per signature batch: bounds the per-task word arrays for book-length documents.
_SIGNATURE_BATCH = 256
_MAX_CC_ROUNDS = 64
_MAX_NGRAM = 64
# Building the hash set of a lookup table this size costs ~10 ms per block it marks.
_BROADCAST_MAX_ROWS = 200_000

_EXACT_HASH = "_exact_hash"
_EXACT_KEEP = "_exact_keep"
_BAND_KEY = "_band_key"
_BAND_PARTITION = "_band_partition"
_FUZZY_ROOT = "_fuzzy_root"


def _texts(batch: pa.Table) -> list[str]:
    texts = batch.column("text").to_pylist()
    if None in texts:
        doc_id = batch.column("doc_id")[texts.index(None)].as_py()
        raise ValueError(
            f"document {doc_id!r} has a null 'text'; readers must emit a string "
            "(an empty document is '')"
        )
    return texts


def _shuffle_partitions(num_partitions: int | None) -> int:
    if num_partitions is None:
        return ray.data.DataContext.get_current().default_hash_shuffle_parallelism
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return num_partitions


# ---------------------------------------------------------------------------------------------
# Exact dedup


def _exact_hash_rows(batch: pa.Table, *, partitions: int) -> pa.Table:
    """(doc_id, hash, partition) per document: the sha1 of its normalised text, and the hash's first 4
    bytes modulo `partitions` as its partition, so equal hashes share one."""
    digests = [hashlib.sha1(normalize_text(t).encode("utf-8")).digest() for t in _texts(batch)]
    heads = np.frombuffer(b"".join(d[:4] for d in digests), np.uint32)
    return pa.table({"doc_id": batch["doc_id"], _EXACT_HASH: pa.array(digests, pa.binary(20)),
                     "_partition": pa.array((heads % np.uint32(partitions)).astype(np.int32))})


def _exact_duplicates(hashes: pa.Table) -> pa.Table:
    """The documents of one partition (which holds every row of each of its hashes) whose hash a smaller
    doc_id shares, with that smallest doc_id: one Arrow group-by where Ray's aggregate would pay Python
    per hash."""
    groups = hashes.group_by(_EXACT_HASH, use_threads=False).aggregate([([], "count_all"), ("doc_id", "min")])
    repeated = groups.filter(pc.greater(groups["count_all"], 1)).select([_EXACT_HASH, "doc_id_min"])
    rows = hashes.select(["doc_id", _EXACT_HASH]).join(repeated, _EXACT_HASH, join_type="inner", use_threads=False)
    duplicates = rows.filter(pc.not_equal(rows["doc_id"], rows["doc_id_min"]))
    return pa.table({"doc_id": duplicates["doc_id"], _EXACT_KEEP: duplicates["doc_id_min"]})


def _mark_exact(batch: pa.Table) -> pa.Table:
    # Documents without a duplicate have a null keeper, so a null mark.
    dup_of = batch[_EXACT_KEEP].cast(pa.string())
    return batch.drop_columns([_EXACT_KEEP]).append_column("exact_dup_of", dup_of)


def exact_dedup(ds: ray.data.Dataset, *, num_partitions: int | None = None) -> ray.data.Dataset:
    """Add `exact_dup_of`: the kept doc_id for a document whose normalised text repeats one
    with a smaller doc_id anywhere in the corpus, null for kept documents. num_partitions as
    in fuzzy_dedup. The texts are hashed once: the marks go back to the documents by doc_id."""
    partitions = _shuffle_partitions(num_partitions)
    duplicates = (
        ds.select_columns(["doc_id", "text"])
        .map_batches(_exact_hash_rows, fn_kwargs={"partitions": partitions}, batch_format="pyarrow")
        .groupby("_partition", num_partitions=partitions)
        .map_groups(_exact_duplicates, batch_format="pyarrow")
        .materialize()
    )
    return _left_join_unique(ds, duplicates, "doc_id", [_EXACT_KEEP], partitions).map_batches(
        _mark_exact, batch_format="pyarrow"
    )


# ---------------------------------------------------------------------------------------------
# Marking documents from a small table


def _table_of(ds: ray.data.Dataset) -> pa.Table:
    return pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))


def _append_looked_up(batch: pa.Table, *, table: pa.Table | None, key: str, values: list[str]) -> pa.Table:
    # The same key type on both sides (one may be large_string after a hash join upstream).
    index = None
    if table is not None:
        index = pc.index_in(batch[key], value_set=table[key].cast(batch.schema.field(key).type))
    for column in values:
        looked_up = pa.nulls(batch.num_rows, pa.string()) if index is None else table[column].take(index)
        batch = batch.append_column(column, looked_up)
    return batch


def _left_join_unique(
    ds: ray.data.Dataset, lookup: ray.data.Dataset, key: str, values: list[str], partitions: int
) -> ray.data.Dataset:
    """ds with lookup's `values` columns where ds[key] equals lookup's (unique) key, else null.

    The lookup tables of dedup list the repeated documents only; up to _BROADCAST_MAX_ROWS
    rows one goes to every block (a broadcast join) instead of shuffling the corpus for a hash
    join. `lookup` must be materialised (it is counted, then read)."""
    rows = lookup.count()
    if rows <= _BROADCAST_MAX_ROWS:
        table = _table_of(lookup).combine_chunks() if rows else None
        return ds.map_batches(
            _append_looked_up, fn_kwargs={"table": table, "key": key, "values": values}, batch_format="pyarrow"
        )
    return ds.join(lookup, join_type="left_outer", num_partitions=partitions, on=(key,))


# ---------------------------------------------------------------------------------------------
# MinHash signatures and LSH bands


def _lsh_error_integrals(threshold: float, num_perm: int):
    """For every (bands, rows) with bands * rows <= num_perm: the false-positive and
    false-negative areas under the LSH S-curve, as datasketch/RPv2 define them.

    The S-curve 1 - (1 - s^r)^b is a polynomial of degree b*r <= num_perm, so Gauss-Legendre
    quadrature with num_perm/2 + 1 nodes integrates it exactly.
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    pairs = np.array(
        [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float
    )
    b, r = pairs[:, :1], pairs[:, 1:]

    def integral(lo: float, hi: float, candidate: bool) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        p = 1 - (1 - s**r) ** b
        return ((p if candidate else 1 - p) * weights).sum(axis=1) * (hi - lo) / 2

    return pairs.astype(int), integral(0.0, threshold, True), integral(threshold, 1.0, False)


def optimal_bands_rows(
    threshold: float,
    num_perm: int,
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
) -> tuple[int, int]:
    """The (bands, rows) minimising the weighted false-positive + false-negative probability
    for a Jaccard threshold (datasketch's / RPv2's `optimal_param`): (9, 13) for 0.8 / 128."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm}")
    pairs, false_pos, false_neg = _lsh_error_integrals(threshold, num_perm)
    error = false_positive_weight * false_pos + false_negative_weight * false_neg
    bands, rows = pairs[int(np.argmin(error))]
    return int(bands), int(rows)


def _minhash_constants(num_perm: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    full_range = np.iinfo(np.uint64).max
    return {
        # Multiply-add-shift permutations of the 32-bit shingle hashes (below).
        "perm_a": rng.integers(0, full_range, size=num_perm, dtype=np.uint64) | np.uint64(1),
        "perm_b": rng.integers(0, full_range, size=num_perm, dtype=np.uint64),
        # Odd multipliers combining the word hashes of a shingle position by position.
        "shingle_coef": rng.integers(0, full_range, size=_MAX_NGRAM, dtype=np.uint64) | np.uint64(1),
    }


def minhash_signatures(
    docs_words: list[list[str]],
    ngram: int,
    perm_a: np.ndarray,
    perm_b: np.ndarray,
    shingle_coef: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of the word-ngram shingle sets of a batch of documents.

    Returns (signatures: uint32 [n_signed, num_perm], indices into docs_words of the signed
    documents); documents with fewer than `ngram` words get none.
    """
    if ngram > len(shingle_coef):
        raise ValueError(f"ngram must be at most {len(shingle_coef)}, got {ngram}")
    lengths = np.fromiter(map(len, docs_words), dtype=np.int64, count=len(docs_words))
    signed = np.flatnonzero(lengths >= ngram)
    num_perm = len(perm_a)
    if signed.size == 0:
        return np.empty((0, num_perm), np.uint32), signed

    # 64-bit word hashes (pandas' keyed SipHash: vectorised, and the same in every process,
    # unlike hash()), then every shingle as sum_k coef_k * hash(word_k) mod 2^64.
    words = np.array(list(chain.from_iterable(docs_words[i] for i in signed)), dtype=object)
    flat = pd.util.hash_array(words)
    num_windows = flat.size - ngram + 1
    windows = np.zeros(num_windows, np.uint64)
    for k in range(ngram):
        windows += flat[k : k + num_windows] * shingle_coef[k]

    # Keep the windows that lie inside one document.
    doc_lengths = lengths[signed]
    doc_starts = np.cumsum(doc_lengths) - doc_lengths
    shingles_per_doc = doc_lengths - ngram + 1
    owner = np.repeat(np.arange(signed.size), shingles_per_doc)
    offset_in_doc = np.arange(owner.size) - np.repeat(
        np.cumsum(shingles_per_doc) - shingles_per_doc, shingles_per_doc
    )
    # The top 32 bits of the multiplicative combination are the best mixed.
    shingle_hashes = windows[doc_starts[owner] + offset_in_doc] >> np.uint64(32)

    # Permutation i maps a 32-bit shingle hash x to the top 32 bits of (a_i * x + b_i) mod 2^64:
    # Dietzfelbinger's multiply-add-shift family, 2-independent like datasketch's
    # (a*x + b) mod (2^61 - 1), without its 64-bit modulo (4x the cost of the whole loop).
    signatures = np.full((signed.size, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    for start in range(0, shingle_hashes.size, _SHINGLE_CHUNK):
        chunk = shingle_hashes[start : start + _SHINGLE_CHUNK]
        chunk_owner = owner[start : start + _SHINGLE_CHUNK]
        # Permutation-major, so the per-document minimum runs along a row.
        permuted = np.multiply.outer(perm_a, chunk)
        permuted += perm_b[:, None]
        high_halves = permuted.view(np.uint32)[:, _HIGH_HALF::2]
        segment_starts = np.flatnonzero(np.r_[True, chunk_owner[1:] != chunk_owner[:-1]])
        segment_min = np.minimum.reduceat(high_halves, segment_starts, axis=1)
        np.minimum.at(signatures, chunk_owner[segment_starts], segment_min.T)
    return signatures, signed


def _band_keys(
    batch: pa.Table,
    *,
    ngram: int,
    bands: int,
    rows: int,
    partitions: int,
    perm_a: np.ndarray,
    perm_b: np.ndarray,
    shingle_coef: np.ndarray,
) -> pa.Table:
    """One (band key, doc_id, partition) row per band of each signed document; the key is the
    band index followed by its `rows` minhash values, so equal keys mean an identical band, and
    the partition (of `partitions`) is the band's first minhash value modulo `partitions`, so
    equal keys share a partition."""
    docs_words = [normalize_text(t).split() for t in _texts(batch)]
    # Only the permutations the bands read.
    used = bands * rows
    signatures, signed = minhash_signatures(docs_words, ngram, perm_a[:used], perm_b[:used], shingle_coef)
    keys = np.empty((signed.size, bands, rows + 1), dtype=np.uint32)
    keys[:, :, 0] = np.arange(bands, dtype=np.uint32)
    keys[:, :, 1:] = signatures.reshape(signed.size, bands, rows)
    width = 4 * (rows + 1)
    key_array = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), signed.size * bands, [None, pa.py_buffer(keys.tobytes())]
    ).cast(pa.binary())
    doc_ids = batch.column("doc_id").take(pa.array(np.repeat(signed, bands)))
    partition = (keys[:, :, 1] % np.uint32(partitions)).reshape(-1).astype(np.int32)
    return pa.table({_BAND_KEY: key_array, "doc_id": doc_ids, _BAND_PARTITION: partition})


def _partition_edges(band_rows: pa.Table) -> pa.Table:
    """The candidate edges of one band partition, which holds every row of each of its keys."""
    buckets = band_rows.group_by(_BAND_KEY, use_threads=False).aggregate([("doc_id", "list"), ("doc_id", "min")])
    # one chunk: _bucket_edges takes list parent indices as row numbers
    return _bucket_edges(pa.table({"_members": buckets["doc_id_list"],
                                   "_smallest": buckets["doc_id_min"]}).combine_chunks())


# ---------------------------------------------------------------------------------------------
# Connected components of the candidate graph (large-star / small-star)
#
# Edges are rows (_child, _parent) with _child > _parent. Alternating the two steps converges
# in O(log^2 n) rounds to stars whose centre is the component's smallest doc_id; a round in
# which neither step changes an edge is the fixed point. Each step is one hash aggregate by
# node, so a worker holds one partition of the edges, never the graph.

_EDGE_SCHEMA = pa.schema([("_child", pa.string()), ("_parent", pa.string())])


def _edges(child: pa.Array, parent: pa.Array, changed: pa.Array | None = None) -> pa.Table:
    edges = pa.table({"_child": child, "_parent": parent}).cast(_EDGE_SCHEMA)
    if changed is not None:
        edges = edges.append_column("_changed", pc.cast(changed, pa.int64()))
    return edges


def _bucket_edges(buckets: pa.Table) -> pa.Table:
    """Join every member of an LSH bucket to the bucket's smallest doc_id."""
    shared = buckets.filter(pc.greater(pc.list_value_length(buckets["_members"]), 1))
    members = pc.list_flatten(shared["_members"])
    smallest = shared["_smallest"].take(pc.list_parent_indices(shared["_members"]))
    is_edge = pc.not_equal(members, smallest)
    return _edges(members.filter(is_edge), smallest.filter(is_edge))


def _both_directions(edges: pa.Table) -> pa.Table:
    child, parent = edges["_child"].combine_chunks(), edges["_parent"].combine_chunks()
    return pa.table(
        {
            "_node": pa.concat_arrays([child, parent]),
            "_neighbour": pa.concat_arrays([parent, child]),
        }
    )


def _smaller(a: pa.Array, b: pa.Array) -> pa.Array:
    return pc.if_else(pc.less(a, b), a, b)


def _large_star(nodes: pa.Table) -> pa.Table:
    """Node u with neighbours N(u): every larger neighbour v gets the edge (v, min(N(u) + u))."""
    centre = _smaller(nodes["_smallest"], nodes["_node"])
    neighbours = nodes["_neighbours"]
    owner = pc.list_parent_indices(neighbours)
    v = pc.list_flatten(neighbours)
    u = nodes["_node"].take(owner)
    m = centre.take(owner)
    larger = pc.greater(v, u)
    u, m = u.filter(larger), m.filter(larger)
    return _edges(v.filter(larger), m, pc.not_equal(m, u))


def _small_star(children: pa.Table) -> pa.Table:
    """Node u with smaller neighbours N(u): u and every one of N(u) get the edge to min(N(u)).

    `_changed` on u's own edge carries whether the large-star step changed any edge of u, so
    one sum over this step's output tells whether the whole round changed anything."""
    smallest = children["_smallest"]
    parents = children["_parents"]
    others = pc.list_flatten(parents)
    other_smallest = smallest.take(pc.list_parent_indices(parents))
    moved = pc.not_equal(others, other_smallest)
    own = _edges(children["_child"], smallest, pc.greater(children["_large_changed"], 0))
    moved_edges = _edges(
        others.filter(moved),
        other_smallest.filter(moved),
        pa.repeat(True, pc.sum(moved).as_py() or 0),
    )
    return pa.concat_tables([own, moved_edges])


def _as_roots(edges: pa.Table) -> pa.Table:
    return pa.table({"doc_id": edges["_child"], _FUZZY_ROOT: edges["_parent"]})


def _connected_components(
    edges: ray.data.Dataset, partitions: int, max_rounds: int = _MAX_CC_ROUNDS
) -> ray.data.Dataset:
    """(doc_id, _fuzzy_root) for every document with at least one candidate edge."""
    for _ in range(max_rounds):
        edges = (
            edges.map_batches(_both_directions, batch_format="pyarrow")
            .groupby("_node", num_partitions=partitions)
            .aggregate(
                Unique("_neighbour", alias_name="_neighbours"),
                Min("_neighbour", alias_name="_smallest"),
            )
            .map_batches(_large_star, batch_format="pyarrow")
            .groupby("_child", num_partitions=partitions)
            .aggregate(
                Unique("_parent", alias_name="_parents"),
                Min("_parent", alias_name="_smallest"),
                Sum("_changed", alias_name="_large_changed"),
            )
            .map_batches(_small_star, batch_format="pyarrow")
            .materialize()
        )
        if not edges.sum("_changed"):
            return edges.map_batches(_as_roots, batch_format="pyarrow")
    raise RuntimeError(
        f"connected components did not converge in {max_rounds} rounds; large-star/small-star "
        "needs O(log^2 n), so the candidate graph is suspect"
    )


def _connected_components_on_driver(edges: ray.data.Dataset) -> ray.data.Dataset:
    """The same rows as _connected_components, computed in this process with scipy.

    RedPajama-V2 itself ran this step on one machine: the candidate graph has one edge per
    near-duplicate, far smaller than the corpus, and one union-find pass beats the
    O(log^2 n) shuffle rounds whenever the edges fit in memory."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    table = _table_of(edges)
    child = table["_child"].to_numpy(zero_copy_only=False)
    parent = table["_parent"].to_numpy(zero_copy_only=False)
    # Sorted unique ids: a component's smallest index is its smallest doc_id (code-point order
    # is UTF-8 byte order, the order Arrow's min uses in the distributed path).
    nodes, index = np.unique(np.concatenate([child, parent]), return_inverse=True)
    n = nodes.size
    graph = coo_matrix((np.ones(child.size, np.int8), (index[: child.size], index[child.size :])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    roots = smallest[labels]
    moved = roots != np.arange(n)
    return ray.data.from_arrow(
        pa.table({"doc_id": pa.array(nodes[moved], pa.string()),
                  _FUZZY_ROOT: pa.array(nodes[roots[moved]], pa.string())})
    )


# ---------------------------------------------------------------------------------------------
# Fuzzy dedup


def _mark_fuzzy(batch: pa.Table) -> pa.Table:
    root = batch[_FUZZY_ROOT].cast(pa.string())
    doc_id = batch["doc_id"].cast(pa.string())
    return (
        batch.drop_columns([_FUZZY_ROOT])
        .append_column("fuzzy_cluster", pc.coalesce(root, doc_id))
        .append_column("fuzzy_dup_of", root)
    )


def _singleton_clusters(batch: pa.Table) -> pa.Table:
    return batch.append_column("fuzzy_cluster", batch["doc_id"].cast(pa.string())).append_column(
        "fuzzy_dup_of", pa.nulls(batch.num_rows, pa.string())
    )


def fuzzy_dedup(
    ds: ray.data.Dataset,
    *,
    threshold: float = 0.7,
    num_perm: int = 128,
    ngram: int = 13,
    bands: int | None = None,
    rows: int | None = None,
    seed: int = 42,
    num_partitions: int | None = None,
    driver_components_max_edges: int = 2_000_000,
) -> ray.data.Dataset:
    """Add `fuzzy_cluster` (the cluster's smallest doc_id, a document's own id when it has no
    near duplicate) and `fuzzy_dup_of` (the kept doc_id for removed documents, null for kept).

    bands x rows default to optimal_bands_rows(threshold, num_perm); `seed` fixes the MinHash
    permutations, so a rerun marks the same documents. num_partitions (default: Ray Data's
    default_hash_shuffle_parallelism) sets the shuffle partitions: size it so that one
    partition of the corpus fits in a worker. Candidate graphs of at most
    `driver_components_max_edges` edges get their connected components on the driver (about
    100 bytes per edge); larger ones run the distributed large-star/small-star rounds.
    """
    if not 1 <= ngram <= _MAX_NGRAM:
        raise ValueError(f"ngram must be between 1 and {_MAX_NGRAM}, got {ngram}")
    if (bands is None) != (rows is None):
        raise ValueError("give both bands and rows, or neither (then they follow threshold)")
    if bands is None:
        bands, rows = optimal_bands_rows(threshold, num_perm)
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(
            f"bands x rows = {bands} x {rows} must be positive and use at most num_perm={num_perm}"
        )
    partitions = _shuffle_partitions(num_partitions)
    band_rows = ds.select_columns(["doc_id", "text"]).map_batches(
        _band_keys,
        batch_format="pyarrow",
        batch_size=_SIGNATURE_BATCH,
        fn_kwargs={"ngram": ngram, "bands": bands, "rows": rows, "partitions": partitions}
        | _minhash_constants(num_perm, seed),
    )
    edges = (
        band_rows.groupby(_BAND_PARTITION, num_partitions=partitions)
        .map_groups(_partition_edges, batch_format="pyarrow")
        .materialize()
    )
    num_edges = edges.count()
    if num_edges == 0:
        return ds.map_batches(_singleton_clusters, batch_format="pyarrow")
    if num_edges <= driver_components_max_edges:
        roots = _connected_components_on_driver(edges)
    else:
        roots = _connected_components(edges, partitions)
    return _left_join_unique(ds, roots.materialize(), "doc_id", [_FUZZY_ROOT], partitions).map_batches(
        _mark_fuzzy, batch_format="pyarrow"
    )
