; Loads an empty IDT and raises an exception: #UD cannot be delivered, nor #DF, so the CPU shuts down
; (triple fault), which KVM reports as KVM_EXIT_SHUTDOWN.
bits 32
%include "macros.inc"
org 0x10000
    lidt [idt]
    ud2
idt:
    dw 0
    dd 0
