"""PII: emails, IPs and phone numbers become special tokens, in English and Chinese text."""

import pytest

from zhinao.config.data import PiiConfig
from zhinao.data.io import Doc
from zhinao.data.pii import Pii, scrub

CFG = PiiConfig()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mail john.doe@example.com today.", "Mail <|email|> today."),
        ("邮箱zhang@school.example，谢谢。", "邮箱<|email|>，谢谢。"),
        ("Server at 192.168.1.20 is down.", "Server at <|ip|> is down."),
        ("IPv6 fe80::1ff:fe23:4567:890a works", "IPv6 <|ip|> works"),
        ("手机13812345678，电话010-12345678。", "手机<|phone|>，电话<|phone|>。"),
        ("Call (555) 123-4567 or +44 20 7946 0958.", "Call <|phone|> or <|phone|>."),
        (
            "In 1999 we sold 12345 items; a::b stays; 3.14 stays.",
            "In 1999 we sold 12345 items; a::b stays; 3.14 stays.",
        ),
    ],
)
def test_scrub(text, expected):
    assert scrub(text, CFG)[0] == expected


def test_step_rewrites_text_and_bytes_and_never_drops():
    d = Doc(1, "Write to a@b.example now.", "webpages")
    assert Pii(PiiConfig(email_token="[EMAIL]"))(d) is None
    assert d.text == "Write to [EMAIL] now." and d.nbytes == len(d.text)
