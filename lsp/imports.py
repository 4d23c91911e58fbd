"""Decoding import statements into `Import` bindings, one small function per language family.

The queries capture each import-like statement whole (`@import`); the shapes inside differ too
much between languages for a query to flatten them (Rust's nested `use` trees, JavaScript's
default, namespace and named imports, Python's relative dots), so the statement's syntax tree is
walked here. Every binding comes out in one shape: the module as written, the member taken from
it (or None for the module itself) and the local name it is bound to."""

from __future__ import annotations

import re
from collections.abc import Callable

from tree_sitter import Node

from lsp.symbols import Import

_GO_MAJOR = re.compile(r"^v\d+$")


def _text(node: Node | None, source: bytes) -> str:
    if node is None:
        return ""
    return source[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _string_value(node: Node | None, source: bytes) -> str:
    """The contents of a string literal node, quotes stripped."""
    return _text(node, source).strip("\"'`<>")


def _python(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    if node.type == "import_statement":
        out = []
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                module = _text(child.child_by_field_name("name"), source)
                out.append(Import(module, None, _text(child.child_by_field_name("alias"), source), line))
            else:
                module = _text(child, source)
                out.append(Import(module, None, module, line))
        return out
    module_node = node.child_by_field_name("module_name")
    level, module = 0, _text(module_node, source)
    if module_node is not None and module_node.type == "relative_import":
        prefix = next((c for c in module_node.children if c.type == "import_prefix"), None)
        level = len(_text(prefix, source).strip())
        dotted = next((c for c in module_node.children if c.type == "dotted_name"), None)
        module = _text(dotted, source)
    if any(c.type == "wildcard_import" for c in node.children):
        return [Import(module, None, "", line, level=level, wildcard=True)]
    out = []
    for child in node.children_by_field_name("name"):
        if child.type == "aliased_import":
            name = _text(child.child_by_field_name("name"), source)
            alias = _text(child.child_by_field_name("alias"), source)
        else:
            name = alias = _text(child, source)
        out.append(Import(module, name, alias, line, level=level))
    return out


def _js(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    if node.type == "variable_declarator":  # const x = require('./x')
        value = node.child_by_field_name("value")
        args = value.child_by_field_name("arguments") if value is not None else None
        string = next((c for c in args.named_children if c.type == "string"), None) if args else None
        module = _string_value(string, source)
        target = node.child_by_field_name("name")
        if target is None:
            return []
        if target.type == "identifier":
            return [Import(module, None, _text(target, source), line, kind="require")]
        out = []
        for prop in target.named_children:  # const { a, b: c } = require('./x')
            if prop.type == "shorthand_property_identifier_pattern":
                out.append(Import(module, _text(prop, source), _text(prop, source), line))
            elif prop.type == "pair_pattern":
                key, value = prop.child_by_field_name("key"), prop.child_by_field_name("value")
                out.append(Import(module, _text(key, source), _text(value, source), line))
        return out
    module = _string_value(node.child_by_field_name("source"), source)
    out = []
    for child in node.named_children:
        if child.type == "import_clause":
            for part in child.named_children:
                if part.type == "identifier":
                    out.append(Import(module, "default", _text(part, source), line))
                elif part.type == "namespace_import":
                    out.append(Import(module, None, _text(part.named_children[-1], source), line))
                elif part.type == "named_imports":
                    out.extend(_specifiers(part, module, line, source))
        elif child.type == "import_require_clause":  # TS: import x = require('./x')
            out.append(Import(module, None, _text(child.named_children[0], source), line))
        elif child.type == "export_clause":
            out.extend(_specifiers(child, module, line, source))
        elif child.type == "namespace_export":  # export * as ns from './x'
            out.append(Import(module, None, _text(child.named_children[-1], source), line))
    if not out and node.type == "export_statement":  # export * from './x'
        out.append(Import(module, None, "", line, wildcard=True))
    elif not out:  # import './side-effect'
        out.append(Import(module, None, "", line))
    return out


def _specifiers(node: Node, module: str, line: int, source: bytes) -> list[Import]:
    out = []
    for spec in node.named_children:
        if spec.type in ("import_specifier", "export_specifier"):
            name = _text(spec.child_by_field_name("name"), source)
            alias = _text(spec.child_by_field_name("alias"), source) or name
            out.append(Import(module, name, alias, line))
    return out


def _go(node: Node, source: bytes) -> list[Import]:
    out = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type != "import_spec":
            stack.extend(current.named_children)
            continue
        path = _string_value(current.child_by_field_name("path"), source)
        name_node = current.child_by_field_name("name")
        segments = path.split("/")
        alias = segments[-1]
        if _GO_MAJOR.match(alias) and len(segments) > 1:  # example.com/m/v2 is package m
            alias = segments[-2]
        line = current.start_point[0]
        if name_node is not None and name_node.type == "dot":
            out.append(Import(path, None, "", line, wildcard=True))
        elif name_node is not None and name_node.type == "blank_identifier":
            out.append(Import(path, None, "", line))
        else:
            out.append(Import(path, None, _text(name_node, source) or alias, line))
    out.sort(key=lambda imp: imp.line)
    return out


def _rust(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    if node.type == "mod_item":  # mod x;
        name = _text(node.child_by_field_name("name"), source)
        return [Import(name, None, name, line, kind="mod")]
    out: list[Import] = []

    def walk(tree: Node | None, prefix: list[str]) -> None:
        if tree is None:
            return
        if tree.type in ("identifier", "scoped_identifier", "crate", "self", "super", "metavariable"):
            path = prefix + [s for s in _text(tree, source).split("::") if s]
            if path and path[-1] == "self":  # use a::{self} binds a
                path = path[:-1]
            if path:
                out.append(Import("::".join(path[:-1]), path[-1], path[-1], line))
        elif tree.type == "use_as_clause":
            path = prefix + _text(tree.child_by_field_name("path"), source).split("::")
            alias = _text(tree.child_by_field_name("alias"), source)
            out.append(Import("::".join(path[:-1]), path[-1], alias, line))
        elif tree.type == "use_wildcard":
            inner = tree.named_children[0] if tree.named_children else None
            path = prefix + (_text(inner, source).split("::") if inner is not None else [])
            out.append(Import("::".join(path), None, "", line, wildcard=True))
        elif tree.type == "scoped_use_list":
            head = _text(tree.child_by_field_name("path"), source)
            walk(tree.child_by_field_name("list"), prefix + [s for s in head.split("::") if s])
        elif tree.type == "use_list":
            for child in tree.named_children:
                walk(child, prefix)

    walk(node.child_by_field_name("argument"), [])
    return out


def _java(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    is_static = any(c.type == "static" for c in node.children)
    path_node = next((c for c in node.named_children if c.type in ("scoped_identifier", "identifier")), None)
    path = _text(path_node, source)
    kind = "static" if is_static else "import"
    if any(c.type == "asterisk" for c in node.children):
        return [Import(path, None, "", line, wildcard=True, kind=kind)]
    module, _, name = path.rpartition(".")
    return [Import(module, name, name, line, kind=kind)]


def _c(node: Node, source: bytes) -> list[Import]:
    path_node = node.child_by_field_name("path")
    if path_node is None:
        return []
    kind = "system" if path_node.type == "system_lib_string" else "include"
    return [Import(_string_value(path_node, source), None, "", node.start_point[0], wildcard=True, kind=kind)]


DECODERS: dict[str, Callable[[Node, bytes], list[Import]]] = {
    "python": _python,
    "javascript": _js,
    "typescript": _js,
    "tsx": _js,
    "go": _go,
    "rust": _rust,
    "java": _java,
    "c": _c,
    "cpp": _c,
}


def decode_imports(language: str, node: Node, source: bytes) -> list[Import]:
    """The bindings made by one captured import statement of `language`."""
    return DECODERS[language](node, source)
