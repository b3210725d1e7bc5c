"""Reading MVTec-layout folders, images and masks; synthetic data for tests and demos."""

from defectscope.data.images import load_image, load_mask
from defectscope.data.mvtec import Category, TestSample, discover, load_category

__all__ = ["Category", "TestSample", "discover", "load_category", "load_image", "load_mask"]
