"""The document rules of appendix A, each with a hand-made English and Chinese failing example,
and looser thresholds for exam-like documents."""

import pytest

from zhinao.config.data import RulesConfig, RuleThresholds
from zhinao.data.clean import Rules, check_rules, is_exam
from zhinao.data.io import Doc

TH = RuleThresholds()

GOOD_EN = (
    "The river rises in the northern hills and flows south for about two hundred kilometres.\n"
    "Farmers along its banks grow rice and vegetables, and fishermen work the estuary.\n"
    "In spring the water rises quickly, so the villages are built on higher ground."
)
GOOD_ZH = "这条河发源于北部山区，向南流经约两百公里后注入大海。\n沿岸的农民种植水稻和蔬菜，渔民在河口捕鱼。\n春天河水上涨很快，所以村庄都建在较高的地方。"

# Distinct filler tokens, so that only the planted n-gram repeats.
FILL_EN = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu amber basil cedar dune ember fern grove heath iris "
    "jade kelp lotus maple nectar olive pearl quartz reed sage thyme umber violet willow yarrow zinnia acorn birch "
    "clover daisy elm flax ginger hazel ivy juniper kale lilac moss nutmeg oak pine quince rose spruce tulip"
).split()
FILL_ZH = "春眠不觉晓处闻啼鸟夜来风雨声花落知多少床前明月光疑是地上霜举头望低思故乡白日依山尽黄河入海流欲穷千里目更上一层楼红豆生南国发几枝愿君采撷此物最相思"

CASES = [
    ("too_short", "Hi there.", "你好。"),
    (
        "punct_ratio",
        "Deals here!!! ### $$$ *** Buy now!!! ((( ))) Only today!!! @@@ %%% Best prices!!! &&&",
        "超值优惠！！！＃＃＃￥￥￥＊＊＊马上购买！！！（（（）））仅限今天！！！＠＠＠",
    ),
    (
        "ellipsis_paragraphs",
        "\n".join(f"And then the story of part {i} goes on and on..." for i in range(5)),
        "\n".join(f"第{i}部分的故事还在继续，主人公慢慢地走着……" for i in range(5)),
    ),
    (
        "no_terminal_punct",
        "\n".join(f"Item number {i} of the catalogue with a description" for i in range(6)),
        "\n".join(f"目录中的第{i}项商品及其详细的说明文字" for i in range(6)),
    ),
    ("mean_word_length", " ".join(["a b c d e f g h i j"] * 3) + ".", None),
    (
        "abnormal_token_length",
        "Supercalifragilisticexpialidociousandevenlongerwords is odd. " * 2 + "Fine.",
        "编号123456789012345678901234567890是一个非常长的数字。编号998877665544332211009988776655也是。",
    ),
    (
        "repeated_sentences",
        "Buy the best shoes today. " * 4 + "They are good.",
        "今天买最好的鞋子。" * 4 + "它们很好。",
    ),
    (
        "short_paragraphs",
        "Home.\nNews.\nShop.\nThe weather will be fine tomorrow, with sun in the morning and rain later.",
        "首页。\n新闻。\n商店。\n明天天气晴朗，上午有阳光，下午可能会有小雨，请注意出行安全。",
    ),
    ("repeated_1gram", "buy " * 40 + "now.", "买" * 40 + "。"),
    # 12 x "the cat" in 60 tokens: unigram share 0.2 (passes), bigram 0.4 (fails).
    ("repeated_2gram", " ".join(["the cat"] * 12 + FILL_EN[:36]) + ".", "小猫" * 12 + FILL_ZH[:36] + "。"),
    # 8 x "one two three" in ~100 tokens: unigram 0.08 and bigram 0.17 pass, trigram 0.25 fails.
    ("repeated_3gram", " ".join(["one two three"] * 8 + FILL_EN[:76]) + ".", "一二三" * 8 + FILL_ZH[:76] + "。"),
]


def test_good_documents_pass():
    assert check_rules(GOOD_EN, TH) is None
    assert check_rules(GOOD_ZH, TH) is None


@pytest.mark.parametrize("rule, en, zh", CASES, ids=[c[0] for c in CASES])
def test_each_rule_fails_its_example(rule, en, zh):
    assert check_rules(en, TH) == rule
    if zh is not None:  # mean English word length has no Chinese counterpart
        assert check_rules(zh, TH) == rule


def test_exam_documents_get_looser_thresholds():
    exam = "第1题 下列哪一项是正确的？\nA. 水在零度结冰\nB. 水在五十度结冰\nC. 水不会结冰\nD. 以上都不对\n答案：A\n解析：标准大气压下水的凝固点是零摄氏度。"
    assert is_exam(exam, 3)
    assert check_rules(exam, TH) is not None  # ordinary thresholds would drop it
    assert Rules(RulesConfig())(Doc(1, exam, "webpages")) is None
    assert not is_exam(GOOD_EN, 3)


def test_rules_skip_code_and_whitelisted_pages():
    rules = Rules(RulesConfig())
    assert rules(Doc(1, "x = 1\ny = 2", "code")) is None
    assert rules(Doc(1, "Hi.", "webpages", whitelisted=True)) is None
    assert rules(Doc(1, "Hi.", "webpages")).reason == "too_short"
