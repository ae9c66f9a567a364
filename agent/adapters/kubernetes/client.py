"""The `kubernetes` ApiClient the agent uses: from `--k8s-kubeconfig-path`,
from `--k8s-api-server` (a URL, no credentials: tests and local proxies), or
in-cluster (the pod's service account) when KUBERNETES_SERVICE_HOST is set.
Does file I/O (the kubeconfig, the service account token)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config


class KubeConfigError(Exception):
    """No usable way to reach the API server; the message says which input is wrong."""


@dataclass(frozen=True, slots=True)
class KubeAccess:
    kubeconfig: Path | None = None
    api_server: str | None = None

    @staticmethod
    def in_cluster_available() -> bool:
        return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    @property
    def wanted(self) -> bool:
        """Kubernetes mode is on when a kubeconfig or server is given, or the agent runs in a pod."""
        return self.kubeconfig is not None or self.api_server is not None or self.in_cluster_available()

    def describe(self) -> str:
        if self.kubeconfig is not None:
            return f"kubeconfig {self.kubeconfig}"
        if self.api_server is not None:
            return self.api_server
        return "in-cluster service account"

    def api_client(self) -> client.ApiClient:
        conf = client.Configuration()
        try:
            if self.kubeconfig is not None:
                if not self.kubeconfig.is_file():
                    raise KubeConfigError(f"--k8s-kubeconfig-path {self.kubeconfig}: no such file")
                config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=conf)
            elif self.api_server is not None:
                conf.host = self.api_server.rstrip("/")
            else:
                config.load_incluster_config(client_configuration=conf)
        except KubeConfigError:
            raise
        except Exception as exc:  # the loaders raise ConfigException, OSError, yaml errors
            raise KubeConfigError(f"{self.describe()}: {exc}") from exc
        # The reflectors retry with their own jittered backoff; urllib3's silent
        # retries would only hide an unreachable server for longer.
        conf.retries = False
        return client.ApiClient(conf)
