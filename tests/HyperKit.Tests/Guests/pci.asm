; Enumerates PCI bus 0 through configuration mechanism #1 and stores, at RESULT, the number of
; functions found followed by {slot, vendor/device dword, class dword, BAR0 size mask} records.
bits 32
%include "macros.inc"
org 0x10000
    mov edi, RESULT + 4
    xor ebx, ebx
    xor ebp, ebp
.slot:
    xor ecx, ecx
    call pci_read32
    cmp ax, 0xFFFF
    je .empty
    mov [edi], ebx
    mov [edi + 4], eax
    mov ecx, 0x08
    call pci_read32
    mov [edi + 8], eax
    ; BAR sizing: save, write all ones, read the mask back, restore.
    mov ecx, 0x10
    call pci_read32
    mov esi, eax
    mov eax, 0xFFFFFFFF
    call pci_write32
    call pci_read32
    mov [edi + 12], eax
    mov eax, esi
    call pci_write32
    add edi, 16
    inc ebp
.empty:
    inc ebx
    cmp ebx, 32
    jb .slot
    mov [RESULT], ebp
    EXIT 0
%include "common.inc"
