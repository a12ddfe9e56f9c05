#!/usr/bin/env bash
# chat 100 at 100,000 lines/s in 5 ms batches (--pattern ticks): rat against the
# asyncio peer on uvloop, 3 repetitions, the servers interleaved; each server pinned
# to CPU 0, the generator to CPU 1 (docs/BENCHMARKS.md, issue 10's notes).
# (The compare run now in docs/BENCHMARKS.md ran the ticks pattern at 2,000 and
# 50,000 lines/s only; bench/compare.py includes 100,000 since.)
#
#   scripts/ticks_100k.sh            # after `python3 dev.py bench --help` made .venv
#   PYTHON=python3 scripts/ticks_100k.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
port=${PORT:-9111}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
for rep in 1 2 3; do
    for server in rat uvloop; do
        if [[ $server == rat ]]; then
            taskset -c 0 "$python" -m rat serve --port "$port" >/dev/null 2>&1 &
        else
            taskset -c 0 "$python" bench/peers/asyncio_server.py --port "$port" --uvloop >/dev/null 2>&1 &
        fi
        pid=$!
        sleep 1.5
        printf '%-7s rep %d  ' "$server" "$rep"
        taskset -c 1 "$python" -m ratbench chat --clients 100 --duration 3 --grace 2 \
            --rates 100000 --pattern ticks --port "$port" --server-pid "$pid" --no-progress \
            | grep '^100,000' || true
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
