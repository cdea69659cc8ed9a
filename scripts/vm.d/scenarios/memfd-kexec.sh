# luod's own memfd test (crates/luo-vmtest): a 32 MiB shmem memfd with a known pattern, its
# size, position and seals, across a real kexec; then one more kexec to see the finished
# session does not come back, and luod itself serving on the twice-kexec'd kernel.
description="a patterned shmem memfd across a real kexec, every byte checked; the finished session stays gone"

stage_1() {
    # Returns only on failure: it runs luo-kexec itself while it holds the session.
    luo-vmtest memfd-kexec --stage 1 --kexec luo-kexec
}

stage_2() {
    check memfd-kexec-stage-2 luo-vmtest memfd-kexec --stage 2
}

stage_3() {
    check memfd-kexec-stage-3 luo-vmtest memfd-kexec --stage 3 || return 1
    check luod-serves luod_serves
}

# luod (static, from the initramfs) starts and answers luoctl.
luod_serves() {
    luod --socket /run/luod.sock &
    pid=$!
    i=0
    while [ ! -S /run/luod.sock ] && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    luoctl --socket /run/luod.sock status
    rc=$?
    kill $pid
    wait $pid
    return $rc
}
