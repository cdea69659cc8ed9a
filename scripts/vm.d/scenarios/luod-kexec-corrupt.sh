# luod refuses a corrupt state session (crates/luo-vmtest, luod_kexec_corrupt.rs): stage 1,
# without luod, makes kernel session `luod` with garbage at token 0 (sealed as luod seals its
# state) and the kernel session luod would forward uid 0's session "w" into, with a patterned
# memfd; after the kexec luod must exit non-zero naming the state session, and the workload's
# kernel session is intact. Stage 2 does the same again with the garbage unsealed, for stage 3.
description="luod refuses a corrupt state session after a kexec and leaves the workload's kernel session intact"

stage_1() {
    # Returns only on failure: it runs luo-kexec itself while it holds the sessions.
    luo-vmtest luod-kexec-corrupt --stage 1 --kexec luo-kexec
    return 1
}

stage_2() {
    # Checks luod's refusal, then plants the next round and kexecs (returns only on failure).
    luo-vmtest luod-kexec-corrupt --stage 2 --socket /run/luod.sock --kexec luo-kexec
    return 1
}

stage_3() {
    check luod-refuses-unsealed-state luo-vmtest luod-kexec-corrupt --stage 3 --socket /run/luod.sock
}
