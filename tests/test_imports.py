"""The house's shape, checked on every run: no import cycle (imports inside functions included, as grimp sees them),
no import that runs back up the layers, and no function or module too long to read in one sitting.

    pytest tests/test_imports.py
"""

import ast
from pathlib import Path

import grimp
import pytest

PACKAGE = "writemypaper"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Top down: a module may import only from the layers below its own. Modules on one line, separated by " | ", are
# independent: none of them imports another. A new module must be given a place here (test_every_module_has_a_layer).
LAYERS = [
    "__main__",
    "cli",
    "commands",  # each verb's parser and command, for cli
    "demo",  # the whole job: prepare, train, evaluate, report
    "align",  # the verb that continues a trained run: it writes its run as train does, with train's functions
    "evaluate | export | generate | serve | train",  # the verbs
    "engines",  # the registry the verbs ask for an engine; the engines never import it, nor a verb
    "llamacpp | trainer | transformers_engine",
    "data | decoding | examples | gguf_export | models",
    "grounding | metrics | nf4 | outputs | policy | report | weights",
    "corpus | factcheck | record",
    "config | morphemes",  # configuration is data: config imports nothing from the verbs
    "atomic | settings | text",
    "logs | numbers | prompts",
    "families",  # what differs between model families, as data: prompts and everything above ask it
    "errors",
]


def layers(spec: list[str] = LAYERS) -> list[grimp.Layer]:
    return [grimp.Layer(*(name.strip() for name in line.split("|"))) for line in spec]


def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE)


def direct_imports(g: grimp.ImportGraph) -> dict[str, set[str]]:
    return {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or one that imports itself), each sorted: every
    module of one is on a cycle with the others. Tarjan's algorithm, iterative so that no depth limit applies."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def test_the_cycle_finder_finds_an_injected_cycle():
    """The check below can fail: a cycle, a longer one and a self-import are found, and a chain is not a cycle."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}) == [["a", "b", "c"], ["d"]]
    # The real graph with one import added back: config importing the generate verb, as it once did.
    edges = direct_imports(graph())
    edges[f"{PACKAGE}.config"].add(f"{PACKAGE}.generate")
    assert any({f"{PACKAGE}.config", f"{PACKAGE}.generate"} <= set(c) for c in cycles(edges))


def test_no_import_cycle():
    found = cycles(direct_imports(graph()))
    assert not found, "import cycles (each line: modules that import each other round a circle):\n" + "\n".join(
        " <-> ".join(m.removeprefix(f"{PACKAGE}.") for m in c) for c in found)


def _route(r) -> str:
    return " -> ".join([",".join(sorted(r.heads)), *r.middle, ",".join(sorted(r.tails))])


def test_no_import_runs_back_up_the_layers():
    illegal = graph().find_illegal_dependencies_for_layers(layers=layers(), containers={PACKAGE})
    found = sorted(f"{dep.importer} imports {dep.imported}, a layer above it: "
                   + "; ".join(sorted(_route(r) for r in dep.routes)) for dep in illegal)
    assert not found, "imports that run back up a layer:\n" + "\n".join(found)


def test_the_layer_check_can_fail():
    """An order that the code contradicts (errors above the verbs) is reported: the contract is really checked."""
    g = graph()
    assert g.find_illegal_dependencies_for_layers(layers=layers(["errors", "generate"]), containers={PACKAGE})


def test_every_module_has_a_layer():
    """grimp skips a layer it cannot find, so a misspelt name or a new module without a place would pass unseen."""
    placed = {name.strip() for line in LAYERS for name in line.split("|")}
    tops = {m.removeprefix(f"{PACKAGE}.").split(".")[0] for m in graph().modules if m != PACKAGE}
    assert tops == placed, f"without a layer: {sorted(tops - placed)}; no such module: {sorted(placed - tops)}"


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def long_functions(source: str, limit: int = 80) -> list[tuple[str, int]]:
    """(name, lines) of each function or method longer than `limit` lines, decorators and docstring included."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            n = node.end_lineno - start + 1
            if n > limit:
                out.append((node.name, n))
    return out


def test_the_length_check_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    assert long_functions(f"def f():\n{body}\n") == [("f", 81)]
    assert long_functions(f"def f():\n{body}\n", limit=81) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_functions_and_modules_stay_short(path):
    source = path.read_text(encoding="utf-8")
    lines = len(source.splitlines())
    assert lines <= 500, f"{path.relative_to(SRC)} has {lines} lines (at most 500): split it"
    assert long_functions(source) == [], f"{path.relative_to(SRC)}: functions over 80 lines"
