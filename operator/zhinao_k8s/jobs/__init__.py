"""Entry points that run inside a job's container (`python -m zhinao_k8s.jobs.<name>`).

The local runner and the CLI never import this package: it is the in-image side only.
"""
