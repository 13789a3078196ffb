# shellcheck shell=bash
#
# Start and stop a Ray cluster inside a SLURM allocation. Sourced by fsnn-ray.sbatch; nothing
# runs at source time. One Ray node per SLURM node: the head on the first node of the
# allocation, a worker on every other node, each a `ray start --block` job step launched in the
# background, stopped again by signalling exactly those steps (never a machine-wide `ray stop`,
# which would also kill another job's Ray on a shared node).
#
# Everything is driven by environment variables, so the same functions run on one machine for
# tests (FSNN_RAY_LAUNCHER=local, FSNN_RAY_HEAD_IP=127.0.0.1, FSNN_RAY_NODES="n0 n1"):
#
#   FSNN_RAY_LAUNCHER      srun (default): `srun --nodes=1 --ntasks=1 --overlap -w NODE CMD`;
#                          local: run CMD here. Every node then gets its own port block
#                          (from FSNN_RAY_PORT) and temp dir so several Ray nodes share one host.
#   FSNN_RAY_NODES         space-separated node names (default: the allocation's nodes,
#                          `scontrol show hostnames "$SLURM_JOB_NODELIST"`; local: "localhost").
#   FSNN_RAY_HEAD_IP       address of the head (default: `hostname --ip-address` on the first
#                          node; local: 127.0.0.1).
#   FSNN_RAY_PORT          GCS port of the head (default 6379).
#   FSNN_RAY_NODE_CPUS     CPUs Ray may use per node (default: SLURM_CPUS_PER_TASK, else
#                          SLURM_CPUS_ON_NODE, else Ray detects).
#   FSNN_RAY_NODE_GPUS     GPUs per node (default: SLURM_GPUS_ON_NODE, else Ray detects).
#   FSNN_RAY_HEAD_CPUS     CPUs the head offers (default: FSNN_RAY_NODE_CPUS).
#   FSNN_RAY_TEMP_DIR      Ray's temp dir root; node i uses $FSNN_RAY_TEMP_DIR/node$i
#                          (default /tmp/fsnn-ray-$SLURM_JOB_ID; keep it short: Ray's unix
#                          socket paths below it must stay under 107 characters).
#   FSNN_RAY_OBJECT_STORE_BYTES  object store size per node (default: Ray's choice).
#   FSNN_RAY_INCLUDE_DASHBOARD   true|false (default false; true needs ray[default]).
#   FSNN_RAY_HEAD_ARGS, FSNN_RAY_WORKER_ARGS  extra `ray start` arguments (split on spaces).
#   FSNN_RAY_WAIT_TIMEOUT  seconds to wait for all nodes to join (default 300).
#   FSNN_RAY_STOP_GRACE    seconds between SIGTERM and SIGKILL when stopping (default 30).
#   FSNN_RAY_BIN, FSNN_PYTHON  the `ray` and `python` to use (default: ray, python3 on PATH).
#   FSNN_RAY_AUTH          token (default) | disabled. With token, Ray's token authentication
#                          is on (RAY_AUTH_MODE=token) and, unless RAY_AUTH_TOKEN is already
#                          set, a fresh random token for this job is exported; srun passes it
#                          to every node and the driver inherits it, and it is never written
#                          to disk. Anyone else on the network then cannot use the cluster.
#
# After fsnn_ray_start, FSNN_RAY_ADDRESS (also exported as RAY_ADDRESS) is "head_ip:port".

FSNN_RAY_PIDS=()

