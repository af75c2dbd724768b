"""The `local` e2e provider: a real single-node Kubernetes cluster on this machine.

See docs/local-cluster.md.
"""

from devenv.localcluster.cluster import LocalCluster, node_environment_problems

__all__ = ["LocalCluster", "node_environment_problems"]
