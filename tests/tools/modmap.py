#!/usr/bin/env python3
"""The module map of docs/development.md, made from the code: for every crate of the workspace,
its modules in layers (each uses only modules of layers below it) and a table of what each
module owns (its `//!` doc's first sentence) and which modules it uses. Written between
`<!-- modmap:begin -->` and `<!-- modmap:end -->`.

    python3 tests/tools/modmap.py            # rewrites the map in docs/development.md
    python3 tests/tools/modmap.py --check    # exits 1 when the map there is out of date
    python3 tests/tools/modmap.py --print    # prints the map

The graph is tests/tools/modgraph.py's (the same modules and imports, any layout).
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import modgraph  # noqa: E402

DOC = 'docs/development.md'
BEGIN = '<!-- modmap:begin -->'
END = '<!-- modmap:end -->'


def owns(path):
    """The first sentence of a file's `//!` doc (headings skipped), on one line."""
    lines = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            stripped = line.strip()
            if not stripped.startswith('//!'):
                if lines or stripped:
                    break
                continue
            text = stripped[3:].strip()
            if text.startswith('#'):
                continue
            if not text:
                if lines:
                    break
                continue
            lines.append(text)
    # Intra-doc links read as the code they name: [`Name`] → `Name`.
    paragraph = re.sub(r'\[(`[^`]+`)\](?:\([^)]*\))?', r'\1', ' '.join(lines))
    # The first sentence: up to a full stop outside `code`, followed by a space or the end.
    ticks, out = 0, paragraph
    for i, c in enumerate(paragraph):
        ticks += c == '`'
        if c == '.' and ticks % 2 == 0 and paragraph[i + 1:i + 2] in ('', ' '):
            out = paragraph[:i]
            break
    return out.replace('|', '\\|') or '(no `//!` doc)'


def layers(names, uses):
    """`{module: layer}`: 0 for a module that uses none of `names`, else one above the highest
    it uses (a cycle, which modgraph.py refuses, is cut where the walk meets it)."""
    out = {}

    def layer(m, walking):
        if m in out:
            return out[m]
        if m in walking:
            return 0
        below = [layer(d, walking | {m}) for d in sorted(uses.get(m, ())) if d in names]
        out[m] = 1 + max(below) if below else 0
        return out[m]
    for m in sorted(names):
        layer(m, frozenset())
    return out


def crate_map(name, src):
    mods, edges = modgraph.graph(src)
    tops = sorted({modgraph.top(m) for m in mods})
    tedges = modgraph.top_edges(edges)
    level = layers(set(tops), tedges)
    out = [f'### `{name}` (`{src}/`)', '']
    out.append('Layers: a module uses only modules of the layers below it.')
    out.append('')
    out.append('```text')
    for n in sorted(set(level.values()), reverse=True):
        members = sorted(m for m in tops if level[m] == n)
        out.append(f'{n:>3}  ' + ' · '.join(members))
    out.append('```')
    out.append('')
    out.append('| module | file | owns | uses |')
    out.append('|---|---|---|---|')
    order = sorted(mods, key=lambda m: (-level[modgraph.top(m)], modgraph.top(m), m))
    for m in order:
        rel = os.path.relpath(mods[m], src)
        used = ', '.join(f'`{d}`' for d in sorted(edges.get(m, ()))) or '—'
        out.append(f'| `{m}` | `{rel}` | {owns(mods[m])} | {used} |')
    out.append('')
    return out


def generate(repo='.'):
    out = [BEGIN,
           '<!-- Made by tests/tools/modmap.py from the code; edit the `//!` docs, then run it. -->',
           '']
    for name, src in modgraph.workspace_crates(repo):
        out.extend(crate_map(name, src))
    out.append(END)
    return '\n'.join(out)


def main(argv):
    generated = generate()
    if '--print' in argv:
        print(generated)
        return 0
    with open(DOC, encoding='utf-8') as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        print(f'{DOC}: no {BEGIN} … {END} markers to write the map between', file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = head + generated + tail
    if '--check' in argv:
        if updated != text:
            print(f'{DOC}: the module map is out of date; run python3 tests/tools/modmap.py',
                  file=sys.stderr)
            return 1
        return 0
    if updated != text:
        with open(DOC, 'w', encoding='utf-8') as f:
            f.write(updated)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
