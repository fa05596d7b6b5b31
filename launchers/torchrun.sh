#!/usr/bin/env bash
# torchrun under distwal: every rank's records are durable and delivered exactly once.
#
# Single node:
#   launchers/torchrun.sh --nproc-per-node 4 train.py --epochs 3
#
# Multi-node: run this on every node with the same DISTWAL_DIR on a shared filesystem
# (NFS): each node's `distwal run` is that node's preferred leader, one of them leads.
#   DISTWAL_DIR=/nfs/runs/exp42 launchers/torchrun.sh --nnodes 2 --node-rank "$NODE_RANK" \
#       --rdzv-backend c10d --rdzv-endpoint head:29400 --nproc-per-node 4 train.py
#
# Environment: DISTWAL_DIR (default ./.distwal), DISTWAL_SINK (default: SQLite in the
# directory), DISTWAL_DRAIN_TIMEOUT (seconds to keep delivering after torchrun exits).
set -euo pipefail
dir=${DISTWAL_DIR:-$PWD/.distwal}
args=(--dir "$dir" --drain-timeout "${DISTWAL_DRAIN_TIMEOUT:-120}")
if [[ -n "${DISTWAL_SINK:-}" ]]; then args+=(--sink "$DISTWAL_SINK"); fi
exec distwal run "${args[@]}" -- torchrun "$@"
