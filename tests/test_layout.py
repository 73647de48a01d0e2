"""The package's shape: no import circle, counting imports inside functions too (a lazy import is still a dependency:
it decides what a reader must understand first and what can be moved without the other)."""

import ast
import re
from pathlib import Path

from helpers import ROOT


def _modules() -> dict[str, Path]:
    out = {}
    for f in (ROOT / "edit_bench").rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the package's modules it imports anywhere in its body}``."""
    edges: dict[str, set[str]] = {}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.setdefault(name, set()).add(t)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    mods = _modules()
    edges = _imports(mods)
    assert edges["edit_bench.provenance"] >= {"edit_bench.io"}  # the graph is read (lazy imports included)
    assert _cycles(edges) == []


def test_the_file_helpers_sit_below_everything_that_reads_files():
    """``io`` (data files, atomic writes, the cache) imports nothing of the package but its errors."""
    edges = _imports(_modules())
    assert edges.get("edit_bench.io", set()) <= {"edit_bench.errors"}


# What only edit_bench/models/ may name: the libraries' internals and the architectures' module paths (design §5:
# editors ask the adapter by role). bench/ measures against diffusers' own pipelines and is exempt by design.
INTERNAL_IMPORTS = ("diffusers.models", "diffusers.utils", "diffusers.schedulers", "transformers.models", "peft")
INTERNAL_ATTRS = {"get_attention_scores", "set_processor", "attn_processors", "add_adapter", "set_adapter", "peft_config",
                  "text_model", "is_cross_attention", "lora_A", "lora_B"}
MODULE_PATH = re.compile(r"\b(?:up_blocks|down_blocks|mid_block|transformer_blocks|single_transformer_blocks|text_model|"
                         r"time_embedding|conv_out|conv_norm_out)\b|\.attn[12]\.|^attn[12]$|^to_[kvq]$")


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_path_or_library_internal_is_named_outside_the_model_adapter():
    found = []
    for name, f in _modules().items():
        if name.startswith(("edit_bench.models", "edit_bench.bench")):
            continue
        tree = ast.parse(f.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(INTERNAL_IMPORTS):
                found.append(f"{name}:{n.lineno} imports {n.module}")
            elif isinstance(n, ast.Attribute) and n.attr in INTERNAL_ATTRS:
                found.append(f"{name}:{n.lineno} .{n.attr}")
        for c in _code_strings(tree):
            if MODULE_PATH.search(c.value):
                found.append(f"{name}:{c.lineno} {c.value!r}")
    assert found == []
