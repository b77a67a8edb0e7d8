; Drives virtio-rng (PCI 1AF4:1044) through its modern virtio-pci transport: one 64-byte
; device-writable buffer at 0x40000; exits 0 when the device returned it in the used ring.
bits 32
%include "macros.inc"
org 0x10000
    mov eax, 0x10441AF4
    call find_device
    cmp ebx, 0xFFFFFFFF
    jne .have
    EXIT 10
.have:
    call virtio_init
    test al, al
    jz .ready
    EXIT 11
.ready:
    ; descriptor 0: {addr 0x40000, len 64, flags WRITE}
    mov dword [0x30000], 0x40000
    mov dword [0x30004], 0
    mov dword [0x30008], 64
    mov word [0x3000C], 2
    mov word [0x3000E], 0
    mov word [0x31004], 0      ; avail.ring[0] = head 0
    mov word [0x31002], 1      ; avail.idx = 1
    mov cx, 1
    call virtio_kick_and_wait
    test al, al
    jz .ok
    EXIT 12
.ok:
    EXIT 0
%include "common.inc"
