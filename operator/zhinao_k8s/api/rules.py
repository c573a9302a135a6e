"""Every rule a cluster applies to a pipeline's names and URIs, in one place.

The spec models (v1alpha1.py) call these checks, the CRD generator (crd.py) turns the ones CEL can
say into `x-kubernetes-validations`, and the renderer names objects with `job_name`, so the CLI,
the API server and the operator refuse exactly the same things. Pure: no I/O.
"""

import ipaddress
import re
from urllib.parse import urlsplit

# Kubernetes object names (apimachinery validation): a DNS-1123 label may start with a digit, a
# DNS-1035 label may not. Kubeflow's webhook requires PyTorchJob names to be DNS-1035 labels.
DNS_1123_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_LABEL = 63

MAX_PIPELINE_NAME = 40
MAX_STAGE_NAME = 20
MAX_STAGES = 32
MAX_INPUTS = 16
MAX_URI = 1024
"""These bound the CEL rules' cost estimate (the API server refuses a CRD whose rules may cost too much)."""

# An image reference: [registry[:port]/]path[:tag][@sha256:digest], path components lowercase.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = (
    rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)

PATTERN_REASONS = {
    DNS_1123_LABEL: "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    DNS_1035_LABEL: "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter "
    "(Kubeflow refuses PyTorchJob names that start with a digit)",
    IMAGE_REFERENCE: "is not an image reference ([registry/]repository[:tag][@sha256:digest], repository in lowercase)",
}
"""The sentence shown for a value that does not match a pattern above."""


def job_name(pipeline: str, stage: str) -> str:
    """The stage's PyTorchJob: `<pipeline>-<stage>`."""
    return f"{pipeline}-{stage}"


def longest_replica_name(job: str, replicas: int) -> str:
    """The longest Service (and pod) name the training operator derives from a job: `<job>-master-0`,
    or `<job>-worker-<replicas-2>` for the last of replicas-1 workers."""
    return f"{job}-worker-{replicas - 2}" if replicas > 1 and len(str(replicas - 2)) > 1 else f"{job}-master-0"


def replica_name_problem(pipeline: str, stage: str, replicas: int) -> str | None:
    name = longest_replica_name(job_name(pipeline, stage), replicas)
    if len(name) <= MAX_LABEL:
        return None
    return (
        f"the training operator would create a Service named {name!r} ({len(name)} characters, at most "
        f"{MAX_LABEL}): shorten metadata.name or the stage name"
    )


_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_problem(key: str, value: str) -> str | None:
    """Kubernetes label syntax: `[prefix/]name` keys, values of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "label key prefix must be a DNS subdomain"
    if len(name) > MAX_LABEL or not _LABEL_NAME.match(name):
        return (
            "label key must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    if value and (len(value) > MAX_LABEL or not _LABEL_NAME.match(value)):
        return "label value must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


# ---------------------------------------------------------------------------------------------
# Resource quantities
# ---------------------------------------------------------------------------------------------

# A non-negative Kubernetes quantity: decimal number, then a binary (Ki..Ei), decimal (m, k..E)
# or exponent suffix. Signs are refused: a negative request is never meant.
_QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][-+]?\d+)?$")


def quantity_problem(value: str) -> str | None:
    if not _QUANTITY.match(value):
        return f"{value[:40]!r} is not a Kubernetes quantity (for example 500m, 4, 16Gi)"
    if not any(c in "123456789" for c in re.split(r"[a-zA-Z]", value, maxsplit=1)[0]):
        return "must be greater than zero"
    return None


# ---------------------------------------------------------------------------------------------
# URIs
# ---------------------------------------------------------------------------------------------

CREDENTIALS_IN_URI = "must not contain credentials (user:password@); use storage.credentials.secretRef"


def _has_userinfo(value: str) -> bool:
    _, sep, rest = value.partition("://")
    return bool(sep) and "@" in rest.split("/", 1)[0]


def bucket_problem(bucket: str) -> str | None:
    """S3 bucket naming rules (the ones every S3 server enforces)."""
    if not 3 <= len(bucket) <= 63:
        return "bucket name must be 3 to 63 characters"
    if not re.match(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$", bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        return "bucket name must be lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    try:
        ipaddress.ip_address(bucket)
    except ValueError:
        return None
    return "bucket name must not look like an IP address"


def uri_problem(value: str, schemes: tuple[str, ...] = ("s3", "file")) -> str | None:
    """Why `value` is not a usable storage URI, or None. Never echoes a value that holds credentials."""
    if _has_userinfo(value):
        return CREDENTIALS_IN_URI
    if any(c.isspace() or ord(c) < 32 for c in value):
        return "must not contain whitespace or control characters"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in schemes:
        return f"{value[:80]!r} must start with " + " or ".join(f"{s}://" for s in schemes)
    if scheme == "stage":
        return None if re.match(DNS_1123_LABEL, rest) else f"{value!r}: stage://<name> must name a stage"
    bucket, _, path = rest.partition("/") if scheme == "s3" else ("", "", rest)
    if scheme == "s3" and (problem := bucket_problem(bucket)):
        return problem
    segments = [s for s in path.split("/") if s]
    if scheme == "file" and not segments:
        return "file:// URI has an empty path"
    if ".." in segments:
        return "must not contain '..' path segments"
    if any(c in path for c in "?#"):
        return "must not contain '?' or '#'"
    return None


def endpoint_problem(value: str) -> str | None:
    """Why `value` is not an S3 endpoint URL (http(s)://host[:port]), or None."""
    if _has_userinfo(value):
        return CREDENTIALS_IN_URI
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError:
        return f"{value[:80]!r} is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{value[:80]!r} must be http://host[:port] or https://host[:port]"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def normalized_prefix(uri: str) -> str:
    """A URI as a prefix for overlap checks: no trailing slash, no `.` segments."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://" + "/".join(s for s in rest.split("/") if s and s != ".")


def overlaps(a: str, b: str) -> bool:
    """One URI equals the other or lies under it."""
    a, b = normalized_prefix(a), normalized_prefix(b)
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
