"""Sliding reductions (floor L2): tap loops, box sums, conv2d, FFT, numba and Triton kernels.

Each module computes sums over every window of an image for a given :class:`slidesim._geometry.Geometry`; none
knows about metrics, validation or planning. :class:`~slidesim.kernels.taps.TapReductions` and
:class:`~slidesim.kernels.area_sums.AreaSumReductions` bundle them into the primitives that the scoring code asks
for. Modules that need numba or triton import them on first use only.
"""
