"""defectscope: industrial visual anomaly detection and localisation, offline on a CPU."""

__version__ = "0.1.0"

from defectscope.errors import DefectscopeError  # noqa: E402
from defectscope.io import load  # noqa: E402
from defectscope.models import PaDiM, Prediction  # noqa: E402

__all__ = ["DefectscopeError", "PaDiM", "Prediction", "__version__", "load"]
