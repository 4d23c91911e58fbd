"""`CodeIndex.resolve_import` for each language: which indexed files an import stands for."""

from __future__ import annotations

import pytest

from lsp.symbols import Import

FILES = {
    "web/src/app.ts": "import { a } from './util';\n",
    "web/src/util.js": "export const a = 1;\n",
    "web/src/widgets/index.tsx": "export const W = 1;\n",
    "web/src/legacy.ts": "export const L = 1;\n",
    "go.mod": "module example.com/svc\n",
    "internal/store/store.go": "package store\n",
    "internal/store/store_test.go": "package store\n",
    "cmd/main.go": "package main\n",
    "crate/Cargo.toml": "[package]\nname = \"c\"\n",
    "crate/src/main.rs": "mod net;\n",
    "crate/src/net/mod.rs": "pub mod tcp;\n",
    "crate/src/net/tcp.rs": "pub fn connect() {}\n",
    "java/src/main/java/org/x/A.java": "package org.x;\nclass A {}\n",
    "java/src/main/java/org/x/B.java": "package org.x;\nclass B {}\n",
    "java/src/main/java/org/y/Main.java": "package org.y;\nclass Main {}\n",
    "c/include/lib/api.h": "int api(void);\n",
    "c/src/local.h": "int local(void);\n",
    "c/src/main.c": "int main(void) { return 0; }\n",
}

CASES = [
    ("web/src/app.ts", Import("./util", "a", "a", 0), ["web/src/util.js"]),
    ("web/src/app.ts", Import("./widgets", None, "w", 0), ["web/src/widgets/index.tsx"]),
    ("web/src/app.ts", Import("./legacy.js", "L", "L", 0), ["web/src/legacy.ts"]),
    ("web/src/app.ts", Import("react", "useState", "useState", 0), []),
    ("cmd/main.go", Import("example.com/svc/internal/store", None, "store", 0), ["internal/store/store.go"]),
    ("cmd/main.go", Import("fmt", None, "fmt", 0), []),
    ("crate/src/main.rs", Import("net", None, "net", 0, kind="mod"), ["crate/src/net/mod.rs"]),
    ("crate/src/main.rs", Import("crate::net::tcp", "connect", "connect", 0), ["crate/src/net/tcp.rs"]),
    ("crate/src/net/tcp.rs", Import("super", "tcp", "tcp", 0), ["crate/src/net/mod.rs"]),
    ("java/src/main/java/org/y/Main.java", Import("org.x", "A", "A", 0), ["java/src/main/java/org/x/A.java"]),
    ("java/src/main/java/org/y/Main.java", Import("org.x", None, "", 0, wildcard=True),
     ["java/src/main/java/org/x/A.java", "java/src/main/java/org/x/B.java"]),
    ("c/src/main.c", Import("local.h", None, "", 0, wildcard=True, kind="include"), ["c/src/local.h"]),
    ("c/src/main.c", Import("lib/api.h", None, "", 0, wildcard=True, kind="include"), ["c/include/lib/api.h"]),
    ("c/src/main.c", Import("stdio.h", None, "", 0, wildcard=True, kind="system"), []),
]


@pytest.mark.parametrize(("source", "imp", "expected"), CASES, ids=[f"{c[0].split('/')[0]}:{c[1].module}" for c in CASES])
def test_resolve_import(workspace, source: str, imp: Import, expected: list[str]) -> None:
    """Each language's import maps to the workspace files it names, and to none for external modules."""
    index = workspace(FILES)
    assert [index.relative(p) for p in index.resolve_import(source, imp)] == expected
