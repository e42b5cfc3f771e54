"""Names of the embedded datasets, shared by their registration (embedded/__init__.py) and export."""
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHIFTED = ("printed", "inverted", "lowcontrast", "photo")  # rendered by embedded/shifted.py
SHIFTED_SPLITS = ("prior", "val", "test")
TEMPLATE = "a photo of the digit {}"
