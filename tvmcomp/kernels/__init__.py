"""Hand-written TIR kernels our Relax passes emit: sliced-ELLPACK sparse layers, codebook decode."""

# Our kernels are scheduled by hand: MetaSchedule skips them (tirx.is_scheduled) and the
# manifest's kernel table names them by this attribute's value.
HAND_SCHEDULED = "tvmcomp.hand_scheduled"
