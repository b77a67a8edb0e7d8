; Hostile guest: spins forever reading an unclaimed I/O port. The host must stay responsive and stop it.
bits 32
%include "macros.inc"
org 0x10000
.spin:
    mov dx, 0x1234
    in al, dx
    jmp .spin
