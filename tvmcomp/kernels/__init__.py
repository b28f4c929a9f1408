"""Hand-written TIR kernels that our Relax passes emit (sparse dense layers, SELL format)."""
