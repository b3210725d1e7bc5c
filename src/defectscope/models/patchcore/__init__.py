from defectscope.models.patchcore.config import PatchcoreConfig

__all__ = ["PatchcoreConfig"]
