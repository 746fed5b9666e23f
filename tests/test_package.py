"""The package as notebooks and exercise kernels meet it: importing it is quick."""

import subprocess
import sys

HEAVY = {"peft", "transformers", "datasets"}


def test_importing_the_package_loads_no_heavy_library():
    """Every notebook and graded exercise starts with `import lora_course`; peft, transformers and
    datasets cost seconds to import, so the package imports them where they are used."""
    code = f"import sys, lora_course; print(sorted({HEAVY!r} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
