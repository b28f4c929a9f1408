"""tvmcomp: a deployment compiler for compressed CNNs, built on Apache TVM."""

__version__ = "0.1.0"
