"""PoT spans and the sandboxed executor: values, isolation, limits and no network."""

import time

from zhinao.pot import Limits, execute, find_spans, network_namespace_available, substitute, wrap


def test_spans_are_found_and_substituted_in_one_namespace():
    text = f"Each box holds {wrap('n = 12 * 7')} apples, so two boxes hold {wrap('n * 2')}."
    assert find_spans(text) == ["n = 12 * 7", "n * 2"]
    assert substitute(text) == "Each box holds 84 apples, so two boxes hold 168."


def test_a_failing_span_does_not_stop_the_others():
    r = execute(["1/0", "x = 2", "x + 1"])
    assert [s.ok for s in r] == [False, True, True]
    assert "ZeroDivisionError" in r[0].error and r[2].value == 3


def test_timeout_kills_the_process():
    began = time.monotonic()
    r = execute(["while True: pass"], Limits(timeout_s=1.0, cpu_s=10))
    assert not r[0].ok and "timeout" in r[0].error
    assert time.monotonic() - began < 5


def test_memory_limit():
    r = execute(["x = bytearray(400 * 1024 * 1024)"], Limits(memory_mb=256))
    assert not r[0].ok and "MemoryError" in (r[0].error or "")


def test_no_network_and_no_inherited_environment(monkeypatch):
    monkeypatch.setenv("ZHINAO_SECRET", "s3cr3t")
    r = execute(
        [
            "import os; v = os.environ.get('ZHINAO_SECRET')",
            "v",
            "import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)",
        ]
    )
    assert r[1].ok and r[1].value == "None"  # the variable did not reach the sandbox
    assert not r[2].ok
    if network_namespace_available():  # kernel-enforced too: a raw socket cannot reach anything
        raw = execute(["import _socket; s = _socket.socket(); s.settimeout(1); s.connect(('1.1.1.1', 53))"])
        assert not raw[0].ok


def test_writes_stay_in_a_private_directory_and_file_size_is_limited():
    r = execute(["open('big', 'wb').write(b'x' * (3 * 1024 * 1024))"], Limits(file_mb=1))
    assert not r[0].ok
    r = execute(["import os; cwd = os.getcwd()", "cwd"])
    assert "zhinao-pot-" in str(r[1].value)
