; Writes a greeting to COM1 (polling LSR for THR empty, as a BIOS would) and exits with 42.
bits 32
%include "macros.inc"
org 0x10000
    mov esi, message
.loop:
    mov dx, COM1 + 5
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    lodsb
    test al, al
    jz .done
    mov dx, COM1
    out dx, al
    jmp .loop
.done:
    EXIT 42
%include "common.inc"
message: db "hello from a freestanding guest", 10, 0
