#!/usr/bin/env bash
# Regenerates the settings table of docs/configuration.md from the code (`sealpost config --markdown`);
# the prose above the table is kept. A unit test fails when the two disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/configuration.md
table="$(cargo run --quiet -- config --markdown)"
python3 - "$doc" "$table" <<'PY'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
start = text.index("| variable | default | meaning |")
rest = text[start:].split("\n")
end = start + sum(len(line) + 1 for line in rest if line.startswith("|"))
open(path, "w").write(text[:start] + table.strip() + "\n" + text[end:])
PY
