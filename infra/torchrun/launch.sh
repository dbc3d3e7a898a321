#!/usr/bin/env bash
# Start litflow (embed or train) on THIS host as one node of a multi-node torchrun job.
# Run it on every host with the same RDZV_ENDPOINT and JOB_ID; torchrun's c10d rendezvous
# (hosted by the first node to arrive at RDZV_ENDPOINT) assigns the ranks.
#
#   NNODES=2 RDZV_ENDPOINT=10.0.0.4:29400 infra/torchrun/launch.sh train SHARDS/ --cache CACHE --out RUN
#
# Environment (defaults in brackets):
#   NNODES         number of hosts [1]
#   NPROC          processes per host: GPUs per host, or 1 on CPU [1]
#   RDZV_ENDPOINT  HOST:PORT of the rendezvous, reachable from every host [127.0.0.1:29400]
#   JOB_ID         rendezvous id shared by the hosts of one job [litflow]
#   NODE_RANK      optional; only a tie-breaker hint for c10d
#   PYTHON         interpreter with litflow installed, same path on every host [.venv/bin/python]
#   GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME  network interface, when hosts have several
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
args=(--nnodes "${NNODES:-1}" --nproc-per-node "${NPROC:-1}"
      --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:-127.0.0.1:29400}" --rdzv-id "${JOB_ID:-litflow}")
if [[ -n "${NODE_RANK:-}" ]]; then args+=(--node-rank "$NODE_RANK"); fi
exec "$PYTHON" -m torch.distributed.run "${args[@]}" -m flows.cli "$@"
