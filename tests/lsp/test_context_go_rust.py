"""Go and Rust resolution in the completion context: Go import paths under go.mod's module
path and same-package files; Rust `mod x;`, `use crate::a::b`, `self::` and qualified paths."""

from __future__ import annotations

GO = {
    "go.mod": "module example.com/shop\n\ngo 1.22\n",
    "pricing/pricing.go": (
        "package pricing\n\n"
        "// Discount returns the price after a percentage discount.\n"
        "func Discount(price float64, percent int) float64 {\n"
        "\treturn price * float64(100-percent) / 100\n}\n\n"
        "// Cart holds the items being bought.\n"
        "type Cart struct {\n\tItems []float64\n}\n"
    ),
    "pricing/tax.go": "package pricing\n\nconst VatRate = 0.2\n",
    "cmd/shop/helpers.go": "package main\n\nfunc roundCents(v float64) float64 { return v }\n",
    "cmd/shop/main.go": (
        "package main\n\n"
        "import (\n\t\"fmt\"\n\tp \"example.com/shop/pricing\"\n)\n\n"
        "func main() {\n"
        "\tvar c p.Cart\n"
        "\ttotal := roundCents(p.Discount(10, 5))\n"
        "\tfmt.Println(c, total, <|>)\n"
        "}\n"
    ),
}

RUST = {
    "Cargo.toml": "[package]\nname = \"geo\"\nversion = \"0.1.0\"\n",
    "src/main.rs": (
        "mod geometry;\nmod shapes;\n\n"
        "use crate::geometry::area;\n"
        "use shapes::circle::Circle;\n\n"
        "fn main() {\n"
        "    let c = Circle::new(2.0);\n"
        "    println!(\"{}\", area(3.0, 4.0) + geometry::perimeter(1.0, 2.0) + <|>);\n"
        "}\n"
    ),
    "src/geometry.rs": (
        "/// The area of a rectangle.\n"
        "pub fn area(w: f64, h: f64) -> f64 {\n    w * h\n}\n\n"
        "pub fn perimeter(w: f64, h: f64) -> f64 {\n    2.0 * (w + h)\n}\n"
    ),
    "src/shapes/mod.rs": "pub mod circle;\n",
    "src/shapes/circle.rs": (
        "pub struct Circle {\n    pub r: f64,\n}\n\n"
        "impl Circle {\n    /// A circle of radius r.\n    pub fn new(r: f64) -> Self {\n        Circle { r }\n    }\n}\n"
    ),
}


def test_go_package_import_and_same_package_file(workspace, context_at) -> None:
    """`p.Discount` and `p.Cart` come from the imported package directory, `roundCents` from a
    file of the same package (the package's outline aside)."""
    index = workspace(GO)
    context = context_at(index, GO, "cmd/shop/main.go")
    texts: dict[str, str] = {}
    for s in context.snippets:
        if s.outline:
            continue
        rel = s.path.relative_to(context.root).as_posix()
        texts[rel] = texts.get(rel, "") + s.text + "\n"
    assert set(texts) == {"pricing/pricing.go", "cmd/shop/helpers.go"}
    assert "func Discount(price float64, percent int) float64" in texts["pricing/pricing.go"]
    assert "// Discount returns the price after a percentage discount." in texts["pricing/pricing.go"]
    assert "type Cart struct" in texts["pricing/pricing.go"]
    assert "func roundCents" in texts["cmd/shop/helpers.go"]


def test_go_import_path_without_go_mod(workspace, context_at) -> None:
    """Without go.mod an import path still finds the workspace directory its last folders name."""
    files = {k: v for k, v in GO.items() if k != "go.mod"}
    index = workspace(files)
    context = context_at(index, files, "cmd/shop/main.go")
    assert any(s.path.name == "pricing.go" and "Discount" in s.text for s in context.snippets)


def test_rust_mod_and_use_crate_paths(workspace, context_at) -> None:
    """`use crate::geometry::area`, `geometry::perimeter` and `use shapes::circle::Circle` with `Circle::new` resolve."""
    index = workspace(RUST)
    context = context_at(index, RUST, "src/main.rs")
    texts: dict[str, str] = {}
    for s in context.snippets:
        rel = s.path.relative_to(context.root).as_posix()
        texts[rel] = texts.get(rel, "") + s.text + "\n"
    assert set(texts) == {"src/geometry.rs", "src/shapes/circle.rs"}
    assert "pub fn area(w: f64, h: f64) -> f64" in texts["src/geometry.rs"]
    assert "/// The area of a rectangle." in texts["src/geometry.rs"]
    assert "pub fn perimeter" in texts["src/geometry.rs"]
    assert "pub struct Circle" in texts["src/shapes/circle.rs"]
    assert "pub fn new(r: f64) -> Self" in texts["src/shapes/circle.rs"]
