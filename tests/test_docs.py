"""The guide's code runs as written: docs/custom_modules.md's python blocks,
executed in order in one namespace (they carry their own asserts)."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "custom_modules.md"


def test_custom_modules_guide_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace = {"__name__": "custom_modules_guide"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name} block {i + 1}", "exec"), namespace)
    assert "val_accuracy" in capsys.readouterr().out
