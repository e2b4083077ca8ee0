"""Jobs submitted to one of two local clusters up at once run against their own cluster (issue 14, item 1).

Before: the job supervisor looked for the cluster's address in its node's temp dir, found nothing (the
harness writes it under RAY_TMPDIR only), and fell back to any Ray instance in the process list, so about
one job in four reached the other cluster. Each job here prints the GCS address its driver connected to.
"""

from __future__ import annotations

import pytest

from cluster import local_cluster as lc
from nas_service.ray_runtime.jobs import jobs_client
from tests.helpers import free_port

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

PRINT_GCS = "python -c \"import ray; ray.init(); print('GCS=' + ray.get_runtime_context().gcs_address)\""


def test_each_job_reaches_its_own_cluster_with_two_clusters_up(ray_home, tmp_path) -> None:
    clusters = [lc.LocalCluster(state_dir=tmp_path / f"c{i}", workers=0, head_cpus=1, dashboard_port=free_port(),
                                token=True) for i in range(2)]  # fmt: skip
    try:
        for c in clusters:
            c.start()
        for round_ in range(3):
            for c in clusters:
                client = jobs_client(c.dashboard_url, token=c.token)
                job = client.submit_job(entrypoint=PRINT_GCS, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
                status = _wait(client, job)
                logs = client.get_job_logs(job)
                assert status == "SUCCEEDED", logs[-2000:]
                assert f"GCS={c.status()['gcs_address']}" in logs, (round_, c.status()["gcs_address"], logs[-500:])
    finally:
        for c in clusters:
            c.stop()


def _wait(client, job: str, timeout: float = 120) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job).value)
        if status not in ("PENDING", "RUNNING"):
            return status
        time.sleep(0.5)
    return "TIMEOUT"
