#!/usr/bin/env bash
# A separate virtual env with verl 0.9.1 (it pins an older transformers than InSight's
# main environment), CPU torch 2.13.0 only, to test insight/integrations/verl.py against
# verl's real classes:  scripts/verl_env.sh [VENV_DIR]   (default .venv-verl)
# then:  VENV_DIR/bin/python -m pytest -q tests/test_verl_plugin.py
set -euo pipefail
VENV="${1:-.venv-verl}"
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# CPU torch first, so verl's torch requirement is already met and no CUDA wheels are
# downloaded: a local CPU wheel (pip's find-links) if there is one, else PyTorch's CPU index.
"$VENV/bin/pip" install -q "torch==2.13.0+cpu" 2>/dev/null \
  || "$VENV/bin/pip" install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
"$VENV/bin/pip" install -q "verl==0.9.1" pytest
# InSight itself (its own pins may be older/newer than verl's; pip reports conflicts)
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/pip" install -q duckdb pyarrow pydantic pyyaml numpy scipy sympy numba
# verl 0.9.1 imports these in verl.trainer.ppo.ray_trainer without declaring them
"$VENV/bin/pip" install -q cachetools uvicorn fastapi
"$VENV/bin/python" -c "import verl, transformers, torch; print('verl', verl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
