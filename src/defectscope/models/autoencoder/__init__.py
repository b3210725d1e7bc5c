from defectscope.models.autoencoder.config import AutoencoderConfig

__all__ = ["AutoencoderConfig"]
