# Sourced by gpu_check.sh and device_session.sh: make MONAI, nibabel and scipy importable on a lent
# machine without network (wheels in .whl/, installed into /tmp/site) and put the checkout on PYTHONPATH.
if ! python -c "import monai, nibabel" 2>/dev/null; then
  pip install -q --no-deps --target /tmp/site .whl/monai-*.whl .whl/nibabel-*.whl
fi
if ! PYTHONPATH="/tmp/site:${PYTHONPATH:-}" python -c "import scipy" 2>/dev/null; then  # HD95 needs it
  pip install -q --no-deps --target /tmp/site .whl/scipy-*.whl 2>/dev/null || echo "no scipy: HD95 will be NaN"
fi
export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1
# A random tiny BERT at /tmp/tiny_bert (no hub download): the text encoder of every lent-machine run.
tiny_bert() {
  python -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from bench_step import tiny_text_model; tiny_text_model(Path('/tmp/tiny_bert'))"
}
