"""Built-in data: the demo's landing days with their truth file, and large synthetic sets generated
in code.
"""
