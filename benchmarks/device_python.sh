# Sourced by the GPU scripts (benchmarks/gpu_check.sh, gpu_scaleup.sh), from the repository
# root: sets PY to a Python that runs mcssl. The project's venv where `make install` made one;
# else a python3 that already holds torch and timm, run from this checkout (the lent GPU
# machines: their image has those, nothing can be fetched there, and training, evaluation and
# the GPU tests need neither faiss nor streamlit); else `make install` first.
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
elif python3 -c 'import torch, timm, sklearn, skimage, safetensors, yaml, tqdm' 2>/dev/null; then
    PY=python3
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    make install
    PY=.venv/bin/python
fi
echo "python: $PY ($($PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)'))"
