from defectscope.models.padim.config import PadimConfig

__all__ = ["PadimConfig"]
