"""samstudy: is SAM all you need for ML-assisted annotation? Library behind the study notebooks."""
__version__ = "0.1.0"
