"""The language registry: which file extensions belong to which language, the tree-sitter
grammar of each (from its own PyPI wheel, nothing downloaded at run time), its query file under
`lsp/queries/`, and the few grammar facts the extractor and the context builder need (which
node types open a function or a class scope, which are comments, whether docstrings live in the
body as in Python or in comments before the definition). Grammars and queries are loaded on
first use and cached, since compiling a query takes milliseconds."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

import tree_sitter

QUERY_DIR = Path(__file__).with_name("queries")


@dataclass(frozen=True)
class LanguageSpec:
    """One language as the index sees it."""

    name: str
    extensions: tuple[str, ...]
    module: str
    """The grammar's Python module, e.g. `tree_sitter_python`."""
    entry: str
    """The function of `module` that returns the grammar's pointer."""
    query_name: str
    """The stem of the query file in `lsp/queries/`."""
    function_types: frozenset[str]
    """Node types that open a function scope (the "enclosing function" at a cursor)."""
    class_types: frozenset[str]
    """Node types that open a class-like scope."""
    comment_types: frozenset[str] = frozenset({"comment"})
    python_docstrings: bool = False
    """Docstrings are the first string of the body (Python) rather than comments before it."""
    body_placeholder: str = " { ... }"
    """What stands for an elided body after a signature."""
    qualifier_members_are_names: bool = False
    """`a::b` names `b` whatever `a` is (C++ namespaces), so `b` is looked up like a plain name."""
    package_scope: bool = False
    """Files in one directory share a namespace (Go packages, Java packages)."""

    @property
    def language(self) -> tree_sitter.Language:
        return _language(self.module, self.entry)

    @property
    def query(self) -> tree_sitter.Query:
        """The whole query, for the file being edited: references come with their qualifier
        (`os.path` in `os.path.join`) and whether they are calls."""
        return _query(self.module, self.entry, self.query_name, False)

    @property
    def index_query(self) -> tree_sitter.Query:
        """The query without the patterns only positions need (qualified and call references):
        indexing a workspace only counts references, and skipping them saves a tenth."""
        return _query(self.module, self.entry, self.query_name, True)

    def parser(self) -> tree_sitter.Parser:
        """A fresh parser: parsers are not thread-safe and cost microseconds to make."""
        return tree_sitter.Parser(self.language)


@functools.cache
def _language(module: str, entry: str) -> tree_sitter.Language:
    return tree_sitter.Language(getattr(importlib.import_module(module), entry)())


_POSITION_ONLY = (b"@reference.qualifier", b"@reference.call")


@functools.cache
def _query(module: str, entry: str, query_name: str, counts_only: bool) -> tree_sitter.Query:
    source = (QUERY_DIR / f"{query_name}.scm").read_bytes()
    query = tree_sitter.Query(_language(module, entry), source.decode("utf-8"))
    if counts_only:
        for i in range(query.pattern_count):
            pattern = source[query.start_byte_for_pattern(i):query.end_byte_for_pattern(i)]
            if any(marker in pattern for marker in _POSITION_ONLY):
                query.disable_pattern(i)
    return query


_C_FUNCTIONS = frozenset({"function_definition"})
_JS_FUNCTIONS = frozenset({
    "function_declaration", "generator_function_declaration", "method_definition",
    "function_expression", "arrow_function", "generator_function",
})
_JS_CLASSES = frozenset({"class_declaration", "class"})

LANGUAGES: tuple[LanguageSpec, ...] = (
    LanguageSpec(
        "python", (".py", ".pyi"), "tree_sitter_python", "language", "python",
        function_types=frozenset({"function_definition"}),
        class_types=frozenset({"class_definition"}),
        python_docstrings=True, body_placeholder="\n    ...",
    ),
    LanguageSpec(
        "javascript", (".js", ".jsx", ".mjs", ".cjs"), "tree_sitter_javascript", "language",
        "javascript", function_types=_JS_FUNCTIONS, class_types=_JS_CLASSES,
    ),
    LanguageSpec(
        "typescript", (".ts", ".mts", ".cts"), "tree_sitter_typescript", "language_typescript",
        "typescript", function_types=_JS_FUNCTIONS,
        class_types=_JS_CLASSES | {"abstract_class_declaration", "interface_declaration"},
    ),
    LanguageSpec(
        "tsx", (".tsx",), "tree_sitter_typescript", "language_tsx", "typescript",
        function_types=_JS_FUNCTIONS,
        class_types=_JS_CLASSES | {"abstract_class_declaration", "interface_declaration"},
    ),
    LanguageSpec(
        "go", (".go",), "tree_sitter_go", "language", "go",
        function_types=frozenset({"function_declaration", "method_declaration", "func_literal"}),
        class_types=frozenset({"type_declaration"}), package_scope=True,
    ),
    LanguageSpec(
        "rust", (".rs",), "tree_sitter_rust", "language", "rust",
        function_types=frozenset({"function_item", "closure_expression"}),
        class_types=frozenset({"impl_item", "trait_item", "struct_item", "enum_item"}),
        comment_types=frozenset({"line_comment", "block_comment"}),
    ),
    LanguageSpec(
        "java", (".java",), "tree_sitter_java", "language", "java",
        function_types=frozenset({"method_declaration", "constructor_declaration", "lambda_expression"}),
        class_types=frozenset({
            "class_declaration", "interface_declaration", "enum_declaration", "record_declaration",
        }),
        comment_types=frozenset({"line_comment", "block_comment"}), package_scope=True,
    ),
    LanguageSpec(
        "c", (".c", ".h"), "tree_sitter_c", "language", "c",
        function_types=_C_FUNCTIONS, class_types=frozenset({"struct_specifier", "union_specifier"}),
    ),
    LanguageSpec(
        "cpp", (".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".inl"),
        "tree_sitter_cpp", "language", "cpp",
        function_types=_C_FUNCTIONS | {"lambda_expression"},
        class_types=frozenset({"class_specifier", "struct_specifier", "union_specifier"}),
        qualifier_members_are_names=True,
    ),
)

_BY_EXTENSION: dict[str, LanguageSpec] = {ext: spec for spec in LANGUAGES for ext in spec.extensions}
_BY_NAME: dict[str, LanguageSpec] = {spec.name: spec for spec in LANGUAGES}

HEADER_EXTENSIONS = frozenset({".h", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".inl"})


def language_for_path(path: str | Path) -> LanguageSpec | None:
    """The language of a file by its extension (`.h` counts as C), or None when not indexed."""
    return _BY_EXTENSION.get(Path(path).suffix.lower())


def language_named(name: str) -> LanguageSpec:
    """The spec of a language by its registry name; KeyError names the unknown language."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown language {name!r}; known: {sorted(_BY_NAME)}") from None


def indexed_extensions() -> frozenset[str]:
    """Every file extension some language claims."""
    return frozenset(_BY_EXTENSION)
