"""Run rendered PyTorchJobs on this machine the way the Kubeflow training operator v1.9 runs them."""
