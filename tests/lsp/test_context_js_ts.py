"""JavaScript and TypeScript import resolution in the completion context: relative specifiers
with and without extensions, `index` files, default and namespace imports, re-exports."""

from __future__ import annotations

JS = {
    "src/lib/math.js": (
        "/** Adds two numbers. */\n"
        "export function add(a, b) {\n  return a + b;\n}\n\n"
        "export function unusedThing() { return 1; }\n"
    ),
    "src/lib/index.js": "export { add } from './math';\nexport * from './strings';\n",
    "src/lib/strings.js": "export const pad = (s, n) => s.padStart(n);\n",
    "src/logger.mjs": "export default class Logger {\n  log(msg) { console.log(msg); }\n}\n",
    "src/main.js": (
        "import { add } from './lib/math.js';\n"
        "import * as lib from './lib';\n"
        "import Logger from './logger.mjs';\n\n"
        "function run() {\n"
        "  const log = new Logger();\n"
        "  return add(1, lib.pad('x', 3)) + <|>;\n"
        "}\n"
    ),
}

TS = {
    "src/shapes.ts": (
        "/** Something with an area. */\n"
        "export interface Shape {\n  area(): number;\n  name: string;\n}\n\n"
        "export type Point = { x: number; y: number };\n"
    ),
    "src/geometry/index.ts": (
        "import { Point } from '../shapes';\n\n"
        "export function distance(a: Point, b: Point): number {\n"
        "  return Math.hypot(a.x - b.x, a.y - b.y);\n}\n"
    ),
    "src/view.tsx": (
        "import type { Shape } from './shapes';\n"
        "import { distance } from './geometry';\n\n"
        "export function Label(props: { shape: Shape }) {\n"
        "  const d = distance(<|>\n"
        "  return <span>{props.shape.name}</span>;\n"
        "}\n"
    ),
}


def test_js_named_namespace_and_default_imports(workspace, context_at) -> None:
    """A named import with its extension, an `index.js` namespace re-export, and a default class import all resolve."""
    index = workspace(JS)
    context = context_at(index, JS, "src/main.js")
    texts = {s.path.name: s.text for s in context.snippets}
    assert "export function add(a, b)" in texts["math.js"]
    assert "Adds two numbers." in texts["math.js"]
    assert "export const pad" in texts["strings.js"]
    assert "export default class Logger" in texts["logger.mjs"]
    assert "unusedThing" not in "".join(texts.values())


def test_ts_type_import_and_directory_index(workspace, context_at) -> None:
    """A TSX file gets the interface it imports as a type and the function from `./geometry/index.ts`."""
    index = workspace(TS)
    context = context_at(index, TS, "src/view.tsx")
    texts = {s.path.relative_to(context.root).as_posix(): s.text for s in context.snippets}
    assert set(texts) == {"src/shapes.ts", "src/geometry/index.ts"}
    assert "export interface Shape" in texts["src/shapes.ts"]
    assert "export function distance(a: Point, b: Point): number" in texts["src/geometry/index.ts"]
