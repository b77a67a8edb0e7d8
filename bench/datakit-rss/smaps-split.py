#!/usr/bin/env python3
# Splits a process's RSS by what the memory is, from /proc/PID/smaps. Adjacent anonymous mappings are grouped into
# regions (mprotect splits one reservation into many mappings): the largest region is the GC's reservation; a 64 MiB
# region aligned on 64 MiB is a glibc malloc arena; [heap] is malloc's main arena; 8 MiB regions are thread stacks.
import sys, re, collections
pid = sys.argv[1]
maps = []  # (start, end, name, rss_kib)
cur = None
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$', line)
    if m:
        cur = [int(m.group(1), 16), int(m.group(2), 16), m.group(4).strip(), 0]
        maps.append(cur)
    elif line.startswith('Rss:'):
        cur[3] = int(line.split()[1])
regions = []
for s, e, name, rss in maps:
    if name == '' and regions and regions[-1][2] == '' and regions[-1][1] == s:
        regions[-1][1] = e; regions[-1][3] += rss
    else:
        regions.append([s, e, name, rss])
anon = [r for r in regions if r[2] == '']
gc = max(anon, key=lambda r: r[1] - r[0])
cats = collections.Counter()
for s, e, name, rss in regions:
    size = e - s
    if name == '':
        if (s, e) == (gc[0], gc[1]): k = 'gc'
        elif size == 64 << 20 and s % (64 << 20) == 0: k = 'arenas'
        elif size in (8 << 20, (8 << 20) + 4096, 1536 << 10, (1536 << 10) + 4096): k = 'stacks'
        else: k = 'anon-other'
    elif name == '[heap]': k = 'brk'
    elif name.startswith('/'): k = 'files'
    else: k = 'special'
    cats[k] += rss
cats['total'] = sum(r[3] for r in regions)
print(' '.join(f"{k}={cats[k]/1024:.1f}" for k in ['total', 'gc', 'arenas', 'brk', 'anon-other', 'stacks', 'files']))
