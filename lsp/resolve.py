"""The resolve stage: from an `Import` written in one file to the indexed files it stands for
(`module_files`), and from a bound name to its definitions (`binding_target`,
`find_definitions`), following re-exports such as a package `__init__.py` that imports a name
from a submodule, `export { x } from './y'`, Rust `pub use`, wildcard imports and transitive
C includes. Per language: Python absolute and relative modules and packages (regular and
namespace); JavaScript/TypeScript relative specifiers with extension and `index` file lookup;
Go import paths under go.mod's module path, or by directory suffix; Rust `mod x;`, `crate::`,
`self::`, `super::` paths; Java packages under any source root; C/C++ `#include` relative to the
file, then by path suffix anywhere in the workspace (which covers `include/` directories). Only
indexed files count, so this never reads source; it reads `go.mod` and looks for `Cargo.toml`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lsp.languages import language_for_path
from lsp.symbols import CLASS_KINDS, Import, Symbol

if TYPE_CHECKING:
    from lsp.index import CodeIndex

MAX_DEPTH = 4
"""How many re-exports (or includes) deep a definition is looked for."""

_JS_EXTENSIONS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")


def module_files(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    """The indexed files that the module of `imp` (written in `from_file`) stands for; for
    Python `from pkg import sub`, also `sub`'s own file when it is a submodule."""
    spec = language_for_path(from_file)
    if spec is None:
        return []
    return _RESOLVERS[spec.name](index, from_file, imp)


def binding_target(index: CodeIndex, from_file: Path, imp: Import) -> tuple[list[Symbol], list[Path]]:
    """What the local name of `imp` denotes: definitions (a function, a class) or, when it
    names a module or package, that module's files (for `alias.member` lookups)."""
    spec = language_for_path(from_file)
    if spec is None:
        return [], []
    if imp.kind == "mod" or (imp.name is None and not imp.wildcard):
        return [], module_files(index, from_file, imp)
    if imp.name is None:
        return [], []
    if spec.name == "python":
        files, package = _python_locate(index, from_file, imp.module, imp.level)
        symbols = find_definitions(index, files, imp.name)
        if symbols or package is None:
            return symbols, []
        return [], _python_at(index, package, [imp.name])[0]
    if spec.name == "rust":
        inner = Import("::".join(p for p in (imp.module, imp.name) if p), None, imp.alias, imp.line)
        as_module = _rust(index, from_file, inner, exact=True)
        if as_module:
            return [], as_module
    files = module_files(index, from_file, imp)
    if imp.name == "default":
        symbols = [s for f in files for s in _top_level(index, f) if s.signature.startswith("export default")]
        return symbols or find_definitions(index, files, imp.alias), []
    return find_definitions(index, files, imp.name, members=imp.kind == "static"), []


def find_definitions(index: CodeIndex, files: list[Path], name: str, *, members: bool = False,
                     depth: int = 0) -> list[Symbol]:
    """The definitions of `name` that the modules `files` provide: their own top-level ones
    (also class members when `members`), else what they re-export or pull in by wildcard."""
    found = [s for f in files for s in _top_level(index, f) if s.name == name]
    if members and not found:
        found = [s for f in files for s in _all_definitions(index, f) if s.name == name]
    if found or depth >= MAX_DEPTH:
        return found
    for file in files:
        symbols = index.file_symbols(file)
        if symbols is None:
            continue
        for imp in symbols.imports:
            if imp.alias == name and imp.name is not None:
                found += find_definitions(index, module_files(index, file, imp), imp.name, depth=depth + 1)
        if not found:
            for imp in symbols.imports:
                if imp.wildcard:
                    found += find_definitions(index, module_files(index, file, imp), name, depth=depth + 1)
    return _unique(found)


def member_definitions(index: CodeIndex, owners: list[Symbol], member: str) -> list[Symbol]:
    """Members called `member` of the classes among `owners` (`Strings.pad`, `Point::new`)."""
    found = []
    for owner in owners:
        if owner.kind in CLASS_KINDS:
            symbols = index.file_symbols(owner.path)
            if symbols is not None:
                found += [s for s in symbols.members.get(owner.name, ()) if s.name == member]
    return found


def submodule_files(index: CodeIndex, files: list[Path], name: str) -> list[Path]:
    """Python: the submodule `name` of the packages whose `__init__` is among `files`."""
    out: list[Path] = []
    for file in files:
        if file.stem == "__init__":
            out += _python_at(index, file.parent, [name])[0]
    return out


