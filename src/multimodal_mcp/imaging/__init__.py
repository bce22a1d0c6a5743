"""Image processing helpers (comparison, preprocessing) built on numpy, OpenCV and Pillow."""
