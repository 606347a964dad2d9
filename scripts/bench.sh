#!/usr/bin/env bash
# bench.sh: tether's performance, measured side by side in one run, with release binaries.
#
#   scripts/bench.sh [--quick] [--out DIR] [--only PARTS]
#
# What it measures (each a ratio of two things measured here, now, on this machine):
#   1. tunnel vs direct: small-GET latency and bulk throughput of `tether bench --serve` reached
#      straight across an emulated 20 ms RTT link, and through stub + agent across the same link;
#   2. QUIC vs the TCP fallback at 0, 1 and 5% loss with 20 ms RTT: small-GET p50/p99 while bulk
#      downloads (5 MB each, one at a time) share the tunnel, and their goodput; and at 5% loss
#      with 1 ms each way (CPU, not the link, the limit), small GETs alone and beside a
#      full-speed download on the same agent connection, and through a second stub and agent
#      beside a download through the first (what the shared cores alone cost); and the same
#      with the link limited to 400 Mbit/s, where the link's queue and not the CPU is the limit;
#   3. the stub's memory per agent connection (1,000 simulated agents) and per open stream (1,000
#      held watches), and the agent's per open stream;
#   4. time until a request succeeds again after a stub restart;
#   5. the hub on three replicas (127.0.0.1, .2, .3, static members): the stubs' memory per agent
#      connection and the time to connect 20,000 simulated agents (--quick: 3,000) spread over
#      them, and requests per second through a replica that forwards over a peer link versus
#      the replica that holds the agent;
#   6. kill -9 of one of two agent replicas under steady GETs: the slowest request (the stall);
#   7. a restart storm: 10,000 simulated agents (--quick: 2,000) on one stub that is restarted:
#      how long until every agent is connected again, and its failed handshakes by kind;
#   8. CPU per byte: 256 MB downloads (--quick: 64 MB) on loopback through tether over QUIC and
#      over the TCP fallback, through a C HTTP/2 tunnel (an nghttpx hub and an nghttpx edge with
#      one HTTP/2 connection over TLS between them, Debian's nghttp2-proxy, installed if missing)
#      and direct: throughput and CPU seconds per GB of the tunnel's two processes, median of 3;
#   9. behind a firewall on the stub's side (nftables in the link's namespace) that drops UDP to
#      the stub's port, rejects it, or lets it through: time from an agent's start to its first
#      served request, and the transport it got (median of 3; --quick: 1).
# Parts 1, 2 and 9 need root (`tether link`: network namespaces and TUN devices); without it they
# are skipped with the reason. Output: DIR/results.md (Markdown tables), DIR/results.json and
# DIR/chart.png (if matplotlib can be installed into ~/.cache/tether/bench-venv). DIR defaults to
# target/bench. --only runs some parts (comma-separated: memory, reconnect, link, beside, hub,
# stall, storm, bytes, firewall; beside is part 2's full-speed-download cell alone). Every
# process it starts is stopped (by PID) when it ends; the link takes its namespace down with it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
out=$root/target/bench
quick=false
only=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=true ;;
    --out) out=$2; shift ;;
    --only) only=$2; shift ;;
    -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "usage: $PROG [--quick] [--out DIR] [--only memory,reconnect,link,beside,hub,stall,storm,bytes,firewall]" >&2; exit 2 ;;
  esac
  shift
done
secs=$($quick && echo 4 || echo 10)
hub_agents=$($quick && echo 3000 || echo 20000)
storm_agents=$($quick && echo 2000 || echo 10000)
# want PART: PART is to run (--only names it, or --only was not given).
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
for part in ${only//,/ }; do
  case $part in memory | reconnect | link | beside | hub | stall | storm | bytes | firewall) ;; *) die "--only: no part called \"$part\"" ;; esac
done

