#!/bin/sh
# Counts the syscalls and netlink round trips of one ADD and one DEL
# (bridge and routed mode) of the binary $1, in a private node namespace
# with one pod namespace, after a warm-up ADD that loads the data path.
# Usage (root): [CYCLES=20] bench/syscalls.sh target/debug/cni-ebpf
# (CYCLES: also the mean wall time of that many ADD/DEL cycles.)
set -eu
BIN=$(readlink -f "${1:?binary}")
ID=sc$$
D=/run/cni-ebpf-sc/$ID
NODE=ce-$ID-node
CG=$(awk '$3=="cgroup2"{print $2; exit}' /proc/mounts)/cni-ebpf-sc-$ID
cleanup() {
    for n in $NODE ce-$ID-p0 ce-$ID-p1; do ip netns del $n 2>/dev/null || true; done
    umount "$D/bpf" 2>/dev/null || true
    rmdir "$CG" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && cp -r "$D" /tmp/cni-ebpf-sc-last 2>/dev/null; rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/bin" "$CG"
ln -s "$BIN" "$D/bin/cni-ebpf"
for n in $NODE ce-$ID-p0 ce-$ID-p1; do ip netns add $n; done
nsenter --net=/run/netns/$NODE ip link add up0 type veth peer name up0p
nsenter --net=/run/netns/$NODE ip addr add 192.0.2.1/24 dev up0
nsenter --net=/run/netns/$NODE ip link set up0 up
nsenter --net=/run/netns/$NODE ip link set lo up
nsenter --net=/run/netns/$NODE ip route add default via 192.0.2.2
conf() {
    cat <<J
{"cniVersion":"1.0.0","name":"sc$1","type":"cni-ebpf","mode":"$1","pinPath":"$D/bpf","stateDir":"$D/state","cgroupPath":"$CG","bridge":"cni0","isGateway":true,"isDefaultGateway":true,"ipMasq":true,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.$2.0.0/24"}]],"dataDir":"$D/ipam"}}
J
}
run() { # cmd mode net pod cid [strace args...]
    cmd=$1 mode=$2 net=$3 pod=$4 cid=$5; shift 5
    conf $mode $net | nsenter --net=/run/netns/$NODE env CNI_COMMAND=$cmd CNI_CONTAINERID=$cid \
        CNI_NETNS=/run/netns/ce-$ID-$pod CNI_IFNAME=eth0 CNI_PATH="$D/bin:/usr/lib/cni" \
        "$@" "$BIN" >/dev/null
}
report() { # mode cmd file-prefix
    total=$(awk '$NF=="total"{print $4}' "$3.c")
    nlsock=$(grep -c 'socket(AF_NETLINK' "$3.t" || true)
    sends=$(grep -Ec '^[0-9]+ +(sendto|sendmsg)\(' "$3.t" || true)
    recvs=$(grep -Ec '^[0-9]+ +(recvfrom|recvmsg)\(' "$3.t" || true)
    runtimes=$(awk '$NF=="epoll_create1"{print $4}' "$3.c")
    clones=$(awk '$NF=="clone"||$NF=="clone3"{s+=$4} END{print s+0}' "$3.c")
    printf '%-6s %-3s syscalls %5s  netlink sockets %3s  sends %3s  receives %3s  runtimes %2s  threads %s\n' \
        $1 $2 "$total" "$nlsock" "$sends" "$recvs" "${runtimes:-0}" "$clones"
}
for m in bridge routed; do
    net=$([ $m = bridge ] && echo 21 || echo 22)
    run ADD $m $net p0 warm-$m
    o=$D/$m
    run ADD $m $net p1 c-$m strace -f -c -o "$o-ADD.c"
    run DEL $m $net p1 c-$m strace -f -c -o "$o-DEL.c"
    run ADD $m $net p1 t-$m strace -f -o "$o-ADD.t" -e trace=sendmsg,recvmsg,sendto,recvfrom,socket
    run DEL $m $net p1 t-$m strace -f -o "$o-DEL.t" -e trace=sendmsg,recvmsg,sendto,recvfrom,socket
    report $m ADD "$o-ADD"
    report $m DEL "$o-DEL"
    # Wall time of CYCLES add/delete cycles of one pod (no strace).
    n=${CYCLES:-0} add=0 del=0 i=0
    while [ $i -lt $n ]; do
        t0=$(date +%s%N); run ADD $m $net p1 w$i-$m
        t1=$(date +%s%N); run DEL $m $net p1 w$i-$m
        t2=$(date +%s%N)
        add=$((add + t1 - t0)) del=$((del + t2 - t1)) i=$((i + 1))
    done
    [ $n -eq 0 ] || printf '%-6s mean of %s cycles: ADD %s us  DEL %s us\n' $m $n $((add / n / 1000)) $((del / n / 1000))
    run DEL $m $net p0 warm-$m
done
