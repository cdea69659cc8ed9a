# luod as a host runs it: Debian's systemd as PID 1, luod.socket and luod.service as packaged
# (packaging/systemd). A workload hands a 64 MiB session off; then `systemctl restart luod`,
# a SIGKILL of the whole service (keeper, server and holders at once; systemd restarts it)
# and `systemctl kexec` (luod-kexec.service forwards the sessions into the kernel, luod lives
# until the kernel's reboot) each lose nothing: the next kernel's luod restores the session
# and the workload retrieves every byte. The stages run in luo-scenario.service (/init --runner).
description="luod under systemd as PID 1: systemctl restart, kill -9 of the whole service, systemctl kexec; nothing lost"
systemd=yes
timeout=600

socket=/run/luod/luod.sock

vmtest() { luo-vmtest systemd --socket "$socket" "$@"; }

# Waits up to 30 s for luod.service to be active with a main pid other than $1 (empty: any).
wait_active() {
    i=0
    while [ $i -lt 300 ]; do
        pid=$(systemctl show -p MainPID --value luod.service)
        if [ "$(systemctl is-active luod.service)" = active ] && [ "$pid" != 0 ] &&
            [ "$pid" != "$1" ]; then
            echo "luod.service active, main pid $pid"
            return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    systemctl --no-pager status luod.service
    return 1
}

# The store systemd holds for luod (the FDSTORE= descriptors): at least one.
fdstore_holds() {
    n=$(systemctl show -p NFileDescriptorStore --value luod.service)
    echo "luod.service's file descriptor store: $n descriptors"
    [ "${n:-0}" -gt 0 ]
}

# Every process of luod.service carries argv[0] "@luod", so systemd-shutdown spares them.
spared() {
    for pid in $(cat /sys/fs/cgroup/system.slice/luod.service/cgroup.procs); do
        a0=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)
        echo "luod.service pid $pid: argv[0] $a0"
        [ "$a0" = @luod ] || return 1
    done
}

stage_1() {
    check start systemctl start luod.socket luod.service || return 1
    check active wait_active "" || return 1
    keeper=$(systemctl show -p MainPID --value luod.service)
    check prepare vmtest --stage prepare || return 1
    check fdstore fdstore_holds || return 1

    check restart systemctl restart luod.service || return 1
    check restarted wait_active "$keeper" || return 1
    check after-restart vmtest --stage check || return 1

    keeper=$(systemctl show -p MainPID --value luod.service)
    check kill-9 systemctl kill --signal=SIGKILL luod.service || return 1
    check recovered wait_active "$keeper" || return 1
    check after-kill vmtest --stage check || return 1

    check argv0 spared || return 1
    check kexec-check luoctl --socket "$socket" kexec --check
}

stage_2() {
    check start systemctl start luod.socket luod.service || return 1
    check active wait_active "" || return 1
    check retrieve vmtest --stage retrieve || return 1
    check stop systemctl stop luod.service luod.socket || return 1
    check kernel-empty vmtest --stage kernel
}