log "building release binaries (cargo build --release)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin tether
tether=$root/target/release/tether
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-bench.XXXXXX")
# Stops what is still running, newest first (so a namespaced stub before its link), by PID.
cleanup() {
  stop_spawned
  [ -n "${TETHER_BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

certs=$work/certs
# The stub certificate names every loopback address the hub's replicas use.
"$tether" certs init --dir "$certs" >/dev/null
"$tether" certs stub --dir "$certs" --san localhost --san 127.0.0.1 --san 127.0.0.2 --san 127.0.0.3 >/dev/null
TETHER=$tether bash "$root/scripts/bootstrap-certs.sh" "$certs" dev >/dev/null

# start NAME CMD...: CMD in the background (TETHER_LOG=info unless set), its log in
# $work/NAME.log; sets $started to its PID. cleanup stops it unless stop_pid did.
start() {
  local name=$1; shift
  spawn "$name" "$work/$name.log" env TETHER_LOG="${TETHER_LOG:-info}" "$@"
  started=$SPAWNED_PID
}
# wait_log NAME NEEDLE PID: the first line of $work/NAME.log containing NEEDLE (30 s at most;
# at once an error if PID exits first).
wait_log() { wait_for_line "$work/$1.log" "$2" "$3" "$1"; }
# port ADDR: the port of HOST:PORT.
port() { printf '%s\n' "${1##*:}"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
jq_py() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

token=$("$tether" token --certs "$certs" --user bench --cluster dev --ttl 2h)
start target "$tether" bench --serve 0.0.0.0:0
target_pid=$started
line=$(wait_log target "bench target listening" "$target_pid")
target_port=$(port "$(field "$line" addr)")

results=$work/results.json
echo '{}' >"$results"
# record KEY JSON-VALUE
record() { python3 - "$results" "$1" "$2" <<'PY'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = json.load(open(path)); data[key] = value; json.dump(data, open(path, "w"), indent=1)
PY
}

# A stub on loopback (kernel-chosen ports); sets stub_pid, quic_port and https_port.
loopback_stub() {
  start stub "$tether" stub --certs "$certs" --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --audit-log off \
    --max-requests-per-user 0
  stub_pid=$started
  line=$(wait_log stub "stub listening" "$stub_pid")
  quic_port=$(port "$(field "$line" quic)")
  https_port=$(port "$(field "$line" https)")
}

# ---- 3. memory (loopback) ------------------------------------------------------------------
if want memory; then
  log "memory: 1,000 simulated agents against one stub"
  loopback_stub
  "$tether" bench --agents 1000 --certs "$certs" --stub "127.0.0.1:$quic_port" --server-name localhost \
    --stub-pid "$stub_pid" -d 1s --json --quiet >"$work/swarm.json"
  record swarm "$(cat "$work/swarm.json")"

  stop_pid "$stub_pid" stub

  log "memory: 1,000 held watches through one agent connection"
  loopback_stub
  start agent "$tether" agent --certs "$certs" --cluster dev --name agent-0 --stub "localhost:$quic_port" \
    --upstream "http://127.0.0.1:$target_port"
  agent_pid=$started
  wait_log agent "connected to stub" "$agent_pid" >/dev/null
  stub_idle=$(rss_kib "$stub_pid"); agent_idle=$(rss_kib "$agent_pid")
  "$tether" bench --target "https://127.0.0.1:$https_port/clusters/dev" --token "$token" --ca "$certs/ca.crt" \
    --mix watch --hold-watches -c 1000 --connections 2 -d 6s --json --quiet >"$work/watches.json" &
  bench_pid=$!
  sleep 4 # the watches are open by now (they open within a second); measured while they are held
  stub_busy=$(rss_kib "$stub_pid"); agent_busy=$(rss_kib "$agent_pid")
  wait "$bench_pid"
  held=$(jq_py "$work/watches.json" 'd["kinds"].get("watch", {}).get("count", 0)')
  [ "$held" -gt 0 ] || die "no watch was held open: $(cat "$work/watches.json")"
  record streams "{\"held\": $held, \"stub_kib_per_stream\": $(( (stub_busy - stub_idle) / held )), \"agent_kib_per_stream\": $(( (agent_busy - agent_idle) / held ))}"
  stop_pid "$agent_pid" agent; stop_pid "$stub_pid" stub
fi

# ---- 4. reconnect after a stub restart (loopback) -------------------------------------------
if want reconnect; then
  log "reconnect: time until a request succeeds after the stub restarts"
  loopback_stub
  start agent "$tether" agent --certs "$certs" --cluster dev --name agent-0 --stub "localhost:$quic_port" \
    --upstream "http://127.0.0.1:$target_port"
  agent_pid=$started
  wait_log agent "connected to stub" "$agent_pid" >/dev/null
  stop_pid "$stub_pid" stub
  start stub2 "$tether" stub --certs "$certs" --quic-listen "127.0.0.1:$quic_port" --https-listen "127.0.0.1:$https_port" \
    --audit-log off
  stub_pid=$started
  t0=$(date +%s%N)
  wait_log stub2 "stub listening" "$stub_pid" >/dev/null
  ok=false
  for _ in $(seq 1 200); do
    if curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --cacert "$certs/ca.crt" -H "Authorization: Bearer $token" \
      "https://127.0.0.1:$https_port/clusters/dev/small" | grep -q 200; then ok=true; break; fi
    sleep 0.02
  done
  $ok || die "no request succeeded within 4 s of the stub restart"
  record reconnect "{\"ms\": $(( ($(date +%s%N) - t0) / 1000000 ))}"
  stop_pid "$stub_pid" stub2; stop_pid "$agent_pid" agent
fi

# ---- 5. the hub on three replicas (loopback: 127.0.0.1, .2 and .3) --------------------------
if want hub; then
  log "hub: three replicas on 127.0.0.1, .2 and .3 with static members"
  # The peer port must be known before the replicas start (a static member list names it): a
  # port the kernel picks, taken only if it is free over UDP and TCP on all three addresses (the
  # earlier parts leave connections whose local ports a listener cannot share).
  peer_port=$(python3 - <<'PY'
import socket
for _ in range(50):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port, held = probe.getsockname()[1], [probe]
    try:
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                if (host, kind) == ("127.0.0.1", socket.SOCK_DGRAM):
                    continue
                s = socket.socket(socket.AF_INET, kind)
                held.append(s)
                s.bind((host, port))
    except OSError:
        continue
    finally:
        for s in held:
            s.close()
    print(port)
    break
else:
    raise SystemExit("no port free over UDP and TCP on 127.0.0.1-3 in 50 tries")
PY
)
  members=static:r1=127.0.0.1:$peer_port,r2=127.0.0.2:$peer_port,r3=127.0.0.3:$peer_port
  replica_pids=(); replica_quic=(); replica_https=()
  for i in 1 2 3; do
    start "r$i" "$tether" stub --certs "$certs" --id "r$i" --members "$members" --peer-listen "127.0.0.$i:$peer_port" \
      --quic-listen "127.0.0.$i:0" --https-listen "127.0.0.$i:0" --audit-log off --max-requests-per-user 0
    replica_pids+=("$started")
    line=$(wait_log "r$i" "stub listening" "$started")
    replica_quic+=("127.0.0.$i:$(port "$(field "$line" quic)")")
    replica_https+=("127.0.0.$i:$(port "$(field "$line" https)")")
  done
  linked_to_both() { [ "$(grep -c "peer link up" "$work/$1.log")" -ge 2 ]; }
  for i in 1 2 3; do
    poll_until "${replica_pids[i - 1]}" 30 linked_to_both "r$i" || die "replica r$i did not link to both peers (log: $work/r$i.log)"
  done

  log "hub: $hub_agents simulated agents spread over the three replicas"
  "$tether" bench --agents "$hub_agents" --certs "$certs" --stub "$(IFS=,; echo "${replica_quic[*]}")" \
    --server-name localhost --stub-pid "$(IFS=,; echo "${replica_pids[*]}")" -d 1s --json --quiet >"$work/hub-swarm.json"
  record hub_swarm "$(cat "$work/hub-swarm.json")"

  log "hub: requests per second through the replica that holds the agent and through one that forwards"
  start hub-agent "$tether" agent --certs "$certs" --cluster dev --name agent-0 --stub "${replica_quic[0]}" \
    --server-name localhost --connections 1 --upstream "http://127.0.0.1:$target_port"
  hub_agent_pid=$started
  wait_log hub-agent "connected to stub" "$hub_agent_pid" >/dev/null
  reachable_via_r2() {
    curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --cacert "$certs/ca.crt" -H "Authorization: Bearer $token" \
      "https://${replica_https[1]}/clusters/dev/small" | grep -q 200
  }
  poll_until "${replica_pids[1]}" 30 reachable_via_r2 || die "r2 never forwarded a request to r1's agent (log: $work/r2.log)"
  hub_bench() { # replica-index label
    "$tether" bench --target "https://${replica_https[$1]}/clusters/dev" --token "$token" --ca "$certs/ca.crt" \
      --mix small -c 16 -d "${secs}s" --json --quiet >"$work/hub-$2.json"
    record "hub_$2" "$(cat "$work/hub-$2.json")"
  }
  hub_bench 0 direct
  hub_bench 1 forwarded
  stop_pid "$hub_agent_pid" hub-agent
  for i in 3 2 1; do stop_pid "${replica_pids[i - 1]}" "r$i"; done
fi

# ---- 6. kill -9 of an agent replica under load (loopback) ------------------------------------
if want stall; then
  log "stall: kill -9 of one of two agent replicas under steady GETs"
  loopback_stub
  stall_agents=()
  for n in 0 1; do
    start "stall-agent-$n" "$tether" agent --certs "$certs" --cluster dev --name "agent-$n" \
      --stub "localhost:$quic_port" --upstream "http://127.0.0.1:$target_port"
    stall_agents+=("$started")
    wait_log "stall-agent-$n" "connected to stub" "$started" >/dev/null
  done
  "$tether" bench --target "https://127.0.0.1:$https_port/clusters/dev" --token "$token" --ca "$certs/ca.crt" \
    --mix small -c 6 -d "$((secs + 4))s" --json --quiet >"$work/stall.json" &
  bench_pid=$!
  sleep 2 # a benchmark, not a test: the load has run a while when the agent dies
  kill -KILL "${stall_agents[0]}"
  wait "${stall_agents[0]}" 2>/dev/null || true # reaped here, so bash does not report it killed
  wait "$bench_pid"
  suspected=$(grep -c "agent connection silent:" "$work/stub.log" || true)
  record stall "{\"bench\": $(cat "$work/stall.json"), \"suspected\": $suspected}"
  stop_pid "${stall_agents[1]}" stall-agent-1; stop_pid "${stall_agents[0]}" stall-agent-0; stop_pid "$stub_pid" stub
fi

# ---- 7. a restart storm (loopback) ------------------------------------------------------------
if want storm; then
  log "storm: $storm_agents simulated agents on one stub, which restarts"
  loopback_stub
  # Its report (JSON) on stdout, its progress and log lines apart.
  TETHER_LOG=info "$tether" bench --agents "$storm_agents" --certs "$certs" --stub "127.0.0.1:$quic_port" \
    --server-name localhost --reconnect -d 120s --json </dev/null >"$work/storm.json" 2>"$work/storm.log" &
  storm_pid=$!
  SPAWNED+=("$storm_pid:storm")
  wait_log storm "simulated agents connected; holding" "$storm_pid" 300 >/dev/null
  # UDP datagrams the kernel dropped because a socket's receive buffer was full, during the storm
  # (machine-wide: nothing else here sends much UDP meanwhile).
  udp_drops() { nstat -az UdpRcvbufErrors 2>/dev/null | awk '/UdpRcvbufErrors/ {print $2}'; }
  drops_before=$(udp_drops)
  stop_pid "$stub_pid" stub
  start stub-again "$tether" stub --certs "$certs" --quic-listen "127.0.0.1:$quic_port" \
    --https-listen "127.0.0.1:$https_port" --admin-listen 127.0.0.1:0 --audit-log off
  stub_pid=$started
  wait "$storm_pid" || die "the storm's bench failed (log: $work/storm.log)"
  stop_pid "$storm_pid" storm
  record storm_udp_drops "$(( $(udp_drops) - drops_before ))"
  # The stub's own count of the handshakes it refused or gave up on, by reason.
  admin=$(field "$(wait_log stub-again "admin listening" "$stub_pid")" admin)
  curl -s --noproxy '*' "http://$admin/metrics" | python3 -c '
import json, re, sys
refusals = {m.group(1): int(float(m.group(2))) for m in re.finditer(r"^tether_agent_refusals_total\{reason=\"([^\"]+)\"\} (\S+)", sys.stdin.read(), re.M)}
print(json.dumps(refusals))' >"$work/storm-stub.json"
  record storm_stub_refusals "$(cat "$work/storm-stub.json")"
  record storm "$(cat "$work/storm.json")"
  stop_pid "$stub_pid" stub-again
fi

# ---- 8. bytes: CPU per byte of a bulk download, against a C HTTP/2 tunnel (loopback) -------------
if want bytes && ! command -v nghttpx >/dev/null && [ "$(id -u)" = 0 ]; then
  log "installing nghttp2-proxy (nghttpx, the C HTTP/2 tunnel compared with) from Debian's packages, once"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nghttp2-proxy >/dev/null ||
    log "could not install nghttp2-proxy"
fi
if want bytes && ! command -v nghttpx >/dev/null; then
  log "SKIPPED bytes: it needs nghttpx (Debian's nghttp2-proxy; install it as root, or run this as root)"
elif want bytes; then
  bytes_mb=$($quick && echo 64 || echo 256)
  rounds=$($quick && echo 1 || echo 3)
  log "bytes: ${bytes_mb} MB downloads through tether (QUIC, TCP fallback), an nghttpx HTTP/2 tunnel and direct"
  # ticks PID...: CPU time (user + system, in clock ticks) the processes and their children
  # (nghttpx's worker process) have used so far.
  ticks() {
    local p c sum=0
    for p in "$@"; do
      for c in $p $(cat /proc/"$p"/task/*/children); do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$c/stat"))); done
    done
    echo "$sum"
  }
  hz=$(getconf CLK_TCK)
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

  # tether over QUIC and over the TCP fallback: a stub and an agent each.
  bytes_tunnel() { # name transport; sets tunnel_url and the array tunnel_pids
    start "$1-stub" "$tether" stub --certs "$certs" --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 \
      --audit-log off --max-requests-per-user 0
    local stub=$started line
    line=$(wait_log "$1-stub" "stub listening" "$stub")
    start "$1-agent" "$tether" agent --certs "$certs" --cluster dev --name agent-0 \
      --stub "localhost:$(port "$(field "$line" quic)")" --upstream "http://127.0.0.1:$target_port" --transport "$2" \
      --connections 1
    wait_log "$1-agent" "connected to stub" "$started" >/dev/null
    tunnel_url="https://127.0.0.1:$(port "$(field "$line" https)")/clusters/dev"
    tunnel_pids=("$stub" "$started")
  }
  bytes_tunnel quic quic; quic_url=$tunnel_url; quic_pids=("${tunnel_pids[@]}")
  bytes_tunnel tcp tcp; tcp_url=$tunnel_url; tcp_pids=("${tunnel_pids[@]}")
  # The C tunnel: an nghttpx hub taking HTTPS from users and an nghttpx edge beside the target,
  # one HTTP/2 connection over TLS between them, with tether's own flow-control windows.
  edge_port=$(free_port); hub_port=$(free_port)
  window=$((2 * 1024 * 1024)); conn_window=$((16 * 1024 * 1024))
  start nghttpx-edge nghttpx --conf=/dev/null --frontend="127.0.0.1,$edge_port" --backend="127.0.0.1,$target_port" \
    --frontend-http2-window-size=$window --frontend-http2-connection-window-size=$conn_window \
    --no-ocsp --workers=1 --log-level=WARN "$certs/stub.key" "$certs/stub.crt"
  edge_pid=$started
  start nghttpx-hub nghttpx --conf=/dev/null --frontend="127.0.0.1,$hub_port" --backend="127.0.0.1,$edge_port;;proto=h2;tls;sni=localhost" \
    --cacert "$certs/ca.crt" --backend-http2-window-size=$window --backend-http2-connection-window-size=$conn_window \
    --backend-connections-per-host=1 --no-ocsp --workers=1 --log-level=WARN "$certs/stub.key" "$certs/stub.crt"
  hub_pid=$started
  nghttpx_up() { curl -s -o /dev/null --noproxy '*' --cacert "$certs/ca.crt" "https://localhost:$hub_port/small"; }
  poll_until "$hub_pid" 30 nghttpx_up || die "the nghttpx tunnel did not answer (logs: $work/nghttpx-*.log)"

  # download NAME URL PIDS...: one download of bytes_mb MB; appends "mb_per_s cpu_s_per_gb" to $work/bytes-NAME.
  download() {
    local name=$1 url=$2; shift 2
    local before after
    before=$(ticks "$@")
    "$tether" bench --target "$url" --token "$token" --ca "$certs/ca.crt" --mix list \
      --list-path "/list?bytes=$((bytes_mb * 1000000))" -c 1 -n 1 --timeout 120s --json --quiet >"$work/dl.json"
    after=$(ticks "$@")
    python3 - "$work/dl.json" "$((after - before))" "$hz" "$bytes_mb" "$#" >>"$work/bytes-$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); ticks, hz, mb, procs = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if d.get("errors") or d["kinds"]["list"]["count"] != 1:
    sys.exit(f"the download failed: {d}")
print(d["mb_per_s"], (ticks / hz) / (mb / 1000) if procs else "nan")
PY
  }
  for round in $(seq 1 "$rounds"); do
    log "bytes: round $round of $rounds"
    download quic "$quic_url" "${quic_pids[@]}"
    download tcp "$tcp_url" "${tcp_pids[@]}"
    download nghttpx "https://127.0.0.1:$hub_port" "$hub_pid" "$edge_pid"
    download direct "http://127.0.0.1:$target_port"
  done
  python3 - "$work" "$bytes_mb" >"$work/bytes.json" <<'PY'
import json, statistics, sys
work, mb = sys.argv[1], int(sys.argv[2])
out = {"mb": mb}
for name in ("quic", "tcp", "nghttpx", "direct"):
    rows = [line.split() for line in open(f"{work}/bytes-{name}")]
    out[name] = {"mb_per_s": statistics.median(float(r[0]) for r in rows),
                 "cpu_s_per_gb": statistics.median(float(r[1]) for r in rows), "runs": len(rows)}
print(json.dumps(out))
PY
  record bytes "$(cat "$work/bytes.json")"
  stop_pid "$hub_pid" nghttpx-hub; stop_pid "$edge_pid" nghttpx-edge
  for p in "${tcp_pids[@]}" "${quic_pids[@]}"; do stop_pid "$p" bytes; done
fi

# ---- 1, 2 and 9: across an emulated link (root) --------------------------------------------
if ! want link && ! want beside && ! want firewall; then
  :
elif [ "$(id -u)" != 0 ] || [ ! -e /dev/net/tun ]; then
  log "SKIPPED tunnel-vs-direct, QUIC-vs-TCP and the firewall cell: they need root and /dev/net/tun (tether link)"
else
  index=$(( ($$ % 200) + 20 ))
  ns=tether-bench-$index
  link_up() { # loss% [one-way delay, default 10ms] [rate per direction, default 0: none]
    spawn link "$work/link.log" env TETHER_LOG=info "$tether" link --name "$ns" --index "$index" \
      --loss "$1" --delay "${2:-10ms}" --rate "${3:-0}" --seed 7 --lifetime 30m
    link_pid=$SPAWNED_PID
    wait_log link "link up" "$link_pid" >/dev/null
    spawn stubns "$work/stubns.log" env TETHER_LOG=info ip netns exec "$ns" "$tether" stub --certs "$certs" \
      --quic-listen 0.0.0.0:0 --https-listen 0.0.0.0:0 --audit-log off --max-requests-per-user 0
    stub_pid=$SPAWNED_PID
    line=$(wait_log stubns "stub listening" "$stub_pid")
    quic_port=$(port "$(field "$line" quic)")
    https_port=$(port "$(field "$line" https)")
  }
  link_down() { stop_pid "$stub_pid" stubns; stop_pid "$link_pid" link; }
  agent_up() { # transport
    spawn agentns "$work/agentns.log" env TETHER_LOG=info "$tether" agent --certs "$certs" --cluster dev \
      --name agent-0 --stub "10.201.$index.1:$quic_port" --server-name localhost \
      --upstream "http://127.0.0.1:$target_port" --transport "$1"
    agent_pid=$SPAWNED_PID
    wait_log agentns "connected to stub" "$agent_pid" >/dev/null
  }
  # bench inside the stub's namespace: through the stub, or straight across the link.
  nsbench() { ip netns exec "$ns" "$tether" bench --quiet --json "$@"; }
  through=(--target "https://127.0.0.1:PORT/clusters/dev" --token "$token" --ca "$certs/ca.crt")
  direct=(--target "http://10.201.$index.2:$target_port")

  if want link; then
  log "tunnel vs direct across a 20 ms RTT link without loss"
  link_up 0
  agent_up quic
  t=("${through[@]/PORT/$https_port}")
  nsbench "${direct[@]}" --mix small -c 4 -d "${secs}s" >"$work/direct-small.json"
  nsbench "${t[@]}" --mix small -c 4 -d "${secs}s" >"$work/tunnel-small.json"
  nsbench "${direct[@]}" --mix list --list-path "/list?bytes=20000000" -c 4 -d "${secs}s" >"$work/direct-bulk.json"
  nsbench "${t[@]}" --mix list --list-path "/list?bytes=20000000" -c 4 -d "${secs}s" >"$work/tunnel-bulk.json"
  record direct_small "$(cat "$work/direct-small.json")"; record tunnel_small "$(cat "$work/tunnel-small.json")"
  record direct_bulk "$(cat "$work/direct-bulk.json")"; record tunnel_bulk "$(cat "$work/tunnel-bulk.json")"
  stop_pid "$agent_pid" agentns; link_down
  fi # want link

  if want beside; then
  # What a bulk download does to the requests beside it on the same agent connection, where CPU
  # and not the link is the limit: 5% loss and 1 ms each way (a near path), so the download runs
  # as fast as stub and agent can move it. One small GET at a time, alone and then beside the
  # download. (With no delay at all a GET takes 0.2 ms direct, and what it measures beside a
  # download is the scheduler of two busy cores: 3-20x for plain HTTP as well.)
  # beside NAME: small GETs through the array gets, alone and then beside a full-speed 10 MB
  # download through the array bulk; recorded as beside_NAME.
  beside() {
    local name=$1
    log "$name at 5% loss, 1 ms each way${rate:+, $rate}: small GETs alone, then beside a full-speed download"
    nsbench "${gets[@]}" --mix small -c 1 -d "${secs}s" >"$work/alone-$name.json"
    nsbench "${bulk[@]}" --mix list --list-path "/list?bytes=10000000" -c 1 -d "$((secs + 2))s" --timeout 60s \
      >"$work/beside-bulk-$name.json" &
    bulk_pid=$!
    sleep 1 # a benchmark, not a test: the download is under way when the GETs start
    nsbench "${gets[@]}" --mix small -c 1 -d "${secs}s" >"$work/beside-$name.json"
    wait "$bulk_pid" || true
    record "beside_$name" "{\"alone\": $(cat "$work/alone-$name.json"), \"beside\": $(cat "$work/beside-$name.json"), \"bulk\": $(cat "$work/beside-bulk-$name.json")}"
  }
  rate=
  link_up 5 1ms
  # The same without a tunnel: plain HTTP across the link, a TCP connection each for the GETs
  # and the download, so what the link itself and the machine's CPU do to the GETs shows apart.
  gets=("${direct[@]}"); bulk=("${direct[@]}")
  beside direct
  for transport in quic tcp; do
    agent_up "$transport"
    gets=("${through[@]/PORT/$https_port}"); bulk=("${gets[@]}")
    beside "$transport"
    if [ "$transport" = quic ]; then
      # The floor for the tunnel: the GETs through a second stub with an agent of its own (same
      # namespace, same link) while the download runs through the first, so that only the
      # machine's two cores and the link are shared, not a process or a connection.
      spawn stub2 "$work/stub2.log" env TETHER_LOG=info ip netns exec "$ns" "$tether" stub --certs "$certs" \
        --quic-listen 0.0.0.0:0 --https-listen 0.0.0.0:0 --audit-log off --max-requests-per-user 0
      stub2_pid=$SPAWNED_PID
      line=$(wait_log stub2 "stub listening" "$stub2_pid")
      spawn agent2 "$work/agent2.log" env TETHER_LOG=info "$tether" agent --certs "$certs" --cluster dev \
        --name agent-1 --stub "10.201.$index.1:$(port "$(field "$line" quic)")" --server-name localhost \
        --upstream "http://127.0.0.1:$target_port" --transport quic
      agent2_pid=$SPAWNED_PID
      wait_log agent2 "connected to stub" "$agent2_pid" >/dev/null
      gets=("${through[@]/PORT/$(port "$(field "$line" https)")}")
      beside quic_apart
      stop_pid "$agent2_pid" agent2; stop_pid "$stub2_pid" stub2
    fi
    stop_pid "$agent_pid" agentns
  done
  link_down
  # The same link with a bottleneck, as a real uplink has: 400 Mbit/s each way, below what stub
  # and agent can move here, so the download fills the link's queue (1,000 packets) instead of
  # the cores, and what the GETs wait for is what the download keeps queued in front of them.
  rate=400mbit
  link_up 5 1ms "$rate"
  gets=("${direct[@]}"); bulk=("${direct[@]}")
  beside direct_bottleneck
  agent_up quic
  gets=("${through[@]/PORT/$https_port}"); bulk=("${gets[@]}")
  beside quic_bottleneck
  stop_pid "$agent_pid" agentns
  link_down
  fi # want beside

  if want link; then
  for loss in 0 1 5; do
    link_up "$loss"
    for transport in quic tcp; do
      log "$transport at $loss% loss, 20 ms RTT: small GETs beside a bulk transfer"
      agent_up "$transport"
      t=("${through[@]/PORT/$https_port}")
      nsbench "${t[@]}" --mix list --list-path "/list?bytes=5000000" -c 1 -d "${secs}s" --timeout 60s \
        >"$work/bulk-$transport-$loss.json" &
      bulk_pid=$!
      sleep 1
      nsbench "${t[@]}" --mix small -c 4 -d "$((secs - 2))s" >"$work/small-$transport-$loss.json"
      wait "$bulk_pid" || true
      record "small_${transport}_$loss" "$(cat "$work/small-$transport-$loss.json")"
      # Goodput counts whole 5 MB downloads only, so it slightly understates the last seconds.
      record "bulk_${transport}_$loss" "$(cat "$work/bulk-$transport-$loss.json")"
      stop_pid "$agent_pid" agentns
    done
    link_down
  done
  fi # want link

  # 9. Time from an agent's start to its first served request behind a firewall on the stub's
  # side that drops UDP to the stub's port, or rejects it (ICMP), or lets it through (where the
  # race of the two transports must cost nothing: QUIC still wins). 20 ms RTT, no loss; the
  # firewall is an nftables table in the link's namespace, gone with it.
  if want firewall; then
    if ! command -v nft >/dev/null; then
      log "SKIPPED the firewall cell: no nft (scripts/test.sh installs nftables as root)"
    else
      link_up 0
      t=("${through[@]/PORT/$https_port}")
      rounds=$($quick && echo 1 || echo 3)
      for udp in dropped rejected open; do
        ip netns exec "$ns" nft delete table inet tbench 2>/dev/null || true
        if [ "$udp" != open ]; then
          verdict=$([ "$udp" = dropped ] && echo drop || echo reject)
          ip netns exec "$ns" nft add table inet tbench
          ip netns exec "$ns" nft add chain inet tbench in '{ type filter hook input priority 0 ; }'
          ip netns exec "$ns" nft add rule inet tbench in udp dport "$quic_port" "$verdict"
        fi
        for round in $(seq 1 "$rounds"); do
          log "firewall: UDP $udp, round $round of $rounds: agent start to first served request"
          started=$(date +%s%N)
          spawn agentns "$work/agentns.log" env TETHER_LOG=info "$tether" agent --certs "$certs" --cluster dev \
            --name agent-0 --stub "10.201.$index.1:$quic_port" --server-name localhost \
            --upstream "http://127.0.0.1:$target_port"
          agent_pid=$SPAWNED_PID
          # A benchmark, not a test: ask until a request is served (each ask is one GET).
          until nsbench "${t[@]}" --mix small -n 1 -c 1 --timeout 5s 2>/dev/null | python3 -c \
            'import json,sys; d=json.load(sys.stdin); sys.exit(0 if not d.get("errors") and d["kinds"]["small"]["count"] == 1 else 1)'; do
            (( $(date +%s%N) - started < 60000000000 )) || { log "firewall: UDP $udp: nothing served in 60 s"; break; }
          done
          served_ms=$(( ($(date +%s%N) - started) / 1000000 ))
          transport=$(grep -m1 'connected to stub' "$work/agentns.log" | grep -o 'transport=[a-z]*' | cut -d= -f2)
          echo "$served_ms $transport" >>"$work/firewall-$udp"
          stop_pid "$agent_pid" agentns
        done
      done
      ip netns exec "$ns" nft delete table inet tbench 2>/dev/null || true
      link_down
      python3 - "$work" >"$work/firewall.json" <<'PY'
import json, statistics, sys
out = {}
for udp in ("dropped", "rejected", "open"):
    rows = [line.split() for line in open(f"{sys.argv[1]}/firewall-{udp}")]
    out[udp] = {"ms": statistics.median(int(r[0]) for r in rows), "transport": rows[-1][1] if rows[-1][1:] else "?",
                "runs": len(rows)}
print(json.dumps(out))
PY
      record firewall "$(cat "$work/firewall.json")"
    fi
  fi
fi

# ---- report --------------------------------------------------------------------------------
cp "$results" "$out/results.json"
python3 - "$out/results.json" "$out/results.md" "$secs" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); out = open(sys.argv[2], "w"); secs = sys.argv[3]
def k(r, kind, key): return r.get("kinds", {}).get(kind, {}).get(key, float("nan"))
w = lambda s="": out.write(s + "\n")
w("| measure | value | target |"); w("|---|---|---|")
if "direct_small" in d:
    ds, ts = k(d["direct_small"], "small", "p50_ms"), k(d["tunnel_small"], "small", "p50_ms")
    w(f"| small GET p50, tunnel / direct (20 ms RTT, no loss) | {ts:.2f} / {ds:.2f} ms = **{ts/ds:.2f}x** | at most 1.3x |")
    db, tb = d["direct_bulk"]["mb_per_s"], d["tunnel_bulk"]["mb_per_s"]
    w(f"| bulk throughput, tunnel / direct | {tb:.1f} / {db:.1f} MB/s = **{tb/db:.2f}x** | at least 0.6x |")
    q, t = k(d["small_quic_5"], "small", "p99_ms"), k(d["small_tcp_5"], "small", "p99_ms")
    w(f"| small GET p99 beside bulk at 5% loss, QUIC / TCP | {q:.1f} / {t:.1f} ms = **{q/t:.2f}** | at most 0.3 |")
s = d.get("swarm", {})
if s.get("stub_kib_per_agent") is not None:
    w(f"| stub memory per agent connection ({s['connected']} simulated agents) | **{s['stub_kib_per_agent']:.0f} KiB** | under 200 KiB |")
st = d.get("streams", {})
if st:
    w(f"| memory per open stream ({st['held']} held watches) | stub {st['stub_kib_per_stream']} KiB, agent {st['agent_kib_per_stream']} KiB | |")
h = d.get("hub_swarm")
if h:
    each = ", ".join(f"{x['replica'] or x['stub']} {x['kib_per_agent']:.0f} KiB" for x in h["stubs"] if x.get("kib_per_agent") is not None)
    w(f"| three replicas: stub memory per agent connection ({h['connected']} of {h['agents']} simulated agents) | **{h['stub_kib_per_agent']:.0f} KiB** ({each}) | under 200 KiB |")
    w(f"| three replicas: time to connect {h['connected']} simulated agents | {h['connect_s']:.1f} s (a dial: p50 {h['dial_p50_ms']:.0f} ms, p99 {h['dial_p99_ms']:.0f} ms) | |")
    w(f"| the harness's own memory per simulated agent | {h['harness_kib_per_agent']:.0f} KiB ({h['harness_rss_kib'] // 1024} MiB for {h['agents']}) | 20,000 fit |")
if "hub_direct" in d:
    hd, hf = d["hub_direct"], d["hub_forwarded"]
    w(f"| small GETs (16 at a time), forwarding replica / holding replica | {hf['requests_per_s']:.0f} / {hd['requests_per_s']:.0f} req/s = **{hf['requests_per_s']/hd['requests_per_s']:.2f}x**; p50 {k(hf,'small','p50_ms'):.2f} / {k(hd,'small','p50_ms'):.2f} ms | |")
if "stall" in d:
    b = d["stall"]["bench"]; failed = sum(b.get("errors", {}).values())
    w(f"| kill -9 of one of two agent replicas under GETs: slowest request | **{k(b,'small','max_ms'):.0f} ms** ({failed} failed of {k(b,'small','count'):.0f}; the stub suspected it {d['stall']['suspected']}x) | about 2 s at most |")
if "storm" in d and d["storm"].get("storm"):
    st2 = d["storm"]; x = st2["storm"]
    healed = f"**{x['heal_s']:.1f} s**" if x["heal_s"] is not None else "**never healed**"
    fails = ", ".join(f"{n} {r}" for r, n in x["handshake_failures"].items()) or "none"
    stub_side = ", ".join(f"{n} {r}" for r, n in d.get("storm_stub_refusals", {}).items()) or "none"
    w(f"| stub restart under {st2['connected']} simulated agents: until every one is connected again | {healed} ({x['connected_at_end']} connected at the end; {x['redials']} redials; one agent's reconnect p50 {x['reconnect_p50_ms']:.0f} ms, p99 {x['reconnect_p99_ms']:.0f} ms) | no handshake timeouts |")
    w(f"| ... failed dials as the agents saw them / as the stub counted them | {fails} / {stub_side}; UDP datagrams dropped for full socket buffers: {d.get('storm_udp_drops', '?')} | |")
b = d.get("bytes")
if b:
    q, n, tc = b["quic"], b["nghttpx"], b["tcp"]
    w(f"| {b['mb']} MB download on loopback, CPU per GB of stub + agent, tether QUIC / nghttpx HTTP/2 tunnel | {q['cpu_s_per_gb']:.2f} / {n['cpu_s_per_gb']:.2f} s = **{q['cpu_s_per_gb']/n['cpu_s_per_gb']:.2f}x** (TCP fallback {tc['cpu_s_per_gb']:.2f} s) | at most 0.7x |")
    w(f"| ... throughput, tether QUIC / nghttpx | {q['mb_per_s']:.0f} / {n['mb_per_s']:.0f} MB/s = **{q['mb_per_s']/n['mb_per_s']:.2f}x** (TCP fallback {tc['mb_per_s']:.0f}, direct {b['direct']['mb_per_s']:.0f}) | at least 1.3x |")
beside_rows = {
    "quic": ("tether QUIC", "at most 1.3x"),
    "quic_apart": ("through a second stub and agent of their own, the download through the first",
                   "the floor: only the two cores and the link shared"),
    "tcp": ("tether TCP fallback", "at most 1.3x"),
    "direct": ("direct", "no tunnel: what the link and the CPU do"),
    "quic_bottleneck": ("tether QUIC, the link limited to 400 Mbit/s", "at most 1.3x"),
    "direct_bottleneck": ("direct, the link limited to 400 Mbit/s", "no tunnel: what the link's queue does"),
}
for tr, (what, target) in beside_rows.items():
    x = d.get(f"beside_{tr}")
    if x:
        alone, beside = k(x["alone"], "small", "p50_ms"), k(x["beside"], "small", "p50_ms")
        w(f"| small GET p50 beside a full-speed download / alone, {what}, 5% loss, 1 ms each way | {beside:.2f} / {alone:.2f} ms = **{beside/alone:.2f}x** (the download: {x['bulk']['mb_per_s']:.1f} MB/s) | {target} |")
fw = d.get("firewall")
if fw:
    for udp in ("dropped", "rejected", "open"):
        x = fw[udp]
        target = "about 2 s at most" if udp != "open" else "QUIC wins (started first, it waits for nothing)"
        w(f"| agent start to first served request, UDP to the stub {udp} (20 ms RTT, median of {x['runs']}) | **{x['ms'] / 1000:.2f} s** over {x['transport']} | {target} |")
if "reconnect" in d:
    w(f"| first successful request after a stub restart | {d['reconnect']['ms']} ms | about a second |")
if b:
    w(); w(f"CPU per byte, {b['mb']} MB downloads on loopback, median of {b['quic']['runs']} (CPU of the tunnel's two processes; the client and the target are not counted).")
    w(); w("| path | MB/s | CPU s per GB |"); w("|---|---|---|")
    for name, label in (("quic", "tether, QUIC"), ("tcp", "tether, TCP fallback"), ("nghttpx", "nghttpx hub + edge, HTTP/2 over TLS"), ("direct", "direct (no tunnel)")):
        cpu = b[name]["cpu_s_per_gb"]
        w(f"| {label} | {b[name]['mb_per_s']:.0f} | {'-' if cpu != cpu else f'{cpu:.2f}'} |")
if "small_quic_0" in d:
    w(); w(f"QUIC vs TCP fallback, 20 ms RTT, {secs} s per cell: small GETs (4 at a time) while one bulk download shares the tunnel.")
    w(); w("| loss | transport | small p50 ms | small p99 ms | small req/s | bulk MB/s |"); w("|---|---|---|---|---|---|")
    for loss in ("0", "1", "5"):
        for tr in ("quic", "tcp"):
            sm, bu = d[f"small_{tr}_{loss}"], d[f"bulk_{tr}_{loss}"]
            w(f"| {loss}% | {tr} | {k(sm,'small','p50_ms'):.1f} | {k(sm,'small','p99_ms'):.1f} | {sm['requests_per_s']:.0f} | {bu['mb_per_s']:.2f} |")
PY
log "results: $out/results.md"
cat "$out/results.md"

# A chart, if matplotlib is available (installed once into a cached virtualenv).
venv=${XDG_CACHE_HOME:-$HOME/.cache}/tether/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into $venv (once)"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet matplotlib; }; then
    log "no matplotlib: no chart"
  fi
fi
if "$venv/bin/python" -c 'import matplotlib' 2>/dev/null && python3 -c "import json,sys; d=json.load(open('$out/results.json')); sys.exit(0 if {'small_quic_0', 'bytes', 'beside_quic'} & set(d) else 1)"; then
  "$venv/bin/python" - "$out/results.json" "$out/chart.png" <<'PY'
import json, sys
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(open(sys.argv[1])); losses = ["0", "1", "5"]
# One panel per measured thing, for whichever parts ran.
panels = []
if "small_quic_0" in d:
    def quic_vs_tcp(ax, key, title):
        for i, tr in enumerate(("quic", "tcp")):
            ax.bar([j + i * 0.38 for j in range(3)], [key(tr, l) for l in losses], 0.38, label=tr)
        ax.set_xticks([j + 0.19 for j in range(3)], [f"{l}% loss" for l in losses]); ax.legend()
        ax.set_title(title)
    panels.append(lambda ax: quic_vs_tcp(ax, lambda tr, l: d[f"small_{tr}_{l}"]["kinds"]["small"]["p99_ms"],
                                         "20 ms RTT: small GET p99 beside bulk (ms)"))
    panels.append(lambda ax: quic_vs_tcp(ax, lambda tr, l: d[f"bulk_{tr}_{l}"]["mb_per_s"], "20 ms RTT: bulk goodput (MB/s)"))
by = d.get("bytes")
if by:
    names = [n for n in ("quic", "tcp", "nghttpx", "direct") if n in by]
    def bytes_panel(ax, field, title, names):
        ax.bar(names, [by[n][field] for n in names], color=[f"C{i}" for i in range(len(names))]); ax.set_title(title)
    panels.append(lambda ax: bytes_panel(ax, "cpu_s_per_gb", f"CPU s per GB, {by['mb']} MB (loopback)",
                                         [n for n in names if n != "direct"]))
    panels.append(lambda ax: bytes_panel(ax, "mb_per_s", f"throughput MB/s, {by['mb']} MB (loopback)", names))
rows = [(n, d[f"beside_{n}"]) for n in ("quic", "quic_apart", "tcp", "direct", "quic_bottleneck", "direct_bottleneck")
        if f"beside_{n}" in d]
if rows:
    def beside_panel(ax):
        for i, (when, label) in enumerate((("alone", "alone"), ("beside", "beside a download"))):
            ax.bar([j + i * 0.38 for j in range(len(rows))], [x[when]["kinds"]["small"]["p50_ms"] for _, x in rows], 0.38, label=label)
        ax.set_xticks([j + 0.19 for j in range(len(rows))], [n.replace("_", "\n") for n, _ in rows]); ax.legend()
        ax.set_title("5% loss, 1 ms each way: small GET p50 (ms)")
    panels.append(beside_panel)
fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
for draw, ax in zip(panels, axes[0]):
    draw(ax)
fig.suptitle("tether benchmarks"); fig.tight_layout(); fig.savefig(sys.argv[2], dpi=100)
PY
  log "chart: $out/chart.png"
fi
