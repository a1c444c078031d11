#!/usr/bin/env bash
# The figures of `cargo xtask bench` on two-node KinD clusters: cni-ebpf
# (flannel mode, installed by deploy/cni-ebpf.yaml) against KinD's default
# CNI (kindnet + portmap). Servers sit behind hostPorts on the worker, the
# client runs on the control-plane node and dials the worker's address.
#
#   bench/kind/run.sh [SECONDS]        (needs docker, kind, kubectl, network)
#
# Results: bench/kind/results/<cluster>.txt and a summary on stdout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)
SECS=${1:-10}
IMAGE=localhost/cni-ebpf:0.1.0
BENCH_IMAGE=localhost/cni-ebpf-bench:1
FLANNEL=https://github.com/flannel-io/flannel/releases/download/v0.26.7/kube-flannel.yml
CLUSTERS=(cni-ebpf default)

for tool in docker kind kubectl; do
    command -v "$tool" >/dev/null || { echo "run.sh needs $tool" >&2; exit 1; }
done

cleanup() {
    for c in "${CLUSTERS[@]}"; do kind delete cluster --name "bench-$c" || true; done
}
trap cleanup EXIT

# Images: the plugin (static binary, FROM scratch) and the benchmark tools.
(cd "$ROOT" && cargo xtask image --no-build-image)
docker build -f "$ROOT/deploy/Containerfile" -t "$IMAGE" "$ROOT/target/image"
docker build -f Containerfile.bench -t "$BENCH_IMAGE" .

mkdir -p results

# create_cluster NAME: the cluster, images loaded, its network up, nodes labelled.
create_cluster() {
    local name=$1 ctx="kind-bench-$1"
    kind create cluster --name "bench-$name" --config "kind-$name.yaml" --wait 120s
    kind load docker-image --name "bench-$name" "$BENCH_IMAGE"
    if [ "$name" = cni-ebpf ]; then
        kind load docker-image --name "bench-$name" "$IMAGE"
        kubectl --context "$ctx" apply -f "$FLANNEL"
        kubectl --context "$ctx" apply -f "$ROOT/deploy/cni-ebpf.yaml"
        kubectl --context "$ctx" -n kube-system rollout status ds/cni-ebpf --timeout 180s
    fi
    kubectl --context "$ctx" wait --for=condition=Ready nodes --all --timeout 180s
    kubectl --context "$ctx" label node "bench-$name-worker" bench=server
    kubectl --context "$ctx" label node "bench-$name-control-plane" bench=client
}

# measure NAME: the three figures from the client to the worker's hostPorts.
measure() {
    local name=$1 ctx="kind-bench-$1" out="results/$1.txt" node
    kubectl --context "$ctx" apply -f workload.yaml
    kubectl --context "$ctx" wait --for=condition=Ready pod/bench-server pod/bench-client --timeout 180s
    node=$(kubectl --context "$ctx" get node "bench-$name-worker" \
        -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
    local run=(kubectl --context "$ctx" exec bench-client --)
    sleep 2 # the servers in the pod start listening
    {
        echo "== $name: worker $node"
        "${run[@]}" python3 /crr.py client "$node" 8080 "$SECS"
        "${run[@]}" sockperf ping-pong --tcp -i "$node" -p 11111 -m 64 -t "$SECS"
        "${run[@]}" iperf3 -c "$node" -p 5201 -t "$SECS"
    } | tee "$out"
}

for c in "${CLUSTERS[@]}"; do
    create_cluster "$c"
    measure "$c"
    kind delete cluster --name "bench-$c"
done

# Summary: the same lines from both runs, side by side. sockperf reports
# one-way latency (half the round trip), as `cargo xtask bench` notes.
echo
for c in "${CLUSTERS[@]}"; do
    echo "== $c"
    grep -E 'connections/s|percentile (50|99)\.000 =|ReceivedMessages=|receiver' "results/$c.txt" || true
done
