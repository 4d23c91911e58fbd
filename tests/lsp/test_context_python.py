"""Python import resolution as the completion context sees it: absolute, relative and
`import x` then `x.y` imports, and names re-exported through a package's `__init__.py`."""

from __future__ import annotations

from lsp.index import CodeIndex
from lsp.symbols import Import

FILES = {
    "app/__init__.py": "",
    "app/geometry.py": (
        "import math\n\n"
        "def area(width: float, height: float) -> float:\n"
        '    """The area of a width x height rectangle."""\n'
        "    return width * height\n\n"
        "def unused_helper():\n"
        "    return 0\n"
    ),
    "app/shapes/__init__.py": "from .circle import Circle\n\n__all__ = ['Circle']\n",
    "app/shapes/circle.py": (
        "class Circle:\n"
        '    """A circle around the origin."""\n\n'
        "    def __init__(self, radius: float) -> None:\n"
        "        self.radius = radius\n\n"
        "    def scaled(self, factor: float) -> 'Circle':\n"
        "        return Circle(self.radius * factor)\n"
    ),
    "app/units.py": "CM_PER_INCH = 2.54\n\ndef to_cm(inches: float) -> float:\n    return inches * CM_PER_INCH\n",
    "app/report.py": (
        "from .geometry import area\n"
        "from app.shapes import Circle\n"
        "import app.units\n\n"
        "def summary(w, h):\n"
        "    c = Circle(w)\n"
        "    total = area(w, h) + app.units.to_cm(h)\n"
        "    return <|>\n"
    ),
}


def test_relative_import_brings_the_definition(workspace, context_at) -> None:
    """`from .geometry import area` puts area's signature and docstring from the other file in the context."""
    index = workspace(FILES)
    context = context_at(index, FILES, "app/report.py")
    area = [s for s in context.snippets if s.path.name == "geometry.py"]
    assert len(area) == 1
    assert "def area(width: float, height: float) -> float:" in area[0].text
    assert "The area of a width x height rectangle." in area[0].text
    assert "unused_helper" not in "".join(s.text for s in context.snippets)


def test_init_reexport_resolves_to_the_real_definition(workspace, context_at) -> None:
    """A class imported from a package whose `__init__.py` re-exports it comes from its own module."""
    index = workspace(FILES)
    context = context_at(index, FILES, "app/report.py")
    circle = [s for s in context.snippets if s.path.name == "circle.py"]
    assert len(circle) == 1
    assert circle[0].text.startswith("class Circle:")
    assert "def scaled(self, factor: float)" in circle[0].text


def test_import_module_then_attribute(workspace, context_at) -> None:
    """`import app.units` then `app.units.to_cm(...)` brings to_cm from units.py."""
    index = workspace(FILES)
    context = context_at(index, FILES, "app/report.py")
    units = [s for s in context.snippets if s.path.name == "units.py" and not s.outline]
    assert [s.text.splitlines()[0] for s in units] == ["def to_cm(inches: float) -> float:"]


def test_import_alias_and_submodule_attribute(workspace, context_at) -> None:
    """`from app import geometry as g` then `g.area` and `import app` then `app.shapes.circle.Circle` both resolve."""
    files = dict(FILES)
    files["main.py"] = (
        "import app\nfrom app import geometry as g\n\n"
        "def run():\n    g.area(1, 2)\n    return app.shapes.circle.Circle(3)<|>\n"
    )
    index = workspace(files)
    context = context_at(index, files, "main.py")
    names = sorted(s.path.name for s in context.snippets if not s.outline)
    assert names == ["circle.py", "geometry.py"]


def test_resolve_import_finds_module_files(workspace) -> None:
    """`resolve_import` maps relative, absolute and package imports to the indexed files."""
    index = workspace(FILES)
    report = index.root / "app/report.py"
    assert index.resolve_import(report, Import("geometry", "area", "area", 0, level=1)) == [
        index.root / "app/geometry.py"]
    assert index.resolve_import(report, Import("app.shapes", None, "app.shapes", 0)) == [
        index.root / "app/shapes/__init__.py"]
    assert index.resolve_import(report, Import("app", "units", "units", 0)) == [
        index.root / "app/__init__.py", index.root / "app/units.py"]


def test_workspace_folder_named_like_its_package(tmp_path) -> None:
    """In a workspace folder called `shapes` holding package `shapes`, `import shapes` means the package, not the folder."""
    root = tmp_path / "shapes"
    (root / "shapes").mkdir(parents=True)
    (root / "shapes" / "__init__.py").write_text("def make():\n    pass\n")
    (root / "report.py").write_text("import shapes\n")
    index = CodeIndex(root)
    index.build()
    assert index.resolve_import(root / "report.py", Import("shapes", None, "shapes", 0)) == [
        root / "shapes" / "__init__.py"]
