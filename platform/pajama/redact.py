"""Credentials out of URIs before they are written to artifacts or logs.

A tracking or storage URI may carry a secret: a user and password (https://user:pass@host), or a
signed query (S3/GCS presigned URLs: X-Amz-Signature, X-Goog-Signature; Azure SAS: sig; tokens).
`redact_uri` keeps everything that says where (scheme, host, port, path) and masks the rest.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query parameters that carry a credential (compared in lower case).
SECRET_PARAMS = {
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
    "sig", "signature", "token", "access_token", "api_key", "apikey", "key", "password", "secret",
}


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo and secret query parameters masked; other strings unchanged."""
    parts = urlsplit(uri)
    if not parts.scheme or not (parts.netloc or parts.query):
        return uri  # a path, or a scheme without authority (sqlite:///..., models:/...)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = urlencode(
        [(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe=REDACTED,
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
