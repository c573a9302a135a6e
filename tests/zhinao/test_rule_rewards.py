"""zhinao.rule_rewards: the rule-checked rewards RLHF adds to the reward model's score."""

import pytest

from zhinao import rule_rewards as R

WEATHER = {
    "name": "get_weather",
    "description": "current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {}, "unit": {}}, "required": ["city"]},
}
CLOCK = {"name": "now", "parameters": {"type": "object", "properties": {}}}
TOOLS = {"prompt": "What is the weather in Paris?", "tools": [WEATHER, CLOCK]}


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ("12", 1.0),
        ("The answer is 12.", 1.0),
        ("-3 is wrong, 12 is right", 0.0),  # the first integer counts
        ("twelve", 0.0),
        ("", 0.0),
        ("120", 0.0),
    ],
)
def test_arithmetic_checks_the_first_integer(response, reward):
    assert R.arithmetic({"answer": 12}, response) == reward


def test_arithmetic_reads_a_negative_answer_and_a_string_answer():
    assert R.arithmetic({"answer": "-7"}, "= -7") == 1.0
    assert R.arithmetic({"answer": -7}, "7") == 0.0


@pytest.mark.parametrize(
    ("record", "response", "reward"),
    [
        ({"lang": "en"}, "all English words here", 0.0),
        ({"lang": "zh"}, "全部是中文", 0.0),
        ({"lang": "en"}, "hello 世界", -2 / 3),  # 2 CJK characters of 3 units
        ({"lang": "zh"}, "你好 world", -1 / 3),  # 1 Latin word of 3 units
        ({"lang": "en"}, "42 !", 0.0),  # no unit of either script
        ({"prompt": "请用中文回答"}, "OK 好的", -1 / 3),  # language from the prompt's dominant script
        ({"prompt": [{"role": "user", "content": "answer in English"}]}, "好 fine", -1 / 2),
    ],
)
def test_code_switch_is_minus_the_share_of_the_other_script(record, response, reward):
    assert R.code_switch(record, response) == pytest.approx(reward)


def test_script_counts_count_cjk_characters_and_latin_words_of_two_letters():
    assert R.script_counts("I am 中国人 ok a") == (3, 2)  # "I" and "a" are single letters


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', 1.0),
        ('Sure: {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}} done', 1.0),
        ('{"name": "now", "arguments": {}}', 1.0),  # a tool without required arguments
        ('{"name": "now"}', 1.0),  # arguments may be left out when none are required
        ('{"name": "get_weather", "arguments": {"unit": "C"}}', 0.0),  # a required argument missing
        ('{"name": "get_weather"}', 0.0),
        ('{"name": "get_stock", "arguments": {"city": "Paris"}}', 0.0),  # not a listed tool
        ('{"name": "get_weather", "arguments": "city=Paris"}', 0.0),  # arguments not an object
        ("It is sunny in Paris.", 0.0),  # no call at all
        ('{"city": "Paris"}', 0.0),  # an object without a name is no call
        ('{"name": "get_weather", "arguments": {"city": "Paris"}', 0.0),  # unbalanced: not JSON
        ('{not json} {"name": "get_weather", "arguments": {"city": "Paris"}}', 1.0),  # first parsable object
    ],
)
def test_function_call_correctness_when_a_call_is_expected(response, reward):
    assert R.function_call(TOOLS, response) == reward


def test_a_call_where_none_is_expected_is_a_false_recall():
    no_call = {**TOOLS, "expectCall": False}
    assert R.function_call(no_call, '{"name": "get_weather", "arguments": {"city": "Paris"}}') == -1.0
    assert R.function_call(no_call, "It is 20 degrees, no tool needed.") == 0.0
    # Without tools the default expectation is no call.
    assert R.function_call({"prompt": "hi"}, '{"name": "now", "arguments": {}}') == -1.0
    assert R.function_call({"prompt": "hi"}, "hello") == 0.0


def test_first_json_object_skips_non_objects_and_broken_braces():
    assert R._first_json_object('x {"a": [1, {"b": 2}]} y') == {"a": [1, {"b": 2}]}
    assert R._first_json_object("no braces") is None
    assert R._first_json_object("{broken") is None


def test_score_is_the_weighted_sum_of_the_named_rules():
    record = {"answer": 3, "lang": "en"}
    assert R.score(record, "3 apples", {"arithmetic": 1.0}) == 1.0
    assert R.score(record, "3 个苹果", {"arithmetic": 2.0, "code_switch": 0.5}) == pytest.approx(2.0 - 0.5 * 3 / 3)
    assert R.score(record, "4", {"arithmetic": 1.0, "code_switch": 1.0}) == 0.0


def test_score_without_rules_is_a_float_zero():
    value = R.score({"answer": 1}, "1", {})
    assert value == 0.0 and isinstance(value, float)  # RM-only RLHF stacks it into a float tensor


def test_an_unknown_rule_is_a_key_error():
    with pytest.raises(KeyError):
        R.score({}, "x", {"politeness": 1.0})
