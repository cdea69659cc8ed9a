//! The guest: a real-mode program that counts forever and reports every step.
//!
//! ```text
//!  0x1000  ba 10 05        mov  dx, PROGRESS_PORT
//!  0x1003  66 a1 00 05     mov  eax, [COUNTER]      ; the counter lives in guest RAM
//!  0x1007  66 40           inc  eax
//!  0x1009  66 a3 00 05     mov  [COUNTER], eax
//!  0x100d  66 ef           out  dx, eax             ; one exit per step: the VMM sees it
//!  0x100f  eb f2           jmp  0x1003
//! ```
//!
//! The program never stops on its own. Each `out` carries the counter just stored, so the VMM
//! sees every step and can tell whether one was lost or repeated; the counter in RAM equals the
//! last reported value whenever the vCPU is stopped (a vCPU only stops at an exit, and the
//! pending `out` is completed before its state is saved).

/// Guest-physical address where the program is loaded and starts.
pub const ENTRY: u64 = 0x1000;
/// Guest-physical address of the 32-bit step counter.
pub const COUNTER: u64 = 0x500;
/// The I/O port the guest reports progress on.
pub const PROGRESS_PORT: u16 = 0x510;

/// The program's bytes.
pub const PROGRAM: [u8; 17] = [
    0xba, 0x10, 0x05, // mov dx, 0x510
    0x66, 0xa1, 0x00, 0x05, // mov eax, [0x500]
    0x66, 0x40, // inc eax
    0x66, 0xa3, 0x00, 0x05, // mov [0x500], eax
    0x66, 0xef, // out dx, eax
    0xeb, 0xf2, // jmp 0x1003
];

const _: () =
    assert!(PROGRAM[0] == 0xba && PROGRAM[1] as u16 | (PROGRAM[2] as u16) << 8 == PROGRESS_PORT);
const _: () = assert!(PROGRAM[5] as u64 | (PROGRAM[6] as u64) << 8 == COUNTER);
