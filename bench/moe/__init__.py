"""MoE rescaling benchmark: a new whole replica, a cold restart at the larger width, Ebbtide's in-place resize."""
