"""The `amk` console script: amk.cli.main behind an import that a Ctrl-C may cut short.

Importing the CLI takes a fraction of a second (numpy, the harness); Python's default SIGINT handler raises
KeyboardInterrupt wherever the import is, which would end the process with a traceback and no answer. An
interrupt there is answered as any other: exit 130 (HARNESS.md section 4), with its one JSON object under --json.
Only the standard library is imported here.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    try:
        from amk.cli import main as run
    except KeyboardInterrupt:
        if "--json" in sys.argv[1:]:
            sys.stdout.write(json.dumps({"ok": False, "exit_code": 130, "error": "interrupted",
                                         "error_type": "interrupted"}) + "\n")
        else:
            sys.stderr.write("amk: error: interrupted\n")
        return 130
    return run()
