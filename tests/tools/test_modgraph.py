"""The module graph and the module map on small crates written here (python3 -m unittest
discover -s tests/tools)."""
import os
import tempfile
import unittest

import modgraph
import modmap


def crate(files):
    """A crate's `src` folder with `files` (`{relative path: text}`)."""
    src = tempfile.mkdtemp()
    for path, text in files.items():
        full = os.path.join(src, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, 'w', encoding='utf-8') as f:
            f.write(text)
    return src


class Graph(unittest.TestCase):
    def test_groups_super_and_reexports_are_edges_and_literals_are_not(self):
        src = crate({
            'lib.rs': '//! Root.\npub mod x;\nmod y;\nmod z;\npub use y::Thing;\n',
            'x/mod.rs': '//! X owns things. More.\nmod inner;\nuse crate::{Thing, z::{self}};\n',
            'x/inner.rs': '//! Inner.\npub fn f() { super::super::V; }\n'
                          '#[cfg(test)]\nmod tests { use crate::y::Q; }\n',
            'y.rs': '//! Y.\nmod n { fn g() { super::q(); } }\n'
                    'const S: &str = "crate::x::inner"; // crate::x\nconst C: char = \'"\';\n',
            'z.rs': '//! Z.\n',
        })
        mods, edges = modgraph.graph(src)
        self.assertEqual(sorted(mods), ['lib', 'x', 'x::inner', 'y', 'z'])
        self.assertEqual(edges['x'], {'y', 'z'})
        self.assertEqual(edges['x::inner'], {'lib'})
        self.assertEqual(edges['y'], set())
        self.assertEqual(edges['lib'], set())
        self.assertEqual(modgraph.cycles(modgraph.top_edges(edges)), [])

    def test_a_cycle_between_files_is_found(self):
        src = crate({
            'main.rs': 'mod a;\nmod b;\n',
            'a.rs': 'use crate::b::B;\n',
            'b.rs': 'fn f() { crate::a::g() }\n',
        })
        _, edges = modgraph.graph(src)
        self.assertEqual(modgraph.cycles(edges), [['a', 'b', 'a']])


class Map(unittest.TestCase):
    def test_a_module_owns_the_first_sentence_of_its_doc(self):
        src = crate({
            'lib.rs': '//! # Title\n//!\n//! What `a.b` does: this.\n//! And more. Not this.\n'
                      'mod a;\n',
            'a.rs': '//! Uses [`Thing`](crate::Thing) | pipes\n',
        })
        self.assertEqual(modmap.owns(os.path.join(src, 'lib.rs')),
                         'What `a.b` does: this')
        self.assertEqual(modmap.owns(os.path.join(src, 'a.rs')), 'Uses `Thing` \\| pipes')

    def test_layers_count_up_from_modules_that_use_nothing(self):
        uses = {'a': {'b'}, 'b': {'c'}, 'd': {'c'}}
        self.assertEqual(modmap.layers({'a', 'b', 'c', 'd'}, uses),
                         {'a': 2, 'b': 1, 'c': 0, 'd': 1})


if __name__ == '__main__':
    unittest.main()
