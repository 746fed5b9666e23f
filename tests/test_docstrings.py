"""Docstrings say which notebook introduces an object; that notebook must really use it."""

import ast
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pytest

import lora_course

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.name[:2]: p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
# "(notebook 07)", "(notebooks 03 and 06)", "(introduced in notebook 00, used throughout)"
CITATION = re.compile(r"notebooks? ((?:\d\d)(?:(?:, | and | or )\d\d)*)")


def code_of(number: str) -> str:
    cells = json.loads(NOTEBOOKS[number].read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def cited(docstring: str | None) -> list[str]:
    return [n for group in CITATION.findall(docstring or "") for n in re.findall(r"\d\d", group)]


def modules():
    for info in pkgutil.walk_packages(lora_course.__path__, "lora_course."):
        yield importlib.import_module(info.name)


def public_objects(module):
    """Functions and classes defined in `module` (not imported into it), by name."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj


def uses(code: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", code) is not None


CASES = [
    (f"{module.__name__}.{name}", name, number)
    for module in modules()
    for name, obj in public_objects(module)
    for number in cited(obj.__doc__)
]


def test_citations_were_found():
    """The pattern matches the docstrings' wording, so the test below is not vacuous."""
    assert len(CASES) >= 10


@pytest.mark.parametrize(("qualified", "name", "number"), CASES, ids=[c[0] for c in CASES])
def test_the_cited_notebook_uses_the_object(qualified, name, number):
    assert number in NOTEBOOKS, f"{qualified} cites notebook {number}, which does not exist"
    assert uses(code_of(number), name), (
        f"{qualified}'s docstring says notebook {number}, but that notebook's code never uses "
        f"`{name}`: name the notebook that does, or say which objects use it"
    )


def module_names_used(code: str) -> set[str]:
    """lora_course modules a notebook's code imports, directly or through the package."""
    used = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_course"):
            module = importlib.import_module(node.module)
            for alias in node.names:  # `from lora_course.tasks import sql` uses tasks.sql
                obj = getattr(module, alias.name)
                if inspect.ismodule(obj):
                    used.add(obj.__name__)
                elif inspect.isfunction(obj) or inspect.isclass(obj):
                    used.add(obj.__module__)
            used.add(node.module)
        elif isinstance(node, ast.Import):
            used.update(a.name for a in node.names if a.name.startswith("lora_course"))
        elif isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "lora_course":
            obj = getattr(lora_course, node.attr)  # lora_course.start_lesson(...)
            used.add(obj.__name__ if inspect.ismodule(obj) else obj.__module__)
    return used


def test_a_module_cites_a_notebook_that_imports_from_it():
    wrong = []
    for module in modules():
        for number in cited((module.__doc__ or "").split("\n\n")[0]):
            code = code_of(number)
            used = module_names_used(code)
            short = module.__name__.removeprefix("lora_course.")
            if module.__name__ not in used and not uses(code, f"lora_course.{short}"):
                wrong.append(f"{module.__name__} cites notebook {number}")
    assert not wrong, wrong


def test_everything_a_notebook_imports_is_exported_and_documented():
    for number in NOTEBOOKS:
        for node in ast.walk(ast.parse(code_of(number))):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_c")):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name)  # an ImportError would have failed the notebook
                if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
                    assert obj.__doc__, f"notebook {number} imports {alias.name}: no docstring"
                if node.module != "lora_course" and not inspect.ismodule(obj):
                    private = getattr(module, "__all__", None)
                    assert private is None or alias.name in private, (
                        f"notebook {number} imports {alias.name} from {node.module}, "
                        "which does not list it in __all__"
                    )
