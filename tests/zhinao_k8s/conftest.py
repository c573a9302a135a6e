"""Fixtures of the operator and CLI tests.

kube    function  a running kmock API emulator (see kube_mock.py): .url, .kubeconfig (a file),
                  .cluster (a k8s.Cluster on it), .call(fn) to run fn(emulator) on its loop
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers.kube_mock import KubeMock


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeMock]:
    mock = KubeMock(tmp_path).start()
    try:
        yield mock
    finally:
        mock.stop()
