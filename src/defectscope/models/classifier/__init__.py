from defectscope.models.classifier.config import ClassifierConfig

__all__ = ["ClassifierConfig"]
