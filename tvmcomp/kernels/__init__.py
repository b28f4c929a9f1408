"""Hand-written TIR kernels that our Relax passes emit (sparse CSR dense layers)."""
