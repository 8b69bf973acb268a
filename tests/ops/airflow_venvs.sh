#!/bin/sh
# Throwaway Airflow venvs for tests/ops/test_airflow.py: Airflow 2.11 and 3.3 from PyPI, each in its
# own venv under $1 (default ~/.cache/diffedit-airflow). Made once, then reused (~20 s each from a
# local mirror, minutes from PyPI). Airflow's constraint files are not on PyPI: pip resolves.
set -eu
DIR=${1:-${DIFFEDIT_AIRFLOW_VENVS:-$HOME/.cache/diffedit-airflow}}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
for spec in "af2 apache-airflow==2.11.*" "af3 apache-airflow==3.3.*"; do
  set -- $spec
  if [ ! -x "$DIR/$1/bin/airflow" ]; then
    "$PY" -m venv "$DIR/$1"
    "$DIR/$1/bin/python" -m pip install -q --upgrade pip
    nice -n 10 "$DIR/$1/bin/python" -m pip install -q "$2"
  fi
  "$DIR/$1/bin/airflow" version
done
