"""The test suite's own shape: no test module imports another; what tests share lives in
tests/support/ (and tests/op_cases.py), which imports no test module either."""
import ast

from support.paths import ROOT

TESTS = ROOT / "tests"


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def test_no_test_module_imports_another():
    modules = {path.stem for path in TESTS.glob("test_*.py")}
    importers = sorted([*TESTS.glob("*.py"), *(TESTS / "support").glob("*.py")])
    offenders = {str(path.relative_to(TESTS)): sorted(imported_modules(path) & modules)
                 for path in importers}
    offenders = {name: imports for name, imports in offenders.items() if imports}
    assert not offenders, f"test modules importing test modules (share via tests/support/): " \
                          f"{offenders}"
