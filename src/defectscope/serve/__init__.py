"""``defectscope serve``: a FastAPI service and an operator page (optional extra ``serve``)."""
