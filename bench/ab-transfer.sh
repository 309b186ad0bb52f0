#!/usr/bin/env bash
# A/B of template push and pull between corral builds, alternated so the
# VM's drift hits each alike: a dense image (CORRAL_AB_GIB, 2), a fresh
# registry per run, cold cache (drop_caches: run as root), durable (sync
# inside the time).
#   bench/ab-transfer.sh REPS BINARY...     e.g. bench/ab-transfer.sh 3 /tmp/old /tmp/new
set -euo pipefail
reps=$1
shift
dir=${CORRAL_AB_DIR:-$(mktemp -d)}
mkdir -p "$dir/src"
[ -f "$dir/src/disk.img" ] || head -c $((${CORRAL_AB_GIB:-2} << 30)) /dev/urandom >"$dir/src/disk.img"
port=$((20000 + RANDOM % 20000))
timed() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local start=$(date +%s.%N)
	"$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
	sync
	echo "$(date +%s.%N) - $start" | bc
}
for rep in $(seq "$reps"); do
	for bin in "$@"; do
		rm -rf "$dir/store" "$dir/pull"
		"$bin" registry --listen "127.0.0.1:$port" --data-dir "$dir/store" >"$dir/registry.log" 2>&1 &
		pid=$!
		for _ in $(seq 100); do curl -s "127.0.0.1:$port" >/dev/null && break || sleep 0.1; done
		push=$(timed "$bin" template push "$dir/src" --name img --tag v1 --registry "http://127.0.0.1:$port")
		pull=$(timed "$bin" template pull img --tag v1 --dest "$dir/pull" --registry "http://127.0.0.1:$port")
		echo "rep $rep $bin push ${push}s pull ${pull}s"
		kill "$pid"
		wait "$pid" 2>/dev/null || true
	done
done
