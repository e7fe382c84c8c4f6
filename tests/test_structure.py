"""The house: no import cycle among the package's modules, and imports flow one way
(app -> explore / evaluation / jobs -> train -> models / losses -> common), as the README's
code map says. Imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lower layers may not import higher ones; a module belongs to the longest matching prefix
LAYERS = {
    "mcssl": 0,  # common: config, images, scenes, metrics, checkpoint
    "mcssl.models": 1,
    "mcssl.losses": 1,
    "mcssl.train": 2,
    "mcssl.explore": 3,
    "mcssl.evaluation": 4,  # uses explore's encoder and features
    "mcssl.jobs": 4,
    "mcssl.cli": 5,
    "mcssl.doctor": 5,
    "mcssl.__main__": 5,
    "app": 6,
}
# the app reaches training only through mcssl.jobs, and never the command line's internals
FORBIDDEN = {("app", "mcssl.train"), ("app", "mcssl.cli"), ("mcssl.models", "mcssl.losses")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] == "app":  # the app's own modules import each other by bare name
        return ".".join(["app", *parts[1:]]) if len(parts) > 1 else "app"
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*(ROOT / "mcssl").rglob("*.py"), *(ROOT / "app").rglob("*.py")]
    return {_module_name(f): f for f in files}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports (a ``from pkg import sub`` names the submodule)."""
    got: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            got.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            got.update(subs & known or {node.module})
    if name.startswith("app"):  # `import common`, `from views import x` inside app/
        got = {f"app.{g}" if f"app.{g}" in known else g for g in got}
    return {g for g in got if g in known and g != name}


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    assert len(edges) > 40  # the walk found the package
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    edges = graph()
    assert "mcssl.train.sources" in edges["mcssl.train.data"]
    edges["mcssl.train.sources"] = edges["mcssl.train.sources"] | {"mcssl.train.data"}
    assert find_cycle(edges) is not None
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]


def test_imports_flow_one_way() -> None:
    wrong = []
    for src, targets in graph().items():
        for dst in targets:
            a, b = _layer(src), _layer(dst)
            if LAYERS[b] > LAYERS[a] or (a, b) in FORBIDDEN:
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_readme_code_map_names_every_package() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Code map", 1)[1].split("\n## ", 1)[0]
    packages = {p.parent.name for p in (ROOT / "mcssl").glob("*/__init__.py")}
    for pkg in packages | {"app"}:
        assert f"{pkg}/" in section, f"the README's code map does not name {pkg}/"


# What the lent GPU machines lack (benchmarks/device_python.sh): their python3 has torch and
# timm, and nothing installs there. Imported as the CLI does for `train` / `eval` / `export`.
_WITHOUT = textwrap.dedent("""
    import sys

    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"faiss", "streamlit", "plotly"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Missing())
    import mcssl.cli, mcssl.train.loop, mcssl.evaluation.concepts, mcssl.evaluation.defaults
    from mcssl.checkpoint import export_teacher
    names = [e.__name__ for e in mcssl.cli._user_errors()]
    query = ["query", "--index", "idx", "--image", "a.png", "--token", "0", "0"]
    print(len(names), "TokenIndexError" in names, "faiss" in sys.modules, mcssl.cli.main(query))
""")


def test_training_and_evaluation_load_without_faiss_or_streamlit() -> None:
    """Only retrieval needs faiss and only the app streamlit: the CLI's training, export and
    concept benchmark load without them (the retrieval errors then drop out of the CLI's
    user errors), so benchmarks/gpu_session.sh runs on a GPU machine that has neither; there,
    retrieval says in one line what it needs."""
    out = subprocess.run([sys.executable, "-c", _WITHOUT], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["9", "False", "False", "2"]
    assert out.stderr == "mcssl query: error: needs faiss (pip install faiss-cpu)\n"
