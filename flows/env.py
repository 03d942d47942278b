"""Process-wide defaults for the embedded mode, set before Prefect or MLflow is imported.

Prefect runs on its ephemeral API (no server to start) unless PREFECT_API_URL is set;
telemetry is off and its logs (and MLflow's) are quiet so the per-round progress line is
readable.
Every default yields to a value the user already exported.
"""

import os

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow's INFO lines ("Creating initial MLflow database tables...") would land
    # between the progress lines and the one-line error on the terminal.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # MLflow prints "View run ... at: URL" on stdout when a run on a tracking server ends;
    # stdout is the progress lines and the JSON summary, last.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
