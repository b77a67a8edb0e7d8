; Drives virtio-blk (PCI 1AF4:1042): request 1 writes 512 bytes of 0x5A to sector 1,
; request 2 reads sector 0 into 0x41000. Status bytes land at 0x42000 and 0x42001.
bits 32
%include "macros.inc"
org 0x10000
    mov eax, 0x10421AF4
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
    mov [bar], edi              ; keep BAR0: rep stosb below uses edi
    ; payload for the write
    mov edi, 0x40000
    mov ecx, 512
    mov al, 0x5A
    rep stosb
    ; request 1 header at 0x43000: type OUT (1), sector 1
    mov dword [0x43000], 1
    mov dword [0x43004], 0
    mov dword [0x43008], 1
    mov dword [0x4300C], 0
    ; request 2 header at 0x43010: type IN (0), sector 0
    mov dword [0x43010], 0
    mov dword [0x43014], 0
    mov dword [0x43018], 0
    mov dword [0x4301C], 0
    mov byte [0x42000], 0xEE
    mov byte [0x42001], 0xEE
    ; chain A: desc 0 header(R) -> desc 1 data(R) -> desc 2 status(W)
    mov esi, 0x30000
    mov dword [esi + 0], 0x43000
    mov dword [esi + 4], 0
    mov dword [esi + 8], 16
    mov word [esi + 12], 1
    mov word [esi + 14], 1
    mov dword [esi + 16], 0x40000
    mov dword [esi + 20], 0
    mov dword [esi + 24], 512
    mov word [esi + 28], 1
    mov word [esi + 30], 2
    mov dword [esi + 32], 0x42000
    mov dword [esi + 36], 0
    mov dword [esi + 40], 1
    mov word [esi + 44], 2
    mov word [esi + 46], 0
    ; chain B: desc 3 header(R) -> desc 4 data(W) -> desc 5 status(W)
    mov dword [esi + 48], 0x43010
    mov dword [esi + 52], 0
    mov dword [esi + 56], 16
    mov word [esi + 60], 1
    mov word [esi + 62], 4
    mov dword [esi + 64], 0x41000
    mov dword [esi + 68], 0
    mov dword [esi + 72], 512
    mov word [esi + 76], 3
    mov word [esi + 78], 5
    mov dword [esi + 80], 0x42001
    mov dword [esi + 84], 0
    mov dword [esi + 88], 1
    mov word [esi + 92], 2
    mov word [esi + 94], 0
    mov word [0x31004], 0
    mov word [0x31006], 3
    mov word [0x31002], 2
    mov edi, [bar]
    mov cx, 2
    call virtio_kick_and_wait
    test al, al
    jz .ok
    EXIT 12
.ok:
    EXIT 0
%include "common.inc"
bar: dd 0
