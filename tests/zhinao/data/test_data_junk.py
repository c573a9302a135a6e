"""The paragraph junk classifier: seed model, train/save/load, and the document's fate from labels."""

import numpy as np

from zhinao.config.data import JunkConfig, QualityConfig
from zhinao.data.io import Doc
from zhinao.data.junk import HashedLogReg, Junk, Quality, junk_fate, load_scorer, seed_model

JUNK = [
    "Home | Blog | Shop | Contact",
    "首页 | 新闻 | 体育 | 娱乐",
    "Subscribe to our channel for more videos",
    "上一页 下一页",
]
GOOD = [
    "The function returns a list of strings, one for each line of the input file.",
    "这个模块提供了读取和写入压缩文件的函数。",
    "If the argument is a string, it is parsed as a decimal number.",
]


def test_seed_model_separates_unseen_examples():
    m = seed_model()
    assert (m.predict_proba(JUNK) > 0.5).all()
    assert (m.predict_proba(GOOD) < 0.5).all()


def test_train_save_load_round_trip(tmp_path):
    m = HashedLogReg.train(
        ["buy now cheap", "great deal buy", "the cat sleeps", "rain falls softly"], [1, 1, 0, 0], n_features=1 << 12
    )
    path = str(tmp_path / "m.npz")
    m.save(path)
    back = HashedLogReg.load(path)
    texts = ["buy cheap now", "the rain sleeps"]
    np.testing.assert_allclose(back.predict_proba(texts), m.predict_proba(texts), rtol=1e-6)
    assert back.predict_proba(texts)[0] > 0.5 > back.predict_proba(texts)[1]


def test_fate_from_label_sequence():
    cfg = JunkConfig()
    assert junk_fate([True, True, False], [10, 10, 10], cfg) == (True, [False, False, False])  # mostly junk
    assert junk_fate([True, False, True, False, True], [5, 50, 5, 50, 5], cfg) == (
        False,
        [False, True, True, True, False],
    )
    assert junk_fate([True, False], [5, 50], JunkConfig(trim_edges=False)) == (False, [True, True])


def test_step_trims_edges_and_drops_junk_pages():
    step = Junk(JunkConfig())
    page = Doc(
        1,
        "\n".join(
            [
                "Home | About Us | Contact | Privacy Policy",
                *GOOD,
                "Copyright © 2023 Example Media Inc. All rights reserved.",
            ]
        ),
        "webpages",
    )
    assert step(page) is None
    assert page.text == "\n".join(GOOD)
    assert step(Doc(2, "\n".join(JUNK), "webpages")).reason == "junk_paragraphs"
    assert step(Doc(3, "\n".join(JUNK), "code")) is None


def length_scorer(texts):
    """A quality hook as a user would plug one: `module:callable` taking texts, returning scores."""
    return [min(1.0, len(t) / 40) for t in texts]


def test_quality_hook_takes_a_callable_or_a_model():
    hook = Quality(
        QualityConfig(model="test_data_junk:length_scorer"), load_scorer("test_data_junk:length_scorer", None)
    )
    assert hook(Doc(1, "A long enough document to count as good text.", "webpages")) is None
    assert hook(Doc(2, "Too short.", "webpages")).reason == "low_quality"

    model = HashedLogReg.train(
        ["good text here", "fine clear prose"] * 3 + ["bad bad bad", "spam spam"] * 3,
        [1, 1] * 3 + [0, 0] * 3,
        n_features=1 << 10,
    )
    q = Quality(QualityConfig(model="s3://b/m.npz"), load_scorer("s3://b/m.npz", lambda uri: model.to_bytes()))
    assert q(Doc(1, "good text here", "webpages")) is None
    assert q(Doc(2, "bad bad bad", "webpages")).reason == "low_quality"
