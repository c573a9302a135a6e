"""PII replaced by special tokens (report section 2.1.2: regexes for email, IP address, phone)."""

import re

from zhinao.config.data import PiiConfig
from zhinao.data.io import Doc
from zhinao.data.steps import Drop

EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![A-Za-z0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![A-Za-z0-9]|\.\d)")
# Full and '::'-compressed IPv6 with at least three groups, so that 'a::b' in code is spared.
IPV6_RE = re.compile(
    r"(?<![\w:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
    r"|(?:[0-9A-Fa-f]{1,4}:){2,6}(?::[0-9A-Fa-f]{1,4}){1,5}"
    r"|(?:[0-9A-Fa-f]{1,4}:){1,2}:(?:[0-9A-Fa-f]{1,4}:){1,4}[0-9A-Fa-f]{1,4})(?![\w:])"
)
# Neighbours are checked against ASCII only: Chinese text runs straight into numbers ("手机13812345678").
PHONE_RE = re.compile(
    r"(?<![A-Za-z0-9+])(?:"
    r"(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}"  # Chinese mobile
    r"|0\d{2,3}-\d{7,8}"  # Chinese landline with area code
    r"|\+\d{1,3}[- .]?\(?\d{1,4}\)?(?:[- .]?\d{2,4}){2,4}"  # international +CC
    r"|\(\d{3}\)\s?\d{3}[-.]\d{4}|\d{3}[-.]\d{3}[-.]\d{4}"  # North American
    r")(?![A-Za-z0-9])"
)


def scrub(text: str, cfg: PiiConfig) -> tuple[str, int]:
    """Text with PII replaced, and the number of replacements. Emails go first: their host may
    look like an IP address."""
    n_total = 0
    for pattern, token in (
        (EMAIL_RE, cfg.email_token),
        (IPV6_RE, cfg.ip_token),
        (IPV4_RE, cfg.ip_token),
        (PHONE_RE, cfg.phone_token),
    ):
        text, n = pattern.subn(token, text)
        n_total += n
    return text, n_total


class Pii:
    names = ("pii",)

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg

    def __call__(self, doc: Doc) -> Drop | None:
        # Cheap pre-checks: most documents contain no '@' and no long digit run.
        text = doc.text
        if "@" in text or any(c.isdigit() for c in text) or "::" in text:
            new, n = scrub(text, self.cfg)
            if n:
                doc.set_text(new)
        return None
