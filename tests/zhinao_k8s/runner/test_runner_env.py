"""The local runner gives each replica the environment training-operator v1.9 gives each pod."""

import pytest

from zhinao_k8s.runner.env import UnresolvedEnv, command_line, container_env, operator_env, replicas

JOB = {
    "metadata": {"name": "j"},
    "spec": {
        "nprocPerNode": "2",
        "pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 2}},
    },
}


@pytest.mark.parametrize(
    ("index", "name", "rank"),
    [(0, "master-0", "0"), (1, "worker-0", "1"), (2, "worker-1", "2")],
)
def test_operator_env_per_replica(index, name, rank):
    replica = replicas(JOB)[index]
    env = operator_env(JOB, replica, master_addr="127.0.0.1", master_port=29500)
    assert replica.name == name
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "6",
        "RANK": rank,
        "PET_NNODES": "3",
        "PET_NODE_RANK": rank,
        "PET_NPROC_PER_NODE": "2",
    }


def test_kubernetes_variable_expansion_in_args():
    container = {"command": ["torchrun"], "args": ["--master-addr=$(MASTER_ADDR)", "$(UNDEFINED)", "$$(MASTER_ADDR)"]}
    assert command_line(container, {"MASTER_ADDR": "10.0.0.1"}) == [
        "torchrun",
        "--master-addr=10.0.0.1",
        "$(UNDEFINED)",
        "$(MASTER_ADDR)",
    ]


def test_secret_refs_resolve_from_secret_manifests_then_environment():
    container = {
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-y"},
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}},
        ]
    }
    env = container_env(container, {"s3": {"id": "ID", "secret": "SECRET"}}, {})
    assert env == {"A": "x", "B": "x-y", "AWS_ACCESS_KEY_ID": "ID", "AWS_SECRET_ACCESS_KEY": "SECRET"}
    from_env = container_env(container, {}, {"AWS_ACCESS_KEY_ID": "E1", "AWS_SECRET_ACCESS_KEY": "E2"})
    assert from_env["AWS_ACCESS_KEY_ID"] == "E1"
    with pytest.raises(UnresolvedEnv, match="Secret 's3' key 'id' not provided"):
        container_env(container, {}, {})
