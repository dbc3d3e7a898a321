"""Duplicates inside the corpus (``corpus_dedup.remove``) as keyed Beam joins.

Input: one ``(key, shard, index, sha256, phash)`` per kept pair, the pHash as
:func:`wire_phash` gives it. Output: one
``(shard, (index, kept key, pHash distance, kind))`` per pair to drop, sent back to its shard.
In every group the first key (in key order) is kept.

* ``exact`` — GroupByKey on sha256; a group is one image's copies.
* ``near`` — pHash within ``corpus_dedup.radius`` bits, grouped transitively:

  1. pairs with the *same* pHash: GroupByKey on it; each member is linked to the group's first
     key (a star, so a thousand copies of a blank image are 999 links, not half a million),
     and only that first key goes on to step 2;
  2. candidate pairs by multi-index hashing: the 64 bits are cut into radius + 1 blocks, and
     two hashes within the radius agree exactly on at least one block (pigeonhole), so a
     GroupByKey on (block number, block value) brings every such pair together; within a
     bucket the exact distances are computed with numpy, a chunk at a time;
  3. groups by *min-label propagation* for a fixed number of rounds
     (``corpus_dedup.rounds``, default 8): every linked pair starts labelled with its own key,
     and each round takes the smallest label among itself and its neighbours (a CoGroupByKey
     and a CombinePerKey). After R rounds a pair's label is the smallest key within R links;
     the pair is dropped when that is not its own key, as a duplicate of the labelled pair.
     Where every group spans at most R links (pHash near-duplicate chains are short) this is
     exactly the connected-component rule of :func:`dedup.intra.duplicate_groups`; a longer
     chain may name, as the kept key, a pair that is itself dropped further along.

Memory: a group of one sha256 or one pHash, and one bucket (a chunk of its pairwise
distances at a time), per worker. Bucket sizes grow with the corpus as N / 2^(64/(r+1)) on
uniform hashes: at radius 4 (13-bit blocks) about 120 hashes a bucket per million distinct
hashes, and the pairwise work grows with the square of that; at billions of pairs a smaller
radius (longer blocks) keeps it in hand.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from dedup.phash import to_signed

DEFAULT_ROUNDS = 8
_MASK = (1 << 64) - 1
_CHUNK_CELLS = 1 << 22  # 4 M distances (≈ 40 MB with the XOR) per chunk of a bucket


def blocks(radius: int) -> list[tuple[int, int]]:
    """(shift, width) of the radius + 1 blocks the 64 pHash bits are cut into (at most 64)."""
    count = min(radius + 1, 64)
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, width))
        shift += width
    return out


def wire_phash(phash: int | None) -> int | None:
    """The pHash as Beam carries it: the int64 bit pattern (Beam's integer coder is signed
    64-bit, and half of all pHashes are >= 2^63). The input of both transforms uses it."""
    return None if phash is None else to_signed(int(phash))


def _distance(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return ((int(a) ^ int(b)) & _MASK).bit_count()


def _exact_drops(sha_items):
    _, items = sha_items
    items = sorted(items)  # (key, shard, index, phash): key order
    kept_key, _, _, kept_phash = items[0]
    for key, shard, index, phash in items[1:]:
        yield shard, (index, kept_key, _distance(phash, kept_phash), "exact")


class ExactDuplicates(beam.PTransform):
    def expand(self, kept):
        return (
            kept
            | "With sha256" >> beam.Filter(lambda k: k[3] is not None)
            | "By sha256" >> beam.Map(lambda k: (k[3], (k[0], k[1], k[2], k[4])))
            | "Copies per image" >> beam.GroupByKey()
            | "Exact drops" >> beam.FlatMap(_exact_drops)
        )


def _node(item):
    key, shard, index, sha256, phash = item
    return key, phash, sha256, shard, index


def _same_phash(phash_nodes):
    """Star links from the first key to every other node with the same pHash; the first node."""
    _, nodes = phash_nodes
    nodes = sorted(nodes)
    first = nodes[0]
    links = [(first, other) for other in nodes[1:]]
    return first, links


def _bucket_keys(node, layout):
    phash = int(node[1]) & _MASK
    for number, (shift, width) in enumerate(layout):
        yield (number, (phash >> shift) & ((1 << width) - 1)), node


def _bucket_links(bucket_nodes, radius: int):
    """Every pair in one bucket within ``radius``: (smaller node, larger node) by key."""
    _, nodes = bucket_nodes
    nodes = sorted(nodes)
    if len(nodes) < 2:
        return
    hashes = np.array([int(n[1]) for n in nodes], dtype=np.int64).view(np.uint64)
    chunk = max(1, _CHUNK_CELLS // len(nodes))  # rows of the distance matrix held at once
    for start in range(0, len(nodes), chunk):
        block = hashes[start:start + chunk]
        distances = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distances <= radius)
        for row, col in zip(rows.tolist(), cols.tolist()):
            a = start + row
            if a < col:
                yield nodes[a], nodes[col]


def _label_round(node_joined):
    node, joined = node_joined
    label = min(joined["label"])
    yield node, label
    for neighbour in joined["neighbours"]:
        yield neighbour, label


def _near_drops(node_joined):
    _, joined = node_joined
    node = joined["node"][0]
    label = joined["label"][0]
    key, phash, sha256, shard, index = node
    label_key, label_phash, label_sha = label
    if label_key != key:
        kind = "exact" if sha256 is not None and sha256 == label_sha else "near"
        yield shard, (index, label_key, _distance(phash, label_phash), kind)


class NearDuplicates(beam.PTransform):
    def __init__(self, radius: int, rounds: int = DEFAULT_ROUNDS):
        super().__init__()
        self.radius, self.rounds = radius, rounds

    def expand(self, kept):
        nodes = kept | "With pHash" >> beam.Filter(lambda k: k[4] is not None) | "Node" >> beam.Map(_node)
        same = (
            nodes
            | "By pHash" >> beam.Map(lambda n: (n[1], n))
            | "Copies per pHash" >> beam.GroupByKey()
            | "Same-pHash stars" >> beam.Map(_same_phash)
        )
        star_links = same | "Star links" >> beam.FlatMap(lambda first_links: first_links[1])
        firsts = same | "Distinct pHashes" >> beam.Map(lambda first_links: first_links[0])
        bucket_links = (
            firsts
            | "Buckets" >> beam.FlatMap(_bucket_keys, blocks(self.radius))
            | "Per bucket" >> beam.GroupByKey()
            | "Within radius" >> beam.FlatMap(_bucket_links, self.radius)
            | "Once per pair" >> beam.Distinct()  # a pair can agree on several blocks
        )
        links = (star_links, bucket_links) | "Links" >> beam.Flatten()
        neighbours = links | "Both ways" >> beam.FlatMap(lambda ab: [(ab[0][0], ab[1][0]), (ab[1][0], ab[0][0])])
        linked = (
            links
            | "Ends" >> beam.FlatMap(lambda ab: ab)
            | "Linked nodes" >> beam.Distinct()
        )
        labels = linked | "Own label" >> beam.Map(lambda n: (n[0], (n[0], n[1], n[2])))
        for r in range(self.rounds):
            labels = (
                {"label": labels, "neighbours": neighbours}
                | f"Round {r} join" >> beam.CoGroupByKey()
                | f"Round {r} offers" >> beam.FlatMap(_label_round)
                | f"Round {r} smallest" >> beam.CombinePerKey(min)
            )
        return (
            {"node": linked | "Node by key" >> beam.Map(lambda n: (n[0], n)), "label": labels}
            | "Join labels" >> beam.CoGroupByKey()
            | "Near drops" >> beam.FlatMap(_near_drops)
        )
