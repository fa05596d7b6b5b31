#!/usr/bin/env bash
# Kill a rank mid-run and watch the leader adopt and deliver what it logged.
#   bash examples/crash_and_recover.sh            (uses .venv/bin if present)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.venv/bin}
dir=${DISTWAL_DIR:-$(mktemp -d)/run}
export DISTWAL_LEASE_S=${DISTWAL_LEASE_S:-5}

script=$(mktemp --suffix=.py)
cat > "$script" <<'PY'
import distwal, os, time
distwal.init()
rank = int(os.environ["RANK"])
for step in range(100000):
    distwal.log({"rank": rank, "step": step})
    time.sleep(0.001)
PY

echo "== starting 3 ranks logging into $dir"
pids=()
for rank in 0 1 2; do
  RANK=$rank LOCAL_RANK=$rank WORLD_SIZE=3 DISTWAL_DIR=$dir "$bin/python" "$script" &
  pids+=($!)
done
sleep 3
echo "== SIGKILL rank 1 (pid ${pids[1]})"
kill -9 "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
sleep 2
"$bin/distwal" status "$dir"
echo "== stopping ranks 0 and 2 with SIGTERM (what torchrun sends)"
kill -TERM "${pids[0]}" "${pids[2]}"
wait || true
echo "== draining what is left"
"$bin/distwal" drain "$dir" --timeout 60
"$bin/distwal" status "$dir"