fsnn_ray_log() {
    printf '[fsnn-ray %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

fsnn_ray_die() {
    fsnn_ray_log "error: $*"
    return 1
}

# Fill in defaults and check them. Call once before anything else.
fsnn_ray_config() {
    : "${FSNN_RAY_LAUNCHER:=srun}"
    : "${FSNN_RAY_PORT:=6379}"
    : "${FSNN_RAY_BIN:=ray}"
    : "${FSNN_PYTHON:=python3}"
    : "${FSNN_RAY_WAIT_TIMEOUT:=300}"
    : "${FSNN_RAY_STOP_GRACE:=30}"
    : "${FSNN_RAY_INCLUDE_DASHBOARD:=false}"
    : "${FSNN_RAY_TEMP_DIR:=/tmp/fsnn-ray-${SLURM_JOB_ID:-$$}}"
    : "${FSNN_RAY_NODE_CPUS:=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}}"
    : "${FSNN_RAY_NODE_GPUS:=${SLURM_GPUS_ON_NODE:-}}"
    : "${FSNN_RAY_HEAD_CPUS:=${FSNN_RAY_NODE_CPUS}}"
    : "${FSNN_RAY_AUTH:=token}"

    case "$FSNN_RAY_LAUNCHER" in
        srun)
            command -v srun >/dev/null || fsnn_ray_die "srun not found (not in a SLURM job?)" || return 1
            if [[ -z "${FSNN_RAY_NODES:-}" ]]; then
                [[ -n "${SLURM_JOB_NODELIST:-}" ]] || fsnn_ray_die "SLURM_JOB_NODELIST is not set" || return 1
                FSNN_RAY_NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr '\n' ' ')
            fi
            ;;
        local)
            : "${FSNN_RAY_NODES:=localhost}"
            : "${FSNN_RAY_HEAD_IP:=127.0.0.1}"
            ;;
        *)
            fsnn_ray_die "FSNN_RAY_LAUNCHER must be srun or local, not '$FSNN_RAY_LAUNCHER'"
            return 1
            ;;
    esac
    case "$FSNN_RAY_AUTH" in
        token)
            export RAY_AUTH_MODE=token
            if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
                RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
                export RAY_AUTH_TOKEN
            fi
            ;;
        disabled) export RAY_AUTH_MODE=disabled ;;
        *)
            fsnn_ray_die "FSNN_RAY_AUTH must be token or disabled, not '$FSNN_RAY_AUTH'"
            return 1
            ;;
    esac
    read -r -a FSNN_RAY_NODE_LIST <<<"$FSNN_RAY_NODES"
    ((${#FSNN_RAY_NODE_LIST[@]} > 0)) || fsnn_ray_die "no nodes in FSNN_RAY_NODES" || return 1
    [[ "$FSNN_RAY_PORT" =~ ^[0-9]+$ ]] || fsnn_ray_die "FSNN_RAY_PORT is not a number" || return 1
    command -v "$FSNN_RAY_BIN" >/dev/null || fsnn_ray_die "'$FSNN_RAY_BIN' not found" || return 1
    export FSNN_RAY_NODES FSNN_RAY_PORT FSNN_RAY_TEMP_DIR
}

# Run "$@" on node $1 in the background and remember its pid.
fsnn_ray_launch() {
    local node=$1
    shift
    case "$FSNN_RAY_LAUNCHER" in
        srun)
            local step=(srun --nodes=1 --ntasks=1 --overlap -w "$node")
            # Since Slurm 22.05 srun no longer inherits --cpus-per-task from the batch job.
            [[ -n "$FSNN_RAY_NODE_CPUS" ]] && step+=(--cpus-per-task="$FSNN_RAY_NODE_CPUS")
            "${step[@]}" "$@" &
            ;;
        local)
            # its own process group, so stopping it also reaches the per-node agents Ray starts
            setsid "$@" &
            ;;
    esac
    FSNN_RAY_PIDS+=("$!")
}

# Run "$@" on node $1 in the foreground and print its output.
fsnn_ray_on_node() {
    local node=$1
    shift
    if [[ "$FSNN_RAY_LAUNCHER" == srun ]]; then
        srun --nodes=1 --ntasks=1 --overlap -w "$node" "$@"
    else
        "$@"
    fi
}

# `ray start` arguments shared by the head and the workers of node index $1.
fsnn_ray_node_args() {
    local index=$1 cpus=$2
    FSNN_RAY_ARGS=(--block --disable-usage-stats --temp-dir="$FSNN_RAY_TEMP_DIR/node$index")
    [[ -n "$cpus" ]] && FSNN_RAY_ARGS+=(--num-cpus="$cpus")
    [[ -n "$FSNN_RAY_NODE_GPUS" ]] && FSNN_RAY_ARGS+=(--num-gpus="$FSNN_RAY_NODE_GPUS")
    [[ -n "${FSNN_RAY_OBJECT_STORE_BYTES:-}" ]] &&
        FSNN_RAY_ARGS+=(--object-store-memory="$FSNN_RAY_OBJECT_STORE_BYTES")
    if [[ "$FSNN_RAY_LAUNCHER" == local ]]; then
        # Several Ray nodes on one host: give each a block of 100 ports above FSNN_RAY_PORT.
        local base=$((FSNN_RAY_PORT + 100 * (index + 1)))
        FSNN_RAY_ARGS+=(
            --node-manager-port=$((base + 1))
            --object-manager-port=$((base + 2))
            --dashboard-agent-listen-port=$((base + 3))
            --dashboard-agent-grpc-port=$((base + 4))
            --runtime-env-agent-port=$((base + 5))
            --metrics-export-port=$((base + 6))
            --min-worker-port=$((base + 10))
            --max-worker-port=$((base + 99))
        )
    fi
    return 0
}

