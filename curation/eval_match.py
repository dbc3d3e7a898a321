"""Eval de-duplication of one kept pair: pHash proposes, geometric verification decides.

Candidates are the eval images whose pHash (or mirror pHash) is within the radius; with
``verify`` on (the default), each of the nearest ``max_candidates`` is confirmed by
:mod:`dedup.verify` (local features, a similarity transform, the aligned images compared)
and the pair is rejected for the first one confirmed, or undecided. pHash alone puts
distinct clip-art at distance 0, so it only proposes.

The eval index is loaded once per worker from its folder rather than shipped as a pickled
side input: every worker reads the same files and builds the search tables where they are
used. Memory: the index (two 64-bit hashes per eval image, plus its search tables), its stored
keypoints (memory-mapped, :mod:`dedup.feature_store`) and the eval images' features, cached per
worker as candidates come up: bounded by the eval sets, not by the corpus.
"""

from __future__ import annotations

from curation.config import EvalDedupRules
from infra.contract import KEPT, REJECTED, CurationReason


class EvalMatcher:
    """``matcher(record, image_bytes) -> record``, rejected as ``eval_duplicate`` when it is one."""

    def __init__(self, rules: EvalDedupRules):
        from dedup.index import EvalIndex

        self.rules = rules
        self.index = EvalIndex.load(rules.index, rules.mode)
        self.verifier = None
        if rules.verify:
            from dedup.feature_store import FeatureStore
            from dedup.verify import Verifier

            self.verifier = Verifier(stored=FeatureStore(rules.index))

    @staticmethod
    def wanted(rules: EvalDedupRules) -> bool:
        return bool(rules.index) and rules.mode != "none"

    def _confirmed(self, matches, image_bytes, phash: int):
        """The nearest match that verification confirms (or cannot decide), with its verdict.

        Each is compared the way(s) round its hashes say (:meth:`dedup.index.EvalIndex.ways`).
        An image that cannot be read now (corpus or eval) gets no verdict: pHash's stands.
        """
        from dedup.verify import Verifier

        query = Verifier.corpus_features(image_bytes)
        for match in matches[:self.rules.max_candidates]:
            verdict = self.verifier.try_check(query, self.index.refs[match.image], match.distance,
                                              self.index.ways(phash, match.image, self.rules.radius))
            if verdict is None:
                return match, None
            if Verifier.decide(verdict):
                return match, verdict
        return None, None

    def __call__(self, record: dict, image_bytes: bytes) -> dict:
        if record["status"] != KEPT or record["phash"] is None:
            return record
        matches = self.index.match(record["phash"], self.rules.radius)
        verdict = None
        if matches and self.verifier is not None:
            best, verdict = self._confirmed(matches, image_bytes, record["phash"])
            matches = [best] if best is not None else []
        if not matches:
            return record
        from dedup.index import eval_duplicate_fields

        best = min(matches)
        return {**record, **eval_duplicate_fields(matches), "status": REJECTED,
                "reason": CurationReason.EVAL_DUPLICATE.value,
                "detail": f"{best.signal} distance {best.distance} to {best.eval_set}/{best.split}/{best.eval_key}"
                          + (f" (+{len(matches) - 1} more)" if len(matches) > 1 else "")
                          + (f"; {verdict.summary()}" if verdict is not None else "")}
