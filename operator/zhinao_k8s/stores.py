"""Open a pipeline's object store from the CLI with the spec's own storage settings.

Every read the CLI does (summaries after `run`, reports, status) goes through here, so it uses the
same endpoint, region and credentials as the jobs: the Secret the spec references when the user
passed it (`--secret FILE`), else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment,
exactly as the local runner resolves the jobs' `secretKeyRef`s.
"""

from zhinao.storage import ObjectStore, open_store
from zhinao_k8s.api.v1alpha1 import Storage


def open_spec_store(uri: str, storage: Storage, secrets: dict[str, dict[str, str]] | None = None) -> ObjectStore:
    access_key = secret_key = None
    if storage.credentials is not None:
        ref = storage.credentials.secret_ref
        data = (secrets or {}).get(ref.name) or {}
        access_key = data.get(ref.access_key_id_key)
        secret_key = data.get(ref.secret_access_key_key)
        if access_key is None or secret_key is None:  # not given by file: the environment's
            access_key = secret_key = None
    return open_store(
        uri, endpoint=storage.endpoint, region=storage.region, access_key=access_key, secret_key=secret_key
    )
