# luod across a real kexec (crates/luo-vmtest, luod_kexec.rs): a workload's session with a
# large patterned shmem memfd (1 GiB; luo.size=N[K|M|G] on the kernel command line, e.g.
# LUO_VM_APPEND=luo.size=64M, changes it) and a small state memfd goes through luod, which
# forwards it into a kernel session and calls the kexec itself (`luoctl kexec`); the next
# kernel's luod restores it and the workload's next version retrieves it, every byte checked.
# In stage 1, files that cannot cross (a hugetlb memfd, a socket) make `luoctl kexec` refuse,
# and nothing changes.
description="luod forwards a 1 GiB memfd session into the kernel's and kexecs itself; unpreservable files refuse the kexec"
# The guest's memory (the 1 GiB memfd, twice during the kexec) and the whole run's limit.
memory=3G
timeout=600

socket=/run/luod.sock

size() {
    s=$(param luo.size)
    echo "${s:-1G}"
}

# luod in the background, its log on the console (through a pipe: no colours, each line
# marked "luod: "); waits for its socket.
start_luod() {
    rm -f /run/luod.log.fifo
    mkfifo /run/luod.log.fifo
    while IFS= read -r line; do echo "luod: $line"; done </run/luod.log.fifo &
    luod --socket "$socket" >/run/luod.log.fifo 2>&1 &
    luod_pid=$!
    i=0
    while [ ! -S "$socket" ]; do
        kill -0 "$luod_pid" 2>/dev/null || { echo "luod exited before serving"; return 1; }
        [ $i -lt 600 ] || { echo "luod did not make its socket in 60 s"; return 1; }
        sleep 0.1
        i=$((i + 1))
    done
    luoctl --socket "$socket" status
}

# SIGTERM, and luod must exit 0.
stop_luod() {
    kill -TERM "$luod_pid"
    wait "$luod_pid"
    rc=$?
    echo "luod exited $rc"
    [ $rc = 0 ]
}

stage_1() {
    # (d): a hugetlb memfd in the unpreservable session needs huge pages.
    echo 4 >/proc/sys/vm/nr_hugepages
    grep -q '^HugePages_Total: *4$' /proc/meminfo || { grep HugePages /proc/meminfo; return 1; }
    check luod-start start_luod || return 1
    # Returns only on failure: after its checks it runs `luo-kexec --by luoctl ... kexec`, and
    # luod kexecs the machine while the workload still holds its session.
    luo-vmtest luod-kexec --stage 1 --socket "$socket" --size "$(size)" --kexec luo-kexec
    return 1
}

stage_2() {
    check luod-restart start_luod || return 1
    check luod-kexec-retrieve luo-vmtest luod-kexec --stage 2 --socket "$socket" --size "$(size)" ||
        return 1
    check luod-stop stop_luod || return 1
    check luod-kexec-kernel-clean luo-vmtest luod-kexec --stage 2-kernel
}