# Wait until something listens on host $1 port $2, or fail after $3 seconds.
fsnn_ray_wait_port() {
    local host=$1 port=$2 timeout=$3 start=$SECONDS
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
        ((SECONDS - start < timeout)) || fsnn_ray_die "nothing listens on $host:$port after ${timeout}s" || return 1
        fsnn_ray_check_alive || return 1
        sleep 1
    done
}

# Fail if a launched `ray start` step has already exited.
fsnn_ray_check_alive() {
    local pid stat
    for pid in "${FSNN_RAY_PIDS[@]}"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || stat=""
        stat=${stat##*) }
        if [[ -z "$stat" || "$stat" == Z* ]]; then
            fsnn_ray_die "a Ray start step (pid $pid) exited early; see its output above"
            return 1
        fi
    done
}

fsnn_ray_start_head() {
    local head=${FSNN_RAY_NODE_LIST[0]}
    if [[ -z "${FSNN_RAY_HEAD_IP:-}" ]]; then
        FSNN_RAY_HEAD_IP=$(fsnn_ray_on_node "$head" hostname --ip-address | awk '{print $1}')
        [[ -n "$FSNN_RAY_HEAD_IP" ]] || fsnn_ray_die "could not resolve the IP of $head" || return 1
    fi
    FSNN_RAY_ADDRESS="$FSNN_RAY_HEAD_IP:$FSNN_RAY_PORT"
    export FSNN_RAY_HEAD_IP FSNN_RAY_ADDRESS
    export RAY_ADDRESS=$FSNN_RAY_ADDRESS

    fsnn_ray_node_args 0 "$FSNN_RAY_HEAD_CPUS"
    local args=("${FSNN_RAY_ARGS[@]}" --head --port="$FSNN_RAY_PORT")
    args+=(--include-dashboard="$FSNN_RAY_INCLUDE_DASHBOARD")
    # Ray replaces a loopback --node-ip-address by the host's routable address, so on one host
    # (local) it is left to Ray: inside a network namespace with only `lo`, that is 127.0.0.1.
    [[ "$FSNN_RAY_LAUNCHER" == local ]] || args+=(--node-ip-address="$FSNN_RAY_HEAD_IP")
    local extra=()
    read -r -a extra <<<"${FSNN_RAY_HEAD_ARGS:-}"
    fsnn_ray_log "starting Ray head on $head at $FSNN_RAY_ADDRESS"
    fsnn_ray_launch "$head" "$FSNN_RAY_BIN" start "${args[@]}" "${extra[@]}"
    fsnn_ray_wait_port "$FSNN_RAY_HEAD_IP" "$FSNN_RAY_PORT" "$FSNN_RAY_WAIT_TIMEOUT"
}

fsnn_ray_start_workers() {
    local i node extra=()
    read -r -a extra <<<"${FSNN_RAY_WORKER_ARGS:-}"
    for ((i = 1; i < ${#FSNN_RAY_NODE_LIST[@]}; i++)); do
        node=${FSNN_RAY_NODE_LIST[$i]}
        fsnn_ray_node_args "$i" "$FSNN_RAY_NODE_CPUS"
        fsnn_ray_log "starting Ray worker $i on $node"
        fsnn_ray_launch "$node" "$FSNN_RAY_BIN" start "${FSNN_RAY_ARGS[@]}" \
            --address="$FSNN_RAY_ADDRESS" "${extra[@]}"
    done
}

# Wait until $1 (default: all) nodes are alive in the cluster, or fail after
# FSNN_RAY_WAIT_TIMEOUT seconds; also fails as soon as a `ray start` step dies.
fsnn_ray_wait_for_nodes() {
    local want=${1:-${#FSNN_RAY_NODE_LIST[@]}}
    fsnn_ray_log "waiting for $want Ray node(s) to join (timeout ${FSNN_RAY_WAIT_TIMEOUT}s)"
    # `timeout` as well: ray.init itself may block while the GCS is unreachable.
    timeout --kill-after=10 "$((FSNN_RAY_WAIT_TIMEOUT + 30))" \
        "$FSNN_PYTHON" - "$FSNN_RAY_ADDRESS" "$want" "$FSNN_RAY_WAIT_TIMEOUT" "${FSNN_RAY_PIDS[@]}" <<'PY'
import os
import sys
import time

import ray

address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pids = [int(p) for p in sys.argv[4:]]


def step_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


deadline = time.monotonic() + timeout
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
try:
    while True:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= want:
            cpus = sum(n["Resources"].get("CPU", 0) for n in alive)
            gpus = sum(n["Resources"].get("GPU", 0) for n in alive)
            print(f"[fsnn-ray] {len(alive)} node(s) up: {cpus:g} CPU, {gpus:g} GPU", file=sys.stderr)
            break
        dead = [p for p in pids if not step_alive(p)]
        if dead:
            sys.exit(f"[fsnn-ray] Ray start step(s) {dead} exited; {len(alive)}/{want} nodes joined")
        if time.monotonic() > deadline:
            sys.exit(f"[fsnn-ray] only {len(alive)}/{want} nodes joined after {timeout:g}s")
        time.sleep(1)
finally:
    ray.shutdown()
os._exit(0)
PY
}

# Start the whole cluster: head, workers, wait for every node.
fsnn_ray_start() {
    fsnn_ray_config || return 1
    mkdir -p "$FSNN_RAY_TEMP_DIR" 2>/dev/null || true
    fsnn_ray_start_head || return 1
    fsnn_ray_start_workers || return 1
    fsnn_ray_wait_for_nodes || return 1
}

# The `fsnn train` command line for this cluster, in the array FSNN_TRAIN_ARGV: one Ray Train
# worker per GPU (FSNN_RAY_NODE_GPUS per node) with --gpu, else one per node; FSNN_NUM_WORKERS
# overrides the count. Uses FSNN_CONFIG, FSNN_STORAGE, MLFLOW_TRACKING_URI and FSNN_TRAIN_ARGS.
fsnn_ray_train_argv() {
    local gpus=${FSNN_RAY_NODE_GPUS:-0} nodes=${#FSNN_RAY_NODE_LIST[@]} workers extra=()
    if [[ -n "${FSNN_NUM_WORKERS:-}" ]]; then
        workers=$FSNN_NUM_WORKERS
    elif ((gpus > 0)); then
        workers=$((gpus * nodes))
    else
        workers=$nodes
    fi
    FSNN_TRAIN_ARGV=(fsnn train "$FSNN_CONFIG" --address "$FSNN_RAY_ADDRESS"
        --num-workers "$workers")
    ((gpus > 0)) && FSNN_TRAIN_ARGV+=(--gpu)
    [[ -n "${FSNN_STORAGE:-}" ]] && FSNN_TRAIN_ARGV+=(--storage "$FSNN_STORAGE")
    [[ -n "${MLFLOW_TRACKING_URI:-}" ]] && FSNN_TRAIN_ARGV+=(--tracking-uri "$MLFLOW_TRACKING_URI")
    read -r -a extra <<<"${FSNN_TRAIN_ARGS:-}"
    FSNN_TRAIN_ARGV+=("${extra[@]}")
    return 0
}

# Stop the Ray steps this shell started: SIGTERM (ray start --block then stops its node's
# processes), SIGKILL after FSNN_RAY_STOP_GRACE seconds. Safe to call more than once.
fsnn_ray_stop() {
    ((${#FSNN_RAY_PIDS[@]} > 0)) || return 0
    local pids=("${FSNN_RAY_PIDS[@]}") i watchdog
    FSNN_RAY_PIDS=()
    fsnn_ray_log "stopping Ray (${#pids[@]} node(s))"
    # Workers first, the head last.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    (
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        sleep "${FSNN_RAY_STOP_GRACE:-30}" &
        sleeper=$!
        wait "$sleeper"
        kill -KILL "${pids[@]}" 2>/dev/null
    ) &
    watchdog=$!
    wait "${pids[@]}" 2>/dev/null || true
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
    if [[ "$FSNN_RAY_LAUNCHER" == local ]]; then
        # node agents (dashboard, runtime env) can outlive `ray start --block`: end the groups
        for i in "${pids[@]}"; do
            kill -KILL -- "-$i" 2>/dev/null || true
        done
    fi
    fsnn_ray_log "Ray stopped"
}
