"""The import graph of msd_fast/ (kernels/ as msd_fast.kernels), bench/ and experiments/, built from the source:
every edge points one way (no circle, lazy imports inside functions included; `if TYPE_CHECKING:` blocks,
which never run, left out), and the training loop's package imports no task (tasks are found by name)."""
import ast
import pathlib
from typing import Dict, List, Set

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules() -> Dict[str, pathlib.Path]:
    mods = {}
    for top in ("msd_fast", "kernels", "bench", "experiments"):
        for f in (ROOT / top).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            parts = ["msd_fast", *parts] if parts[0] == "kernels" else parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(tree: ast.AST):
    """Import nodes outside `if TYPE_CHECKING:` blocks."""
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph() -> Dict[str, Set[str]]:
    mods = _modules()
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in _imports(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
                base = ".".join(p for p in (base, node.module or "") if p)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):  # a package's own parents are no edge
                    edges[m].add(t)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    edges = import_graph()
    assert len(edges) > 100 and "msd_fast.lm.load" in edges["msd_fast.lm.export"]  # relative imports resolved
    assert "msd_fast.models.chain" in edges["msd_fast.models.attach"]                # lazy ones too
    assert cycles(edges) == []


def test_the_training_package_imports_no_task():
    edges = import_graph()
    train = {m: e for m, e in edges.items() if m.startswith("msd_fast.train")}
    assert not {t for e in train.values() for t in e if t.startswith("msd_fast.lm.") and t != "msd_fast.lm.names"}


def test_no_private_name_is_imported_across_modules():
    """`from X import _name` of our own modules: a name with a leading underscore belongs to its module (a
    private module such as msd_fast._ext, or the compiled extension msd_fast._C, is imported as a module, which
    is allowed; so are dunders such as __version__)."""
    mods, found = _modules(), []
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in _imports(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
            base = ".".join(p for p in (base, node.module or "") if p)
            if base.split(".")[0] not in ("msd_fast", "kernels", "bench", "experiments"):
                continue
            found += [f"{f.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.endswith("__") and f"{base}.{a.name}" not in mods
                      and f"{base}.{a.name}" != "msd_fast._C"]
    assert not found, found
