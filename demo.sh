#!/usr/bin/env bash
# The main job: trainaudit on the bundled reference MM-Rec trainer, start to end.
# Installs into .venv, then on a scratch copy of reference_impl/: check, the fix as
# a diff, the probe before the fix, fix --apply (feature fixes on), check, the probe
# after. Runs on a CPU.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/trainaudit ] || [ -n "${DEMO_REINSTALL:-}" ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[torch]'
fi
PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r reference_impl "$work/reference_impl"
cd "$work/reference_impl"
train=(python mm_rec/scripts/train_base_model.py --steps 50 --seq-len 128 --eval-interval 1000)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. trainaudit check . (the reference trainer, as reviewed)"
trainaudit check . || true
step "2. trainaudit fix . --unsafe-fixes (the diff, nothing written)"
trainaudit fix . --unsafe-fixes || true
step "3. trainaudit probe: what the unfixed trainer really does"
trainaudit probe --steps 3 --json probe-before.json -- "${train[@]}" || true
step "4. trainaudit fix . --apply --unsafe-fixes"
trainaudit fix . --apply --unsafe-fixes
step "5. trainaudit check . (after the fix)"
trainaudit check .
step "6. trainaudit probe: the fixed trainer"
trainaudit probe --steps 3 --json probe-after.json -- "${train[@]}" || true
step "before → after"
python - <<'PY'
import json
before, after = (json.load(open(f"probe-{n}.json")) for n in ("before", "after"))
def shown(value):
    if isinstance(value, bool) or value is None:
        return str(value)
    return f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
for key in ("label_offset", "micro_batches_per_step", "autocast_fraction", "checkpointing",
            "activation_bytes_per_step", "step_seconds"):
    print(f"{key:28} {shown(before[key]):>14} → {shown(after[key]):>14}")
PY
