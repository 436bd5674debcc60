#!/usr/bin/env python3
"""The module graph of every crate of the workspace: which module uses which, at the level of
files (one module per file) and of top-level modules; exits 1 on a cycle in either.

    python3 tests/tools/modgraph.py            # every crate of the workspace
    python3 tests/tools/modgraph.py gateway/src shared/src

A crate's modules are found by following `mod name;` from its root file (`lib.rs`, `main.rs`),
whatever the layout (`name.rs`, `name/mod.rs`, nested folders); modules declared under
`#[cfg(test)]` and everything of a file from its first `#[cfg(test)]` on are left out (unit
tests may use anything of their crate). A module uses another when its code names a path into it:
`crate::…`, `super::…`, `self::…` or a child module's name, `use` groups (`{a, b::c}`) included.
Another crate's paths (`busgate_shared::…`) are not edges: each crate is a graph of its own.
"""
import os
import re
import sys

IDENT = r'[A-Za-z_][A-Za-z0-9_]*'
ROOTS = ('lib.rs', 'main.rs')


def strip(text):
    """The code of a file without comments, and with string and char literals emptied."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            i = text.find('\n', i)
            i = n if i < 0 else i
        elif text.startswith('/*', i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith('/*', i):
                    depth, i = depth + 1, i + 2
                elif text.startswith('*/', i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"' or (c in 'rb' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_'))
                          and re.match(r'b?r#*"|b"', text[i:i + 8])):
            raw = re.match(r'(b?r)(#*)"', text[i:i + 260])
            if raw:
                end = text.find('"' + raw.group(2), i + raw.end())
                i = n if end < 0 else end + 1 + len(raw.group(2))
            else:
                i = text.index('"', i) + 1
                while i < n and text[i] != '"':
                    i += 2 if text[i] == '\\' else 1
                i += 1
            out.append('""')
        elif c == "'":
            lit = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:i + 16])
            if lit:
                out.append("' '")
                i += lit.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return ''.join(out)


def code_of(text):
    """A file's code without its `#[cfg(test)]` part."""
    return strip(text).split('#[cfg(test)]')[0]


def declared(text):
    """The modules a file declares with `mod name;` (not those under `#[cfg(test)]`)."""
    code = strip(text)
    out = []
    for m in re.finditer(r'((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(' + IDENT + r')\s*;', code):
        if 'cfg(test)' not in m.group(1):
            out.append(m.group(2))
    return out


def modules(src):
    """`{module path: file}` for every crate root in `src` (`lib`, `main`: separate crates share
    nothing but the folder, so each root's tree is its own; a module reached from both is listed
    once)."""
    found, owner = {}, {}
    for root in ROOTS:
        path = os.path.join(src, root)
        if not os.path.isfile(path):
            continue
        stack = [(root[:-3], path)]
        while stack:
            mod, file = stack.pop()
            if mod in found:
                continue
            found[mod] = file
            owner[mod] = root[:-3]
            base = os.path.dirname(file)
            name = os.path.basename(file)
            folder = base if name in ROOTS or name == 'mod.rs' else os.path.join(base, name[:-3])
            prefix = '' if mod in ('lib', 'main') else mod + '::'
            with open(file, encoding='utf-8') as f:
                text = f.read()
            for child in declared(text):
                for candidate in (os.path.join(folder, child + '.rs'),
                                  os.path.join(folder, child, 'mod.rs')):
                    if os.path.isfile(candidate):
                        stack.append((prefix + child, candidate))
                        break
    modules.owner = owner
    return found


def use_paths(code, start):
    """Every path that follows `start` (the index just past a `::`), `use` groups expanded:
    lists of segments."""
    paths = []

    def tree(i, prefix):
        segs = list(prefix)
        while True:
            while i < len(code) and code[i].isspace():
                i += 1
            if i < len(code) and code[i] == '{':
                i += 1
                while True:
                    i = tree(i, segs)
                    while i < len(code) and code[i] in ' \t\n,':
                        i += 1
                    if i >= len(code) or code[i] == '}':
                        return i + 1
            m = re.compile(IDENT + r'|\*').match(code, i)
            if not m:
                paths.append(segs)
                return i
            segs = segs + [m.group(0)]
            i = m.end()
            rest = re.compile(r'\s*::\s*').match(code, i)
            if not rest:
                paths.append(segs)
                return i
            i = rest.end()
    tree(start, [])
    return paths


def inline_modules(code):
    """The spans of the `mod name { … }` blocks of a file's code."""
    spans = []
    for m in re.finditer(r'\bmod\s+' + IDENT + r'\s*\{', code):
        depth, i = 0, m.end() - 1
        while i < len(code):
            if code[i] == '{':
                depth += 1
            elif code[i] == '}':
                depth -= 1
                if depth == 0:
                    break
            i += 1
        spans.append((m.end(), i))
    return spans


