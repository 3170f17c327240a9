"""edgesched: energy-aware TFLite inference scheduler for embedded Linux boards."""

__version__ = "0.1.0"
