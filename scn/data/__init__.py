"""Data in: label files, RAF-DB layout, label noise, splits, augmentation and the demo generator."""
