"""How img2dataset's and our fetcher's free-text errors map onto the closed set of ingest
reasons (:class:`infra.contract.IngestReason`), and which of them are worth a retry."""

from __future__ import annotations

import re

from infra.contract import IngestReason

# Messages our StrictResizer returns start with "litflow:<reason>:" so they map exactly.
_OWN_PREFIX = re.compile(r"^litflow:(?P<reason>[a-z_0-9]+):?\s*(?P<detail>.*)$", re.S)

# (pattern on img2dataset/urllib's message, reason), first match wins
_PATTERNS: tuple[tuple[re.Pattern, IngestReason], ...] = tuple(
    (re.compile(p, re.I), r)
    for p, r in (
        (r"HTTP Error 404", IngestReason.HTTP_404),
        (r"HTTP Error 403", IngestReason.HTTP_403),
        (r"HTTP Error 429", IngestReason.HTTP_429),
        (r"HTTP Error 5\d\d", IngestReason.HTTP_5XX),
        (r"HTTP Error \d{3}", IngestReason.HTTP_ERROR),
        (r"X-Robots-Tag", IngestReason.ROBOTS_DISALLOWED),
        (r"Connection refused|Errno 111", IngestReason.CONNECTION_REFUSED),
        (r"timed out|timeout", IngestReason.TIMEOUT),
        (r"Name or service not known|nodename nor servname|getaddrinfo|Errno -[235]\b|Temporary failure in name resolution", IngestReason.DNS_FAILURE),
        (r"urlopen error|Connection reset|Remote end closed|RemoteDisconnected|IncompleteRead|SSL|Errno", IngestReason.CONNECTION_ERROR),
        (r"image area too large|CV_IO_MAX_IMAGE_PIXELS", IngestReason.IMAGE_TOO_LARGE),
        (r"Image decoding error|decod", IngestReason.DECODE_ERROR),
        (r"unknown url type|no host given", IngestReason.INVALID_URL),
    )
)


def classify_error(message: str | None) -> IngestReason:
    """Map an img2dataset error message to a reason; unknown text becomes OTHER."""
    text = (message or "").strip()
    own = _OWN_PREFIX.match(text)
    if own:
        try:
            return IngestReason(own.group("reason"))
        except ValueError:
            return IngestReason.OTHER
    for pattern, reason in _PATTERNS:
        if pattern.search(text):
            return reason
    return IngestReason.OTHER


def own_error(reason: IngestReason, detail: str = "") -> str:
    """The message a litflow check hands to img2dataset, recoverable by classify_error."""
    return f"litflow:{reason.value}: {detail}".rstrip()


# failures a later attempt may not meet: what ``--retry-failed`` downloads again
TRANSIENT_REASONS = frozenset({
    IngestReason.CONNECTION_REFUSED, IngestReason.CONNECTION_ERROR, IngestReason.TIMEOUT,
    IngestReason.DOWNLOAD_DEADLINE, IngestReason.HTTP_429, IngestReason.HTTP_5XX, IngestReason.DNS_FAILURE,
    IngestReason.SHARD_FAILED,
})
