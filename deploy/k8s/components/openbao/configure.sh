#!/bin/sh
# Sets up this dev OpenBao for agentmesh, on every start (dev mode keeps nothing):
# dev mode already mounts KV v2 at secret/; this adds what the providers service
# may do there, and the Kubernetes auth role it logs in with (the
# vault-kubernetes-auth component). An external Vault needs the same, once.
set -eu
export BAO_ADDR=http://127.0.0.1:8200
until bao status >/dev/null 2>&1; do sleep 1; done
bao policy write agentmesh-providers - <<'POLICY'
path "secret/data/agentmesh/providers/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/agentmesh/providers/*" {
  capabilities = ["read", "delete"]
}
POLICY
bao auth enable kubernetes
# In the pod, OpenBao reads the API server's CA and its own reviewer token from
# its service account mount; TokenReview needs system:auth-delegator (below).
bao write auth/kubernetes/config kubernetes_host=https://kubernetes.default.svc
bao write auth/kubernetes/role/agentmesh-providers \
  bound_service_account_names=providers \
  bound_service_account_namespaces="$POD_NAMESPACE" \
  token_policies=agentmesh-providers \
  token_ttl=1h
