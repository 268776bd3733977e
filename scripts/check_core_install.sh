#!/usr/bin/env bash
# Checks that the core install is core: a fresh venv (in a temp dir) with only requirements.txt
# trains the demo for a few steps and writes a checkpoint, and cannot import torch or the other
# extras. Also checks that pyproject.toml declares the same lists as requirements*.txt, and that
# the package built from pyproject.toml installs with its C++ sources and console scripts.
# Prints the venv's install time and size. Run by CI (.ci/run).
#   scripts/check_core_install.sh [REQUIREMENTS]     (default requirements.txt; PYTHON=python3)
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=${1:-requirements.txt}
python=${PYTHON:-python3}
tmp=$(mktemp -d -t mnv3_core_install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check_core_install: FAIL: $*" >&2; exit 1; }

# 1. pyproject.toml's dependencies == requirements.txt; its test extra == requirements-test.txt.
"$python" - "$reqs" <<'EOF' || fail "pyproject.toml and the requirements files disagree"
import re, sys, tomllib
def lines(path):
  out = set()
  for line in open(path):
    line = line.split('#', 1)[0].strip()
    if line and not line.startswith('-r'):
      out.add(re.sub(r'\s+', '', line))
  return out
project = tomllib.load(open('pyproject.toml', 'rb'))['project']
extras = project['optional-dependencies']
def expand(names):
  out = set()
  for dep in names:
    m = re.fullmatch(r'mnv3_jax\[(.*)\]', dep)
    out |= expand(sum((extras[e] for e in m[1].split(',')), [])) if m else {re.sub(r'\s+', '', dep)}
  return out
ok = True
for what, declared, listed in [('dependencies', expand(project['dependencies']), lines(sys.argv[1])),
                               ('optional-dependencies.test', expand(extras['test']),
                                lines('requirements-test.txt'))]:
  if declared != listed:
    ok = False
    print(f'pyproject.toml {what} only: {sorted(declared - listed)}; '
          f'requirements file only: {sorted(listed - declared)}', file=sys.stderr)
sys.exit(0 if ok else 1)
EOF

# 2. A fresh venv with only the core requirements (pip's cache and local wheels make it faster).
start=$(date +%s)
"$python" -m venv "$tmp/venv"
py=$tmp/venv/bin/python
"$py" -m pip install -q --disable-pip-version-check -r "$reqs"
install_s=$(( $(date +%s) - start ))
size=$(du -sh "$tmp/venv" | cut -f1)
echo "check_core_install: core venv ($reqs): installed in ${install_s} s, $size"

# 3. The extras stay out.
for module in torch torchvision timm safetensors matplotlib nbclient pytest; do
  if "$py" -c "import $module" 2>/dev/null; then
    fail "'import $module' works in the core venv: $($py -m pip show "$module" 2>/dev/null \
      | grep -E '^(Name|Version|Required-by):' | tr '\n' ' ')"
  fi
done
echo "check_core_install: torch, torchvision, timm, safetensors, matplotlib, nbclient, pytest: not importable (ok)"

# 4. The package itself (built from a copy, so no build/ or *.egg-info lands in the checkout):
#    its dependencies are already satisfied, its C++ sources and console scripts are installed.
mkdir "$tmp/src"
cp -r pyproject.toml README.md mnv3_jax "$tmp/src/"
find "$tmp/src" -name __pycache__ -prune -exec rm -rf {} +
"$py" -m pip install -q --disable-pip-version-check "$tmp/src" \
  || fail "pip install . (pyproject.toml) failed"
"$py" -c "import torch" 2>/dev/null && fail "'import torch' works after pip install . (pyproject.toml)"
(cd "$tmp" && "$py" - <<'EOF') || fail "the installed package lacks its C++ sources"
import importlib.resources, mnv3_jax
csrc = importlib.resources.files('mnv3_jax.ops') / 'csrc'
names = sorted(p.name for p in csrc.iterdir())
assert 'site-packages' in mnv3_jax.__file__, mnv3_jax.__file__
assert any(n.endswith('.cc') for n in names) and any(n.endswith('.h') for n in names), names
print('check_core_install: installed package has csrc/', ' '.join(names))
EOF
for script in mnv3-summary mnv3-import-weights mnv3-export mnv3-benchmark-tflite; do
  [ -x "$tmp/venv/bin/$script" ] || fail "console script $script not installed"
done
(cd "$tmp" && "$tmp/venv/bin/mnv3-summary" --variant small >/dev/null) || fail "mnv3-summary failed"
echo "check_core_install: console scripts installed; mnv3-summary runs"

# 5. A short demo training run: exits 0 and writes a checkpoint.
run=$tmp/run
start=$(date +%s)
"$py" main.py --config=configs/demo.py --workdir="$run" --config.num_train_steps=20 \
  --config.eval_every_steps=20 --config.checkpoint_every_steps=20 --config.log_every_steps=10 \
  > "$tmp/train.log" 2>&1 || { tail -n 40 "$tmp/train.log" >&2; fail "demo training failed"; }
steps=$(ls "$run/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | tr '\n' ' ' || true)
[ -n "$steps" ] || { tail -n 40 "$tmp/train.log" >&2; fail "no checkpoint in $run/checkpoints"; }
echo "check_core_install: demo trained 20 steps in $(( $(date +%s) - start )) s, checkpoint(s): $steps"
echo "check_core_install: OK"
