"""Preparation: URL lists, sensitive keywords, language ID and the English-page-with-Chinese rule."""

import pytest

from zhinao.config.data import KeywordFilterConfig, LangIdConfig, UrlFilterConfig
from zhinao.data.io import Doc
from zhinao.data.prepare import KeywordFilter, LangId, UrlFilter, trie_regex, url_host


def doc(text="Some text.", url=None, source="webpages"):
    return Doc(1, text, source, url)


@pytest.mark.parametrize(
    "url, dropped",
    [
        ("http://casino-bonus.example/promo", True),  # shipped example list
        ("https://www.casino-bonus.example/", True),  # subdomains match
        ("https://notcasino-bonus.example/", False),  # ...but not a longer host
        ("http://spam-seo.example/ads/banner", True),  # entry with a path: substring
        ("http://spam-seo.example/blog", False),
        ("https://docs.python.org/3/", False),
        ("not a url at all", False),
    ],
)
def test_url_blacklist(url, dropped):
    assert (UrlFilter(UrlFilterConfig())(doc(url=url)) is not None) is dropped


def test_whitelist_wins_and_marks_the_page():
    f = UrlFilter(UrlFilterConfig(blacklist=["example.com"], whitelist=["good.example.com"]))
    d = doc(url="https://good.example.com/a")
    assert f(d) is None and d.whitelisted
    assert f(doc(url="https://bad.example.com/a")).reason == "blacklisted_host:bad.example.com"
    assert url_host("HTTP://WWW.Example.COM:80/x") == "www.example.com"


def test_keywords_zh_and_en_case_insensitive():
    k = KeywordFilter(KeywordFilterConfig())
    assert k(doc("Try our Online CASINO tonight.")).reason == "sensitive_keyword:online casino"
    assert k(doc("这里有网络赌场的广告。")).reason == "sensitive_keyword:网络赌场"
    assert k(doc("A casino is a building.")) is None
    assert k(doc("online casino", url=None)) is not None
    white = doc("online casino")
    white.whitelisted = True
    assert k(white) is None
    two = KeywordFilter(KeywordFilterConfig(keywords=["foo", "bar"], min_hits=2))
    assert two(doc("foo only")) is None and two(doc("foo and bar")) is not None


def test_trie_regex_matches_like_an_alternation():
    words = ["ab", "abc", "abd", "x.y", "网络"]
    r = trie_regex(words)
    assert r.findall("zabd ab abcd x.y xzy 网络") == ["abd", "ab", "abc", "x.y", "网络"]
    assert trie_regex([]).search("anything") is None


@pytest.mark.parametrize(
    "text, step",
    [
        ("The committee agreed to postpone the vote until the final report had been reviewed.", None),
        ("委员会同意推迟表决，等所有成员审阅完最终报告后再作决定。", None),
        ("Die Stadt liegt am Ufer eines breiten Flusses, und im Sommer kommen viele Besucher.", "lang_id"),
        ("Le village se trouve au pied de la montagne et les habitants vendent leurs fromages.", "lang_id"),
        (
            "The committee agreed to postpone the vote until the 最终报告 had been reviewed by all.",
            "english_with_chinese",
        ),
    ],
)
def test_language_id(text, step):
    drop = LangId(LangIdConfig())(doc(text))
    assert (drop.step if drop else None) == step


def test_code_skips_language_id():
    assert LangId(LangIdConfig())(doc("def f(x):\n    return x  # 注释", source="code")) is None


def test_a_fasttext_model_plugs_in(monkeypatch, tmp_path):
    """langId.fasttextModel loads through the `fasttext` package (stubbed here: not installed)."""
    import sys
    import types

    class Model:
        def predict(self, text, k=1):
            assert "\n" not in text
            return (["__label__ja"] if "です" in text else ["__label__en"]), [0.97]

    loaded = []
    stub = types.SimpleNamespace(load_model=lambda path: loaded.append(path) or Model())
    monkeypatch.setitem(sys.modules, "fasttext", stub)
    lid = LangId(LangIdConfig(fasttext_model="lid.176.bin"), model_path=str(tmp_path / "lid.176.bin"))
    assert loaded == [str(tmp_path / "lid.176.bin")]
    assert lid(doc("これはペンです。\nはい。")).reason == "language:ja"
    assert lid(doc("A plain English line.")) is None
