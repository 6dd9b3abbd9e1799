#!/bin/bash
# `dvc repro` of the default pipeline at two commits, side by side, taking turns: the wall time of
# each and whether their test metrics agree digit for digit. Fashion-MNIST from Debian's
# dataset-fashion-mnist, so it runs offline; each clone uses this checkout's .venv.
#   benchmarks/ab_repro.sh OLD_REV NEW_REV [ROUNDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old=$1 new=$2 rounds=${3:-1}
work=$(mktemp -d)
for side in old new; do
  rev=${!side}
  git clone -q "$root" "$work/$side" && git -C "$work/$side" checkout -q "$rev"
  ln -s "$root/.venv" "$work/$side/.venv"
  (cd "$work/$side" && .venv/bin/python -c "
import yaml
p = yaml.safe_load(open('params.yaml'))
p['data'].update(dataset='fashion_mnist', mirrors=['/usr/share/datasets/fashion-mnist'])
yaml.safe_dump(p, open('params.yaml', 'w'), sort_keys=False)")
done
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    cd "$work/$side"
    rm -rf data models metrics plots reports mlflow.db mlartifacts dvc.lock .dvc/cache .dvc/tmp
    start=$(date +%s.%N)
    PATH="$work/$side/.venv/bin:$PATH" dvc repro -q >"$work/$side-$round.log" 2>&1
    echo "round $round: $side (${!side}) $(echo "$(date +%s.%N) - $start" | bc) s"
  done
done
"$root/.venv/bin/python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
runs = sorted((work / "old" / "metrics").glob("*/seed-*.json"))
same = [
    (json.loads(p.read_text())["test_accuracy"], json.loads(p.read_text())["test_loss"])
    == (json.loads(q.read_text())["test_accuracy"], json.loads(q.read_text())["test_loss"])
    for p in runs
    for q in [work / "new" / p.relative_to(work / "old")]
]
print(f"{sum(same)} of {len(runs)} runs give the same test accuracy and loss, digit for digit")
PY
rm -rf "$work"