def package_files(index: CodeIndex, path: Path) -> list[Path]:
    """The other files of `path`'s package where the language shares a namespace across a
    directory (Go, Java); empty elsewhere."""
    spec = language_for_path(path)
    if spec is None or not spec.package_scope:
        return []
    mine = index.file_symbols(path)
    package = mine.package if mine is not None else None
    out = []
    for other in index.files_in_dir(path.parent):
        if other == path or language_for_path(other) != spec:
            continue
        symbols = index.file_symbols(other)
        if symbols is not None and (package is None or symbols.package == package):
            out.append(other)
    return out


def _top_level(index: CodeIndex, path: Path) -> list[Symbol]:
    symbols = index.file_symbols(path)
    return [s for syms in symbols.top_level.values() for s in syms] if symbols is not None else []


def _all_definitions(index: CodeIndex, path: Path) -> tuple[Symbol, ...]:
    symbols = index.file_symbols(path)
    return symbols.definitions if symbols is not None else ()


def _unique(symbols: list[Symbol]) -> list[Symbol]:
    seen: set[tuple[Path, int]] = set()
    out = []
    for sym in symbols:
        if (sym.path, sym.start_byte) not in seen:
            seen.add((sym.path, sym.start_byte))
            out.append(sym)
    return out


def _tail_is(directory: Path, parts: list[str]) -> bool:
    """Whether `directory` ends with the folders `parts`."""
    return not parts or list(directory.parts[-len(parts):]) == parts


def _root(path: Path, parts: list[str]) -> Path:
    """The source root `path` hangs from when it stands for the dotted module `parts`."""
    return path.parents[len(parts) - 1] if 0 < len(parts) <= len(path.parents) else path


def _nearest(candidates: list[tuple[Path, Path]], from_file: Path) -> Path:
    """The best of several (candidate, source root) pairs: one whose root holds `from_file`, the
    nearest such root first (a workspace folder named like its package must not shadow it), else
    the shallowest."""
    def key(candidate: tuple[Path, Path]) -> tuple[int, int, int, str]:
        path, root = candidate
        holds = root in from_file.parents
        return (0 if holds else 1, -len(root.parts) if holds else 0, len(path.parts), str(path))

    return min(candidates, key=key)[0]


# ---- Python ---------------------------------------------------------------------------------