def graph(src):
    """`(modules, edges)`: modules as `{path: file}`, edges as `{path: set of paths}` between
    modules (a module's own items are not edges)."""
    mods = modules(src)
    owner = modules.owner
    edges = {}
    # What a crate root re-exports (`pub use error::Error;`): `crate::Error` is a use of
    # `error`, and the re-export itself is the crate's façade, not a use by the root.
    reexports = {}
    for root in set(owner.values()):
        with open(mods[root], encoding='utf-8') as fh:
            code = code_of(fh.read())
        names = {}
        for stmt in re.finditer(r'pub(?:\([^)]*\))?\s+use\s+([^;]*);', code):
            for segs in use_paths(stmt.group(1) + ' ', 0):
                if len(segs) > 1 and segs[-1] != '*':
                    names[segs[-1]] = segs[:-1]
        reexports[root] = names

    def resolve(segs):
        for n in range(len(segs), 0, -1):
            cand = '::'.join(segs[:n])
            if cand in mods:
                return cand
        return None

    for m, f in mods.items():
        with open(f, encoding='utf-8') as fh:
            code = code_of(fh.read())
        if m in reexports:
            code = re.sub(r'pub(?:\([^)]*\))?\s+use\s+[^;]*;', '', code)
        here = [] if m in ('lib', 'main') else m.split('::')
        inline = inline_modules(code)
        deps = set()
        for hit in re.finditer(r'(?<![\w:])(' + IDENT + r')\s*::\s*', code):
            word = hit.group(1)
            # Inside `mod name { … }` of this file, `super` is first this file's module.
            depth = sum(1 for a, b in inline if a <= hit.start() < b)
            for segs in use_paths(code, hit.end()):
                if word == 'crate':
                    base = []
                elif word == 'super':
                    ups = 1 + sum(1 for s in segs if s == 'super')
                    segs = [s for s in segs if s != 'super']
                    ups = max(0, ups - depth)
                    base = here[:len(here) - ups] if ups else here
                elif word == 'self':
                    base = here
                elif '::'.join(here + [word]) in mods:
                    base, segs = here, [word] + segs
                else:
                    continue
                if word == 'crate' and segs and segs[0] in reexports.get(owner[m], {}):
                    segs = reexports[owner[m]][segs[0]] + segs[1:]
                target = resolve(base + segs) if base + segs else None
                if target is None:
                    # The crate root's own items (`crate::run`), or an item of a parent.
                    target = resolve(base) if base else owner[m]
                if target and target != m:
                    deps.add(target)
        edges[m] = deps
    return mods, edges


def top(m):
    return m.split('::')[0]


def top_edges(edges):
    """The edges between top-level modules (the crate root counts as one)."""
    out = {}
    for m, ds in edges.items():
        for d in ds:
            if top(d) != top(m):
                out.setdefault(top(m), set()).add(top(d))
    return out


def cycles(g):
    """Each cycle of `g` found by a depth-first walk (one per back edge)."""
    seen, stack, found = set(), [], []

    def visit(n):
        if n in stack:
            found.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for d in sorted(g.get(n, ())):
            visit(d)
        stack.pop()
    for n in sorted(g):
        visit(n)
    return found


def workspace_crates(repo='.'):
    """`[(crate name, src folder)]` of the workspace's members, in `Cargo.toml`'s order."""
    with open(os.path.join(repo, 'Cargo.toml'), encoding='utf-8') as f:
        text = f.read()
    members = re.search(r'members\s*=\s*\[([^\]]*)\]', text)
    out = []
    for member in re.findall(r'"([^"]+)"', members.group(1) if members else ''):
        name = member
        manifest = os.path.join(repo, member, 'Cargo.toml')
        if os.path.isfile(manifest):
            with open(manifest, encoding='utf-8') as f:
                found = re.search(r'^name\s*=\s*"([^"]+)"', f.read(), flags=re.M)
            if found:
                name = found.group(1)
        src = os.path.join(repo, member, 'src')
        if os.path.isdir(src):
            out.append((name, os.path.normpath(src)))
    return out


def main(argv):
    targets = [(d, d) for d in argv] or workspace_crates()
    bad_total = 0
    for name, src in targets:
        mods, edges = graph(src)
        tedges = top_edges(edges)
        print(f'{name} ({src}): top-level modules:')
        for m in sorted(tedges):
            print(f'  {m} -> {", ".join(sorted(tedges[m]))}')
        bad = []
        for c in cycles(tedges) + cycles(edges):
            if c not in bad:
                bad.append(c)
        for c in bad:
            print('  CYCLE: ' + ' -> '.join(c))
        print(f'  files: {len(mods)} cycles: {len(bad)}')
        bad_total += len(bad)
    return 1 if bad_total else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
