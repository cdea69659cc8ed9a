# luod's own memfd test (crates/luo-vmtest): a 32 MiB shmem memfd with a known pattern, its
# size, position and seals, across a real kexec; then one more kexec to see the finished
# session does not come back.
description="a patterned shmem memfd across a real kexec, every byte checked; the finished session stays gone"

stage_1() {
    # Returns only on failure: it runs luo-kexec itself while it holds the session.
    luo-vmtest memfd-kexec --stage 1 --kexec luo-kexec
}

stage_2() {
    check memfd-kexec-stage-2 luo-vmtest memfd-kexec --stage 2
}

stage_3() {
    check memfd-kexec-stage-3 luo-vmtest memfd-kexec --stage 3
}
