"""The closed set of reasons a record can be rejected for, and how img2dataset's free-text
errors map onto them. One module, so every report speaks the same words."""

from __future__ import annotations

import re
from enum import Enum


class IngestReason(str, Enum):
    """Why an input row of a URL list did not become a raw sample."""

    INVALID_URL = "invalid_url"              # malformed, no host, or a scheme other than http(s)
    BLOCKED_ADDRESS = "blocked_address"      # host is/resolves to a private, loopback, link-local... address
    BLOCKED_REDIRECT = "blocked_redirect"    # a redirect hop the URL policy refuses (the hop is in the detail)
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more hops than allowed, or a loop
    DNS_FAILURE = "dns_failure"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_ERROR = "connection_error"    # reset, unreachable, TLS, ... (detail kept)
    TIMEOUT = "timeout"
    HTTP_404 = "http_404"
    HTTP_403 = "http_403"
    HTTP_429 = "http_429"                    # rate limited, still after honouring Retry-After
    HTTP_5XX = "http_5xx"                    # server error (detail has the code)
    HTTP_ERROR = "http_error"                # any other non-2xx status (detail has the code)
    BODY_TOO_LARGE = "body_too_large"        # Content-Length or the bytes read passed the cap
    DOWNLOAD_DEADLINE = "download_deadline"  # the whole download (every hop, every wait) took too long
    ROBOTS_DISALLOWED = "robots_disallowed"  # X-Robots-Tag: noai / noindex / ...
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"            # e.g. HTML served as .jpg
    DECODE_ERROR = "decode_error"            # truncated or corrupt image data
    IMAGE_TOO_LARGE = "image_too_large"      # decompression bomb guard
    SHARD_FAILED = "shard_failed"            # img2dataset gave up on the whole shard
    OTHER = "other"                          # anything unrecognised; the detail says what


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
