#!/usr/bin/env bash
# Instructions per request of the service, counted by callgrind (first used in round 4 of BENCHMARKS.md, in its git history).
# Time per request moves by ±10 % between rounds on this machine; instruction counts do not,
# so this is how a change to the service's own work is compared.
#
#   bench/callgrind.sh [OP] [SERVICE_BIN]
#
# Runs the harness (OP list or cancel, c=8, 1 000 rows in PostgreSQL, in one enterprise or
# with LAYOUT=spread over 1 000) against SERVICE_BIN
# started under `valgrind --tool=callgrind`, zeroes the counters after 10 s of warm-up,
# dumps them 15 s later, and divides the instructions by the requests served in between
# (the calls to one function that runs once per request). Keeps the profile in
# target/callgrind-OP-BIN.out for `callgrind_annotate --inclusive=yes`.
#
# valgrind hides the CPU's SHA extensions, so SHA-256 (etags, token digests) counts about
# ten times what it costs on the machine: compare builds with each other, not with time.
# Needs valgrind, a release build (cargo build --release --bins --examples) and no other
# harness running (they share the invitations_bench database).
set -euo pipefail
op=${1:-list}
bin=$(realpath "${2:-target/release/invitations}")
bench=${BENCH:-target/release/examples/bench}
url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
case "$op" in
list) per_request='invitations::auth::Caller::enterprise_admin' extra=() ready=seeded ;;
cancel) per_request='invitations::grpc::wire::WireInvitation::new' extra=(--cancels 15000) ready=added ;;
*) echo "OP is list or cancel" >&2; exit 2 ;;
esac
work=$(mktemp -d)
cat >"$work/server" <<EOF
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p "$bin" "\$@" 2>>$work/valgrind.log
EOF
chmod +x "$work/server"
# In its own process group, so that stopping it also stops the no-op server it started.
setsid "$bench" --full --store postgres --layouts "${LAYOUT:-single}" --sizes 1000 --ops "$op" --conc 8 --runs 1 \
  --secs 40 "${extra[@]}" --pin false --pg-url "$url" --server-bin "$work/server" \
  --out "$work/results.json" --chart "$work/chart.svg" >"$work/harness.log" 2>&1 &
harness=$!
until grep -qs "$ready" "$work/harness.log"; do sleep 0.5; done
sleep 10
server=$(pgrep -f "valgrind.*$work/callgrind" | head -1)
callgrind_control -z "$server" >/dev/null 2>&1
sleep 15
callgrind_control -d "$server" >/dev/null 2>&1
sleep 2
kill -- "-$harness" 2>/dev/null || true
pkill -f "valgrind.*$work/callgrind" || true
wait "$harness" 2>/dev/null || true
mkdir -p target
profile="target/callgrind-$op-$(basename "$bin").out"
cp "$(ls -t "$work"/callgrind.* | head -1)" "$profile"
python3 - "$profile" "$per_request" <<'EOF'
import re, sys
path, per_request = sys.argv[1], sys.argv[2]
total, requests, names, callee = None, 0, {}, None
for line in open(path):
    if line.startswith(("summary:", "totals:")):
        total = int(line.split()[1])
    named = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
    if named:
        if named.group(2):
            names[named.group(1)] = named.group(2)
        if line.startswith("cfn"):
            callee = names.get(named.group(1), "")
    elif line.startswith("calls=") and callee == per_request:
        requests += int(line.split()[0][len("calls="):])
if not requests:
    sys.exit(f"no call to {per_request} in {path}")
print(f"{path}: {total:,} instructions over {requests:,} requests: {total // requests:,} per request")
EOF
rm -rf "$work"
