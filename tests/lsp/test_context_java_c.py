"""Java, C and C++ resolution in the completion context: Java class, wildcard and static
imports under a source root plus same-package classes; C/C++ `#include "..."` relative to the
file and through the workspace's include directories, transitively."""

from __future__ import annotations

JAVA = {
    "src/main/java/com/acme/util/Strings.java": (
        "package com.acme.util;\n\n"
        "/** String helpers. */\n"
        "public final class Strings {\n"
        "    /** Left-pads s to n characters. */\n"
        "    public static String pad(String s, int n) {\n        return String.format(\"%\" + n + \"s\", s);\n    }\n"
        "}\n"
    ),
    "src/main/java/com/acme/util/MathUtil.java": (
        "package com.acme.util;\n\npublic class MathUtil {\n"
        "    public static int clamp(int v, int lo, int hi) {\n        return Math.max(lo, Math.min(hi, v));\n    }\n}\n"
    ),
    "src/main/java/com/acme/model/Order.java": (
        "package com.acme.model;\n\npublic record Order(String id, int quantity) {}\n"
    ),
    "src/main/java/com/acme/app/Config.java": (
        "package com.acme.app;\n\nclass Config {\n    static final int WIDTH = 12;\n}\n"
    ),
    "src/main/java/com/acme/app/App.java": (
        "package com.acme.app;\n\n"
        "import com.acme.util.Strings;\n"
        "import com.acme.model.*;\n"
        "import static com.acme.util.MathUtil.clamp;\n\n"
        "public class App {\n"
        "    String label(Order order) {\n"
        "        int w = clamp(order.quantity(), 1, Config.WIDTH);\n"
        "        return Strings.pad(order.id(), w)<|>;\n"
        "    }\n"
        "}\n"
    ),
}

C = {
    "include/geo/point.h": (
        "#ifndef GEO_POINT_H\n#define GEO_POINT_H\n#include \"geo/types.h\"\n\n"
        "/* The distance between two points. */\n"
        "double point_distance(const struct point *a, const struct point *b);\n\n#endif\n"
    ),
    "include/geo/types.h": "struct point {\n    double x;\n    double y;\n};\n\ntypedef int geo_status;\n",
    "src/util.h": "#define CLAMP(v, lo, hi) ((v) < (lo) ? (lo) : (v) > (hi) ? (hi) : (v))\n",
    "src/main.c": (
        "#include <stdio.h>\n#include \"geo/point.h\"\n#include \"util.h\"\n\n"
        "int main(void) {\n"
        "    struct point a = {0, 0}, b = {3, 4};\n"
        "    geo_status ok = 0;\n"
        "    printf(\"%f\\n\", CLAMP(point_distance(&a, &b), 0, 10)<|>);\n"
        "    return ok;\n}\n"
    ),
}

CPP = {
    "include/shapes/circle.hpp": (
        "#pragma once\n\nnamespace shapes {\n\n"
        "/// A circle of a given radius.\n"
        "class Circle {\n public:\n  explicit Circle(double r);\n  double area() const;\n\n private:\n  double r_;\n};\n\n"
        "double total_area(const Circle* items, int n);\n\n}  // namespace shapes\n"
    ),
    "src/circle.cpp": (
        "#include \"shapes/circle.hpp\"\n\nnamespace shapes {\n"
        "Circle::Circle(double r) : r_(r) {}\ndouble Circle::area() const { return 3.14159 * r_ * r_; }\n}\n"
    ),
    "src/main.cpp": (
        "#include \"../include/shapes/circle.hpp\"\n\n"
        "int main() {\n"
        "  shapes::Circle c(2.0);\n"
        "  return static_cast<int>(shapes::total_area(&c, 1))<|>;\n"
        "}\n"
    ),
}


def _by_file(context) -> dict[str, str]:
    texts: dict[str, str] = {}
    for s in context.snippets:
        rel = s.path.relative_to(context.root).as_posix()
        texts[rel] = texts.get(rel, "") + s.text + "\n"
    return texts


def test_java_class_wildcard_static_and_package_imports(workspace, context_at) -> None:
    """`import a.b.C`, `import a.b.*`, `import static a.b.C.m` and a same-package class all resolve under the source root."""
    index = workspace(JAVA)
    context = context_at(index, JAVA, "src/main/java/com/acme/app/App.java")
    texts = _by_file(context)
    base = "src/main/java/com/acme/"
    assert set(texts) == {base + "util/Strings.java", base + "util/MathUtil.java", base + "model/Order.java",
                          base + "app/Config.java"}
    assert "public static String pad(String s, int n)" in texts[base + "util/Strings.java"]
    assert "public static int clamp(int v, int lo, int hi)" in texts[base + "util/MathUtil.java"]
    assert "public record Order(String id, int quantity)" in texts[base + "model/Order.java"]
    assert "static final int WIDTH = 12;" in texts[base + "app/Config.java"]


def test_c_includes_through_include_dirs_and_transitively(workspace, context_at) -> None:
    """A prototype from `include/geo/point.h`, a struct and typedef from the header it includes, and a macro from a sibling header."""
    index = workspace(C)
    context = context_at(index, C, "src/main.c")
    texts = _by_file(context)
    assert set(texts) == {"include/geo/point.h", "include/geo/types.h", "src/util.h"}
    assert "double point_distance(const struct point *a, const struct point *b);" in texts["include/geo/point.h"]
    assert "/* The distance between two points. */" in texts["include/geo/point.h"]
    assert "struct point {" in texts["include/geo/types.h"]
    assert "typedef int geo_status;" in texts["include/geo/types.h"]
    assert "#define CLAMP(v, lo, hi)" in texts["src/util.h"]


def test_cpp_relative_include_and_namespace_qualified_names(workspace, context_at) -> None:
    """`shapes::Circle` and `shapes::total_area` come from the header included by a `../` path."""
    index = workspace(CPP)
    context = context_at(index, CPP, "src/main.cpp")
    texts = _by_file(context)
    assert set(texts) == {"include/shapes/circle.hpp"}
    assert "class Circle {" in texts["include/shapes/circle.hpp"]
    assert "double area() const;" in texts["include/shapes/circle.hpp"]
    assert "double total_area(const Circle* items, int n);" in texts["include/shapes/circle.hpp"]
