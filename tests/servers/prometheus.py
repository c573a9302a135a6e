"""A real Prometheus server for tests: the `prometheus` binary (Debian package, `make servers`).

`PrometheusServer` runs it on 127.0.0.1:<free port> with a private config and TSDB directory, a 1 s
scrape interval and one scrape job (`job="zhinao"`, path /metrics) whose targets come from a
file_sd JSON file the test rewrites at any time with `set_targets(...)`; Prometheus watches the
file (inotify, plus a 1 s refresh_interval as fallback), so new targets are scraped within ~2 s.
Static targets can also be given at construction.

Typical use (the `prometheus` fixture does start/stop):

    prometheus.set_targets([f"127.0.0.1:{port}"])
    prometheus.wait_until_up(f"127.0.0.1:{port}")
    rows = prometheus.wait_for('zhinao_train_loss{stage="pretrain"}', lambda rows: len(rows) == 1)
    labels, value = rows[0]

Prometheus adds `job` and `instance` labels to every scraped series; labels given to
`set_targets` are added too (do not reuse the metrics' own label names pipeline/stage/rank, or
Prometheus renames the scraped ones to exported_*).

Nothing phones out: Prometheus itself has no telemetry; the config has no alerting, remote
write/read or rule files, and the web UI binds 127.0.0.1 only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from zhinao_k8s.runner.local import free_port

JOB = "zhinao"
Row = tuple[dict[str, str], float]


def prometheus_binary() -> str | None:
    override = os.environ.get("ZHINAO_PROMETHEUS")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("prometheus")


def _value(raw: Any) -> float:
    return (
        float(raw)
        if raw not in ("NaN", "+Inf", "-Inf")
        else {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}[raw]
    )


class PrometheusError(RuntimeError):
    """The Prometheus server failed to start or answered a query with an error."""


class PrometheusServer:
    """One `prometheus` process on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        static_targets: Sequence[str] = (),
        workdir: Path | None = None,
        scrape_interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or prometheus_binary()
        if not self.binary:
            raise PrometheusError("`prometheus` is not on PATH: run `make servers` (apt-get install prometheus)")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="zhinao-prom-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.targets_path = self.workdir / "targets.json"
        self.tsdb_path = self.workdir / "tsdb"
        self.log_path = self.workdir / "prometheus.log"
        self.static_targets = list(static_targets)
        self.scrape_interval = scrape_interval
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._write_targets([], {})

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not running")
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        job: dict[str, Any] = {
            "job_name": JOB,
            "metrics_path": "/metrics",
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": "1s"}],
        }
        if self.static_targets:
            job["static_configs"] = [{"targets": self.static_targets}]
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [job],
        }
        # JSON is YAML: no YAML library needed.
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self._proc is not None:
            return self
        self._write_config()
        self.tsdb_path.mkdir(exist_ok=True)
        last_error = ""
        for _attempt in range(3):  # the picked port can be taken between pick and bind
            self.port = free_port()
            self._log_file = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--storage.tsdb.path={self.tsdb_path}",
                    "--storage.tsdb.retention.time=1h",
                    # keep the UI/API self-contained (Debian's defaults point under /etc and /usr)
                    f"--web.console.templates={self.workdir}",
                    f"--web.console.libraries={self.workdir}",
                    "--log.level=info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C to pytest does not hit it before stop() does
            )
            try:
                self._wait_ready(timeout)
                return self
            except PrometheusError as exc:
                last_error = str(exc)
                self._terminate()
                if "address already in use" not in last_error:
                    break
        raise PrometheusError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout}s:\n{self.log_tail()}")

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s) and delete its temp dir if it made one."""
        self._terminate()
        self.port = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------------------ targets

    def _write_targets(self, targets: Sequence[str], labels: Mapping[str, str]) -> None:
        groups = [{"targets": list(targets), "labels": dict(labels)}] if targets else []
        tmp = self.targets_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(groups))
        os.replace(tmp, self.targets_path)  # atomic: Prometheus never reads a half-written file

    def set_targets(self, targets: Sequence[str], labels: Mapping[str, str] | None = None) -> None:
        """Replace the file_sd targets ("host:port" strings), with optional extra target labels."""
        self._write_targets(targets, labels or {})

    def targets(self) -> list[dict[str, Any]]:
        """Active targets from /api/v1/targets (each has scrapeUrl, health, lastError, labels)."""
        return self._get("/api/v1/targets", {"state": "active"})["activeTargets"]

    def wait_until_up(self, target: str, timeout: float = 20.0) -> None:
        """Wait until `target` ("host:port") was discovered and scraped successfully."""
        self.wait_for(f'up{{job="{JOB}",instance="{target}"}} == 1', timeout=timeout)

    # ------------------------------------------------------------------------------ queries

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise PrometheusError(f"{path} {dict(params)}: HTTP {exc.code}: {body.get('error', body)}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params)}: {body}")
        return body["data"]

    def query_raw(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """The `data` object of /api/v1/query (resultType + result)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._get("/api/v1/query", params)

    def query(self, promql: str, at: float | None = None) -> list[Row]:
        """An instant query: [(labels, value)] for a vector, [({}, value)] for a scalar."""
        data = self.query_raw(promql, at)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [(dict(r["metric"]), _value(r["value"][1])) for r in result]
        if kind == "scalar":
            return [({}, _value(result[1]))]
        raise PrometheusError(f"{promql!r} returned a {kind}: use query_series for range vectors")

    def query_series(
        self, promql: str, at: float | None = None
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """A range-vector selector such as `zhinao_train_loss[1m]`: [(labels, [(ts, value), ...])] in scrape order."""
        data = self.query_raw(promql, at)
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{promql!r} returned a {data['resultType']}, not a matrix")
        return [(dict(r["metric"]), [(float(t), _value(v)) for t, v in r["values"]]) for r in data["result"]]

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[Row]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.25,
    ) -> list[Row]:
        """Poll `query(promql)` until `predicate(rows)` holds (default: any row); returns the rows."""
        deadline = time.monotonic() + timeout
        rows: list[Row] = []
        while True:
            rows = self.query(promql)
            if predicate(rows):
                return rows
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{promql!r}: condition not met after {timeout}s; last result {rows}; "
                    f"targets {[(t['scrapeUrl'], t['health'], t['lastError']) for t in self.targets()]}"
                )
            time.sleep(interval)


@pytest.fixture
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A started PrometheusServer with no targets yet; stopped after the test.

    Fails (does not skip) when the binary is missing: the Prometheus tests are part of the suite.
    """
    if not prometheus_binary():
        pytest.fail(
            "the `prometheus` binary is not on PATH: run `make servers` (installs Debian's prometheus)", pytrace=False
        )
    server = PrometheusServer(workdir=tmp_path_factory.mktemp("prometheus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
