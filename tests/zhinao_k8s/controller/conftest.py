"""Fixtures of the operator tests.

operator  function  the operator running in a thread against the `kube` emulator (servers/operator_thread.py)
"""

from collections.abc import Iterator

import pytest
from servers.kube_mock import KubeMock
from servers.operator_thread import Operator


@pytest.fixture
def operator(kube: KubeMock) -> Iterator[Operator]:
    op = Operator(kube.cluster)
    op.start()
    try:
        yield op
    finally:
        op.stop()
