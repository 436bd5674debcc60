#!/usr/bin/env python3
"""The gateway crate's module graph: which module uses which (crate:: paths and
`use super::`), at the level of top-level modules and of files; exits 1 on a cycle."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'gateway/src'
def modpath(f):
    rel = os.path.relpath(f, root)[:-3]
    parts = rel.split('/')
    if parts[-1] == 'mod': parts = parts[:-1]
    if parts == ['lib'] or parts == ['main']: return parts[0]
    return '::'.join(parts)
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith('.rs')]
mods = {modpath(f): f for f in files}
edges = {}
for m, f in mods.items():
    text = open(f).read()
    text = text.split('#[cfg(test)]')[0]  # unit tests may use anything of their module
    text = re.sub(r'//.*', '', text)
    deps = set()
    for path in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)*)', text):
        segs = path.split('::')
        # the longest prefix that is a module
        for n in range(len(segs), 0, -1):
            cand = '::'.join(segs[:n])
            if cand in mods:
                deps.add(cand); break
        else:
            if m != 'lib': deps.add('lib')  # crate::run etc.
    prefix = '' if m in ('lib', 'main') else m + '::'
    for c in mods:
        if c.startswith(prefix) and c != m and '::' not in c[len(prefix):]:
            name = c[len(prefix):]
            if re.search(rf'(?<![:\w]){name}::', text):
                deps.add(c)
    edges[m] = {d for d in deps if d != m}
top = lambda m: m.split('::')[0]
tedges = {}
for m, ds in edges.items():
    for d in ds:
        if top(d) != top(m): tedges.setdefault(top(m), set()).add(top(d))
def cycles(g):
    seen, stack, found = set(), [], []
    def visit(n):
        if n in stack: found.append(stack[stack.index(n):] + [n]); return
        if n in seen: return
        seen.add(n); stack.append(n)
        for d in sorted(g.get(n, ())): visit(d)
        stack.pop()
    for n in sorted(g): visit(n)
    return found
print('top-level modules:')
for m in sorted(tedges): print(f'  {m} -> {", ".join(sorted(tedges[m]))}')
bad = cycles(tedges) + cycles(edges)
for c in bad: print('CYCLE: ' + ' -> '.join(c))
print('files:', len(mods), 'cycles:', len(bad))
sys.exit(1 if bad else 0)