def _python(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    files, package = _python_locate(index, from_file, imp.module, imp.level)
    if imp.name is not None and package is not None:
        files = files + _python_at(index, package, [imp.name])[0]
    return files


def _python_locate(index: CodeIndex, from_file: Path, module: str, level: int) -> tuple[list[Path], Path | None]:
    """The files of a module (its `.py`, or a package's `__init__.py`) and its directory when it
    is a package."""
    parts = [p for p in module.split(".") if p]
    if level:
        base = from_file.parent
        for _ in range(level - 1):
            base = base.parent
        return _python_at(index, base, parts)
    if not parts:
        return [], None
    candidates: list[tuple[Path, Path]] = []
    for ext in (".py", ".pyi"):
        candidates += [(p, _root(p, parts)) for p in index.files_named(parts[-1] + ext)
                       if _tail_is(p.parent, parts[:-1])]
    for directory in index.dirs_named(parts[-1]):
        if _tail_is(directory.parent, parts[:-1]):  # a package, regular or namespace
            candidates.append((directory, _root(directory, parts)))
    if not candidates:
        return [], None
    best = _nearest(candidates, from_file)
    if best.suffix in (".py", ".pyi") and index.has_file(best):
        return [best], None
    init = best / "__init__.py"
    return ([init] if index.has_file(init) else []), best


def _python_at(index: CodeIndex, base: Path, parts: list[str]) -> tuple[list[Path], Path | None]:
    target = base.joinpath(*parts)
    if parts:
        for ext in (".py", ".pyi"):
            module = target.parent / (target.name + ext)
            if index.has_file(module):
                return [module], None
    init = target / "__init__.py"
    if index.has_file(init):
        return [init], target
    return [], (target if index.files_in_dir(target) or not parts else None)


# ---- JavaScript / TypeScript ------------------------------------------------------------------

def _js(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    if not imp.module.startswith("."):
        return []  # a package from node_modules, which is not indexed
    base = Path(os.path.normpath(from_file.parent / imp.module))
    candidates = [base] + [base.parent / (base.name + ext) for ext in _JS_EXTENSIONS]
    if base.suffix in (".js", ".jsx", ".mjs", ".cjs"):  # TS sources imported by their output name
        candidates += [base.with_suffix(ext) for ext in (".ts", ".tsx", ".mts", ".cts")]
    candidates += [base / f"index{ext}" for ext in _JS_EXTENSIONS]
    return next(([c] for c in candidates if index.has_file(c)), [])


# ---- Go -------------------------------------------------------------------------------------

def _go_module(directory: Path, stop: Path) -> tuple[Path, str] | None:
    """The nearest go.mod at or above `directory` (not above `stop`): its folder and module path."""
    for folder in [directory, *directory.parents]:
        try:
            text = (folder / "go.mod").read_text(encoding="utf-8", errors="replace")
        except OSError:
            if folder == stop:
                return None
            continue
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "module":
                return folder, words[1].strip('"')
        return None
    return None


def _go(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    def package(directory: Path) -> list[Path]:
        return [f for f in index.files_in_dir(directory) if f.suffix == ".go" and not f.name.endswith("_test.go")]

    module = _go_module(from_file.parent, index.root)
    if module is not None:
        root, path = module
        if imp.module == path or imp.module.startswith(path + "/"):
            return package(root.joinpath(*imp.module[len(path):].split("/")))
    parts = imp.module.split("/")
    # A path whose first element is no domain is the standard library's ("fmt", "net/http"):
    # only a full match may stand for it. Elsewhere the last folder's name is enough.
    need = 1 if "." in parts[0] else len(parts)
    best: tuple[int, Path] | None = None
    for directory in index.dirs_named(parts[-1]):
        matched = 0
        while matched < len(parts) and matched < len(directory.parts) and \
                directory.parts[-1 - matched] == parts[-1 - matched]:
            matched += 1
        if matched >= need and (best is None or matched > best[0]):
            best = (matched, directory)
    return package(best[1]) if best is not None else []


# ---- Rust -----------------------------------------------------------------------------------

def _rust_crate_src(index: CodeIndex, from_file: Path) -> Path:
    for folder in from_file.parents:
        if (folder / "Cargo.toml").exists():
            return folder / "src"
        if index.has_file(folder / "lib.rs") or index.has_file(folder / "main.rs"):
            return folder
        if folder == index.root:
            break
    return from_file.parent


def _rust_module_dir(path: Path) -> Path:
    """Where the submodules of the module in `path` live."""
    return path.parent if path.name in ("main.rs", "lib.rs", "mod.rs") else path.parent / path.stem


def _rust_files(index: CodeIndex, base: Path, parts: list[str]) -> list[Path]:
    if not parts:
        names = [base / "mod.rs", base.parent / (base.name + ".rs"), base / "lib.rs", base / "main.rs"]
    else:
        target = base.joinpath(*parts)
        names = [target.parent / (target.name + ".rs"), target / "mod.rs"]
    return next(([p] for p in names if index.has_file(p)), [])


def _rust(index: CodeIndex, from_file: Path, imp: Import, *, exact: bool = False) -> list[Path]:
    if imp.kind == "mod":
        return _rust_files(index, _rust_module_dir(from_file), [imp.module])
    parts = [p for p in imp.module.split("::") if p]
    if not parts:
        return []
    if parts[0] == "crate":
        base, parts = _rust_crate_src(index, from_file), parts[1:]
    elif parts[0] in ("self", "super"):
        base = _rust_module_dir(from_file)
        while parts and parts[0] in ("self", "super"):
            base = base.parent if parts.pop(0) == "super" else base
    else:  # a path from the crate root (2015 style, or a module declared in main.rs/lib.rs)
        base = _rust_crate_src(index, from_file)
    while True:
        files = _rust_files(index, base, parts)
        if files or exact or not parts:
            return files
        parts = parts[:-1]  # an inline `mod x { ... }`: look in the enclosing file


# ---- Java -----------------------------------------------------------------------------------

def _java(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    parts = imp.module.split(".")
    if imp.kind == "static":  # import static a.b.C.m: the class file
        return [p for p in index.files_named(parts[-1] + ".java") if _tail_is(p.parent, parts[:-1])][:1]
    if imp.name is not None:
        exact = [(p, _root(p, parts + [imp.name])) for p in index.files_named(imp.name + ".java")
                 if _tail_is(p.parent, parts)]
        if exact:
            return [_nearest(exact, from_file)]
    folders = [(d, _root(d, parts)) for d in index.dirs_named(parts[-1]) if _tail_is(d, parts)]
    if not folders:
        return []
    return [f for f in index.files_in_dir(_nearest(folders, from_file)) if f.suffix == ".java"]


# ---- C / C++ --------------------------------------------------------------------------------

def _c(index: CodeIndex, from_file: Path, imp: Import) -> list[Path]:
    local = Path(os.path.normpath(from_file.parent / imp.module))
    if imp.kind == "include" and index.has_file(local):
        return [local]
    parts = imp.module.split("/")
    candidates = [p for p in index.files_named(parts[-1]) if _tail_is(p.parent, [x for x in parts[:-1] if x != ".."])]
    if not candidates:
        return []
    candidates.sort(key=lambda p: ("include" not in p.parts, len(p.parts), str(p)))
    return candidates[:1]


_RESOLVERS = {
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
