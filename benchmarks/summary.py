"""``python -m benchmarks.summary FILE.json ...``: the targets of several benchmark runs, one line each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.machine import describe


def summarize(paths: list[Path]) -> str:
    lines = []
    for path in paths:
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            lines.append(f"{path.name}: unreadable ({exc})")
            continue
        s = results["settings"]
        lines.append(f"{path.name}: {describe(results['machine'])}; size {s['size']}, compile "
                     f"{'on' if s['compile'] else 'off'}, AMP {'on' if s['amp'] else 'off'}, placeholders "
                     f"{', '.join(s['placeholders']) or 'none'}")
        for t in results.get("targets", []):
            value = t["measured"]
            shown = f"{value:.3f}x" if isinstance(value, (int, float)) else "n/a"
            lines.append(f"  {t['status']:4s}  {t['target']:70s} measured {shown}"
                         + (f"  ({t['failure']})" if t.get("failure") else ""))
        if not results.get("targets"):
            lines.append("  (no targets in this run's parts)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m benchmarks.summary FILE.json ...", file=sys.stderr)
        return 2
    print(summarize(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
