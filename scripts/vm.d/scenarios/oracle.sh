# The kernel as the oracle of luod's emulation: the programs that run against luod through the
# preload library on the host (crates/luo-preload/tests/oracle.rs) run here against the real
# /dev/liveupdate, in the same order, with a real kexec where the host runs `luoctl reboot`:
# the kernel's selftests, the C suite of tests/c, and the agreement script
# (tests/c/agreement.script) through luo_script. The host reads every result from the console
# and compares (docs/compat.md holds the table it makes).
#
# A selftest that fails fails the scenario (the kernel must pass its own tests). A C program or
# a script line is only recorded: whether the kernel agrees with luod is the host's verdict.
. /scenarios/selftests.sh
description="the kernel as oracle: its selftests, the C suite and the agreement script on the real device, across kexecs"
timeout=600

c_two_stage="luo_update_simple luo_stress_sessions luo_stress_files"

# `c NAME CMD...`: one C program, recorded, never failing the stage.
c() {
    check "$@" || true
}

# `agreement PHASE`: the script's lines of that phase (comments and blank lines dropped; the
# phases are separated by the `reboot` line) through luo_script, one answer per line printed
# as `LUO-AGREE PHASE N ANSWER`. Phase 1's interpreter keeps reading from a pipe this shell
# holds open, so that it holds its sessions until the kexec.
agreement() {
    sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' /scenarios/agreement.script |
        awk -v phase="$1" '/^reboot$/ { p++; next } p + 1 == phase' >/tmp/agree-$1.in
    want=$(wc -l </tmp/agree-$1.in)
    if [ "$1" = 1 ]; then
        mkfifo /tmp/agree.fifo
        luo_script </tmp/agree.fifo >/tmp/agree-1.out &
        exec 7>/tmp/agree.fifo
        cat /tmp/agree-1.in >&7
        i=0
        while [ "$(wc -l </tmp/agree-1.out)" -lt "$want" ] && [ $i -lt 200 ]; do
            sleep 0.1
            i=$((i + 1))
        done
    else
        luo_script </tmp/agree-$1.in >/tmp/agree-$1.out
    fi
    n=0
    while read -r answer; do
        n=$((n + 1))
        echo "LUO-AGREE $1 $n $answer"
    done </tmp/agree-$1.out
    echo "agreement phase $1: $n answers to $want lines"
    [ "$n" = "$want" ]
}

stage_1() {
    selftests_stage_1 || return 1
    c c/luo_open_family luo_open_family
    c c/luo_foreign luo_foreign
    c c/luo_rules/stage-1 luo_rules 1
    for p in $c_two_stage; do
        c "c/$p/stage-1" "$p"
    done
    check agreement/phase-1 agreement 1
}

stage_2() {
    selftests_stage_2 || return 1
    c c/luo_rules/stage-2 luo_rules 2
    for p in $c_two_stage; do
        c "c/$p/stage-2" "$p"
    done
    check agreement/phase-2 agreement 2
}

stage_3() {
    c c/luo_rules/stage-3 luo_rules 3
}
