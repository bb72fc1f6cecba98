"""DocRE-II: document-level relation extraction with iterative inference."""
__version__ = "0.1.0"
